"""`retain sweep` on the micro lab model: grid and Optuna modes, rerun without repeats, a
failed trial, a kill -9 mid-trial and its resume, and two workers on one PostgreSQL study.

Trials are made cheap (1 step, guards off, log-likelihood probes on a short suite, 8-row
eval splits): what is tested is the sweep's machinery, not what the trials learn.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.config import load_config
from retain.evaluation.suites import write_suite
from retain.lab.base import lab_size
from retain.lab.domain import DomainSpec, build_domain, write_jsonl
from retain.lab.world import build_world
from retain.sweep import load_sweep, run_sweep
from retain.sweep.trial import TrialFailed, run_in_child

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(micro_base, tmp_path_factory) -> Path:
    """A cheap base config: the micro lab model on a tiny domain task."""
    base, _ = micro_base
    root = tmp_path_factory.mktemp("sweep-lab")
    task = build_domain(DomainSpec(n_train=64, n_validation=8, n_test=8, n_ood=8))
    for split, rows in (("train", task.train), ("test", task.test), ("ood", task.ood)):
        write_jsonl(rows, root / f"{split}.jsonl")
    probes = build_world(lab_size("micro").world).probes
    write_suite(dataclasses.replace(probes, items=probes.items[::3]), root / "probes.jsonl")  # every category
    (root / "config.yaml").write_text(f"""
model: {{name_or_path: {base.path}}}
data: {{train: {root / 'train.jsonl'}, eval: {root / 'test.jsonl'}, ood: {root / 'ood.jsonl'}}}
probes: {{suites: [{root / 'probes.jsonl'}], methods: [loglik]}}
train: {{max_steps: 1, batch_size: 8}}
guards: {{enabled: false, forgetting: {{method: loglik}}, smoke: {{task_prompts: 0}}}}
eval: {{perturbations: []}}
audit: {{allow_small_data: true, task: classification}}
""")
    return root


def sweep_file(lab: Path, out: Path, body: str, name: str = "s") -> Path:
    path = out / f"{name}.yaml"
    path.write_text(f"base: {lab / 'config.yaml'}\nset: [output.dir={out}]\n"
                    "objectives: {forgetting_limit: 0.5}\n" + body)
    return path


def trials_of(sweep) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=sweep.name, storage=sweep.storage).get_trials()


def test_a_grid_sweep_writes_pareto_table_and_a_config_retain_train_accepts(lab, tmp_path) -> None:
    path = sweep_file(lab, tmp_path, "space:\n  data.size: [16, 32]\n")
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 0, result.output
    directory = tmp_path / "sweep-s"
    data = json.loads((directory / "sweep.json").read_text())
    assert sorted(trial["params"]["data.size"] for trial in data["trials"]) == [16, 32]
    assert [trial["state"] for trial in data["trials"]] == ["complete", "complete"]
    for trial in data["trials"]:  # each trial is a full run in its own directory, with its setting
        run = Path(trial["run_dir"])
        assert run.parent == directory / "trials" and (run / "summary.json").is_file()
        assert load_config(run / "config.yaml").data.size == trial["params"]["data.size"]
        summary = json.loads((run / "summary.json").read_text())
        assert trial["forgetting"] == summary["forgetting_relative"]
        assert trial["task_accuracy"] == summary["task"]["eval"]["accuracy"]
    assert data["pareto"] and set(data["pareto"]) <= {0, 1}
    pareto = (directory / "pareto.md").read_text()
    assert "## Pareto-optimal trials" in pareto and "## Data size" in pareto and "## All trials" in pareto
    assert len((directory / "trials.csv").read_text().splitlines()) == 3
    best = next(trial for trial in data["trials"] if trial["number"] == data["recommended"])
    recommended = load_config(directory / "recommended.yaml")  # what `retain train` reads first
    trained = load_config(Path(best["run_dir"]) / "config.yaml")
    assert recommended.data.size == best["params"]["data.size"]
    assert recommended.model_dump(exclude={"output"}) == trained.model_dump(exclude={"output"})
    assert recommended.output.name is None and recommended.output.dir == str(tmp_path)
    # Rerunning the same command resumes the finished study: nothing is trained again.
    again = run_sweep(load_sweep(path), echo=lambda line: None)
    assert again.ran == 0 and len(again.results.records) == 2
    # The acceptance path to its end: `retain train` trains the recommended config,
    # and the sweep's report renders in a real browser.
    trained_run = CliRunner().invoke(app, ["-q", "train", str(directory / "recommended.yaml"), "--name", "chosen"])
    assert trained_run.exit_code == 0, trained_run.output
    assert json.loads((tmp_path / "chosen" / "summary.json").read_text())["status"] == "completed"
    from browser import find_chromium, open_report

    from retain.report import build_report

    html = build_report([directory], directory / "report.html").html
    if find_chromium() is not None:
        seen = open_report(html, expression="document.querySelectorAll('section').length")
        assert seen.console == [] and int(seen.value) >= 1


def test_an_optuna_sweep_samples_within_its_ranges_up_to_the_budget(lab, tmp_path) -> None:
    path = sweep_file(lab, tmp_path, "mode: optuna\ntrials: 2\nseed: 3\nspace:\n"
                                     "  train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
                                     "  method.lora.r: {low: 2, high: 8}\n")
    outcome = run_sweep(load_sweep(path), echo=lambda line: None)
    assert outcome.ran == 2
    records = outcome.results.records
    assert [record.state for record in records] == ["complete", "complete"]
    for record in records:
        assert 1e-4 <= record.params["train.lr"] <= 1e-2 and record.params["method.lora.r"] in range(2, 9)
        config = load_config(Path(record.run_dir) / "config.yaml")
        assert config.train.lr == record.params["train.lr"] and config.method.lora.r == record.params["method.lora.r"]
    assert records[0].params != records[1].params
    assert run_sweep(load_sweep(path), echo=lambda line: None).ran == 0  # the budget is used up
    assert run_sweep(load_sweep(path, trials=3), echo=lambda line: None).ran == 1  # a larger one adds trials


def test_a_trial_process_that_dies_is_a_failed_trial_not_a_dead_sweep() -> None:
    with pytest.raises(TrialFailed, match="killed by SIGABRT"):
        run_in_child(os.abort)
    with pytest.raises(TrialFailed, match="exited with code 3 without a result"):
        run_in_child(os._exit, 3)
    with pytest.raises(TrialFailed, match="ValueError: invalid literal"):
        run_in_child(int, "x")
    assert run_in_child(int, "7") == 7


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_killed_sweep_resumes_without_repeating_finished_or_failed_trials(lab, tmp_path) -> None:
    missing = tmp_path / "missing.jsonl"
    path = sweep_file(lab, tmp_path, f"heartbeat: 1\nspace:\n  data.train: [{missing}, {lab / 'train.jsonl'}]\n")
    sweep = load_sweep(path)
    process = subprocess.Popen([sys.executable, "-m", "retain.cli", "-q", "sweep", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    running = None
    while running is None:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "trial 1 never started"
        time.sleep(0.5)
        if not (sweep.trials_dir / "trial-0000.output.txt").is_file():  # the study is not ready yet
            continue
        trials = trials_of(sweep)
        running = next((t for t in trials if t.number == 1 and t.state.name == "RUNNING" and "pid" in t.user_attrs),
                       None)
    # Kill at once: on an idle machine the micro trial (one step) can finish within seconds.
    process.send_signal(signal.SIGKILL)
    process.wait()
    child = running.user_attrs["pid"]
    for _ in range(40):  # the trial's process notices its sweep died and exits
        if _gone(child):
            break
        time.sleep(0.25)
    assert _gone(child), "the trial kept running after its sweep was killed"
    assert [t.state.name for t in trials_of(sweep)] == ["FAIL", "RUNNING"]
    outcome = run_sweep(load_sweep(path), echo=lambda line: None)  # the rerun: waits for the stale trial
    assert outcome.ran == 1
    failed, killed, retried = outcome.results.records
    assert failed.state == "failed" and "not found" in failed.error  # a failure is not retried
    assert killed.state == "killed" and "retried as trial 2" in killed.error
    assert retried.state == "complete" and retried.retry_of == 1
    assert retried.params == killed.params == {"data.train": str(lab / "train.jsonl")}
    assert (tmp_path / "sweep-s" / "recommended.yaml").is_file()


# --- two workers, one PostgreSQL study ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1; skipped only where none can start."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([shutil.which("initdb")] if shutil.which("initdb")
                                                                       else [])
    if not found:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package")
    bindir = Path(found[-1]).parent
    # Outside pytest's private (0700) temp tree, so that the server's own user can enter it.
    root = Path(tempfile.mkdtemp(prefix="retain-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser, so PostgreSQL cannot be started as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120, check=False)

    started = run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "retain", "--no-sync")
    if started.returncode == 0:
        started = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log.txt"), "-w", "-o",
                      f"-p {port} -h 127.0.0.1 -k {root} -F", "start")
    if started.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"the PostgreSQL server did not start: {started.stderr.strip()[-300:]}")
    try:
        made = run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "retain", "sweeps")
        assert made.returncode == 0, made.stderr
        yield f"postgresql+psycopg2://retain@127.0.0.1:{port}/sweeps"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgresql_study_without_duplicate_trials(lab, tmp_path, postgres) -> None:
    path = sweep_file(lab, tmp_path, "space:\n  train.lr: [1.0e-4, 1.0e-3]\n", name="shared")
    command = [sys.executable, "-m", "retain.cli", "-q", "sweep", str(path), "--worker", "--storage", postgres]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err.decode()[-2000:]
    trials = [t for t in trials_of(load_sweep(path, storage=postgres)) if not t.user_attrs.get("stray")]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(trials) == 2
    assert sorted(t.params["train.lr"] for t in complete) == [1e-4, 1e-3]  # each grid point once
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both workers ran a trial
    summary = run_sweep(load_sweep(path, storage=postgres), echo=lambda line: None)  # summarise, train nothing
    assert summary.ran == 0 and [record.state for record in summary.results.records] == ["complete", "complete"]
    assert json.loads((tmp_path / "sweep-shared" / "sweep.json").read_text())["storage"].startswith("postgresql")

"""How long ``retain report`` takes for a sweep of 50 trials (target: under 10 s).

One real run of the micro lab model (200 rows, 20 steps, guard checks every 5 steps) is
trained, then copied into a sweep directory of 50 trials (``trials/trial-NNNN`` and
``sweep.json``), each with its own ``data.size``, learning rate, loss curve and summary
figures. The figures of the copies are synthetic (drawn from a seeded generator): this
measures the report's speed, not a result. Timed: ``build_report`` in one process (the
median of three), and the ``retain report`` command end to end (Python start and imports
included). With Chromium on the machine, the reports are opened in it and screenshots
written to ``docs/img/``.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from retain.config import load_config
from retain.io import read_jsonl, to_json
from retain.lab.base import build_base, lab_size
from retain.lab.export import export_lab_data
from retain.report import build_report
from retain.training.run import run_train

# The headless-Chromium driver lives with the tests that use it (tests/browser.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser import find_chromium, open_report  # noqa: E402

TRIALS = 50
REPEATS = 3
TARGET_SECONDS = 10.0
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def _tiny_run(root: Path) -> Path:
    import torch

    data = root / "data"
    export_lab_data(data, size="micro", n_train=200)
    config = load_config(data / "config.yaml", [
        f"model.name_or_path={build_base(lab_size('micro'), progress=False).path}", f"probes.suites=[{data / 'probes.jsonl'}]",
        "train.max_steps=20", "guards.every_steps=5", "eval.perturbations=[lowercase]", "eval.perturb_limit=50",
        f"output.dir={root / 'runs'}", "output.name=tiny",
    ])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the micro model's matrices are too small for more
    try:
        return run_train(config, progress=False, echo=lambda line: None).run_dir
    finally:
        torch.set_num_threads(threads)


def _sweep(run: Path, root: Path) -> Path:
    """Copies ``run`` into a 50-trial sweep with varied settings, curves and figures."""
    rng = random.Random(0)
    records = []
    for number in range(TRIALS):
        trial = root / "trials" / f"trial-{number:04d}"
        shutil.copytree(run, trial, ignore=shutil.ignore_patterns("model", "checkpoints", "merged"))
        size, lr = rng.choice([50, 100, 200]), rng.choice([1e-4, 3e-4, 1e-3])
        config = yaml.safe_load((trial / "config.yaml").read_text())
        config["data"]["size"], config["train"]["lr"] = size, lr
        (trial / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        scale = rng.uniform(0.6, 1.4)
        metrics = read_jsonl(trial / "metrics.jsonl")
        for record in metrics:
            for key in ("loss", "val_loss", "kl"):
                if isinstance(record.get(key), float):
                    record[key] *= scale
        (trial / "metrics.jsonl").write_text("".join(to_json(record) + "\n" for record in metrics))
        summary = json.loads((trial / "summary.json").read_text())
        task, ood, forgetting = rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.8), rng.uniform(-0.02, 0.6)
        summary["task"]["eval"]["accuracy"], summary["task"]["ood"]["accuracy"] = task, ood
        summary["forgetting_relative"] = forgetting
        (trial / "summary.json").write_text(json.dumps(summary))
        records.append({"number": number, "params": {"data.size": size, "train.lr": lr}, "state": "complete",
                        "task_accuracy": task, "ood_accuracy": ood, "forgetting": forgetting,
                        "general_accuracy": summary["final_probe_accuracy"], "seconds": summary["seconds"],
                        "run_dir": f"trials/trial-{number:04d}", "error": None})
    (root / "sweep.json").write_text(json.dumps({"trials": records}))
    return root


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        tiny = _tiny_run(root)
        train_seconds = time.perf_counter() - started
        sweep = _sweep(tiny, root / "sweep")
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            files = build_report([sweep], root / "sweep.html")
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "retain.cli", "report", str(sweep), "--out", str(root / "cli.html")],
                       check=True, capture_output=True)
        cli_seconds = time.perf_counter() - started
        started = time.perf_counter()
        single = build_report([tiny], root / "run.html")
        single_seconds = time.perf_counter() - started
        html = files.html.read_text()
        result = {
            "trials": TRIALS, "repeats": REPEATS, "target_seconds": TARGET_SECONDS,
            "build_seconds": round(statistics.median(times), 2), "build_seconds_all": [round(t, 2) for t in times],
            "cli_seconds": round(cli_seconds, 2), "single_run_seconds": round(single_seconds, 2),
            "html_bytes": len(html.encode()), "plots": html.count('<figure class="plot">'),
            "tiny_run_train_seconds": round(train_seconds, 1),
        }
        result["browser"] = _screenshots(files.html, single.html)
    return result


def _screenshots(sweep_html: Path, run_html: Path) -> dict:
    """Opens both reports in Chromium; writes docs/img/report-sweep.png and report-run.png."""
    if find_chromium() is None:
        return {"checked": False, "reason": "no Chromium binary"}
    checked = {}
    for name, html in (("report-sweep", sweep_html), ("report-run", run_html)):
        started = time.perf_counter()
        seen = open_report(html, screenshot=DOCS_IMG / f"{name}.png", width=1280, height=2000)
        checked[name] = {"console_messages": len(seen.console), "seconds": round(time.perf_counter() - started, 2),
                         "requests_outside_the_file": len([u for u in seen.requests if not u.startswith(("data:", "file:"))])}
    return {"checked": True, **checked}


def markdown(result: dict) -> str:
    verdict = "within" if result["build_seconds"] < result["target_seconds"] else "over"
    lines = [
        "## Report: a sweep of 50 trials\n",
        (f"Measured {result.get('date', '?')}. Command: `python benchmarks/run.py report`. One real run of "
         "the micro lab model (200 rows, 20 steps, checks every 5 steps) copied into a sweep of "
         f"{result['trials']} trials with varied settings, loss curves and (synthetic) figures; "
         f"`retain report` on the sweep directory. Target: under {result['target_seconds']:.0f} s.\n"),
        "| measure | value |",
        "| --- | --- |",
        (f"| `build_report` of the sweep, median of {result['repeats']} | {result['build_seconds']:.2f} s "
         f"({verdict} the target; runs: {', '.join(f'{t:.2f}' for t in result['build_seconds_all'])}) |"),
        f"| `retain report SWEEP` command, end to end | {result['cli_seconds']:.2f} s |",
        f"| report of the single run | {result['single_run_seconds']:.2f} s |",
        f"| HTML size, plots | {result['html_bytes'] / 1e6:.1f} MB, {result['plots']} plots |",
    ]
    browser = result.get("browser", {})
    if browser.get("checked"):
        sweep = browser["report-sweep"]
        lines.append(f"| opened in headless Chromium | {sweep['seconds']:.2f} s, {sweep['console_messages']} console "
                     f"messages, {sweep['requests_outside_the_file']} requests outside the file |")
        lines.append("\nScreenshots: [docs/img/report-sweep.png](img/report-sweep.png), "
                     "[docs/img/report-run.png](img/report-run.png).")
    return "\n".join(lines) + "\n"

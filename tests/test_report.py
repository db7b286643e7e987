"""`retain report` on real micro-lab runs: cards, one run, many runs, a sweep, a comparison,
an unfinished run, hostile strings from data (escaped everywhere), and bad inputs."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
import yaml
from typer.testing import CliRunner

from retain.cli import app
from retain.errors import RetainError
from retain.evaluation.suites import write_suite
from retain.lab.base import lab_size
from retain.lab.domain import DomainSpec, build_domain, write_jsonl
from retain.lab.world import build_world
from retain.report import build_report
from retain.report.analysis import pareto_front, size_curves
from retain.report.content import cards, verdict
from retain.report.html import CSP
from retain.report.sources import read_run, read_source, read_sweep
from retain.report.views import Trial, varying_settings
from retain.training.run import run_train

pytestmark = pytest.mark.slow

HOSTILE = "<script>alert(1)</script> \"double\" 'single' & <img src=x onerror=alert(2)>"
# A directory name cannot hold '/', so the run name carries the rest of the attack.
HOSTILE_NAME = "run-\"'<img src=x onerror=alert(3)>"


# --- trained runs, shared with test_report_browser.py ------------------------------------


def trained_runs(request: pytest.FixtureRequest, tmp_path_factory) -> dict[str, Path]:
    """Trains the micro lab model three ways (once per session; the second caller reuses them).

    ``lora``: LoRA on all 64 rows, guards every 4 steps; ``aggressive``: full fine-tuning at
    a high rate on 32 rows, the guards only warning (a stop would restore the best
    checkpoint, and the report must show a model that forgot); ``small``: LoRA on 32 rows.
    One torch thread: the micro model's matrices are too small for two, and on a shared,
    busy CPU two threads made these runs eight times slower.
    """
    root = tmp_path_factory.getbasetemp() / "report-runs"
    done = root / "done.json"
    if done.is_file():
        return {name: Path(path) for name, path in json.loads(done.read_text()).items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_runs(request.getfixturevalue("micro_base")[0], root, done)
    finally:
        torch.set_num_threads(threads)


def _train_runs(base, root: Path, done: Path) -> dict[str, Path]:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    task = build_domain(DomainSpec(n_train=64, n_validation=16, n_test=16, n_ood=16))
    for split, rows in (("train", task.train), ("validation", task.validation), ("test", task.test),
                        ("ood", task.ood)):
        write_jsonl(rows, data / f"{split}.jsonl")
    write_suite(build_world(lab_size("micro").world).probes, data / "probes.jsonl")
    common = {
        "model": {"name_or_path": str(base.path)},
        "data": {"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl"),
                 "eval": str(data / "test.jsonl"), "ood": str(data / "ood.jsonl")},
        "probes": {"suites": [str(data / "probes.jsonl")]},
        "eval": {"perturbations": ["lowercase"], "perturb_limit": 16},
        "audit": {"allow_small_data": True, "task": "classification"},
        "guards": {"every_steps": 4, "loss": {"max_loss_after_warmup": 5.0}},
    }
    recipes = {
        "lora": {"method": {"use": ["lora"]}, "train": {"lr": 1e-3, "max_steps": 8, "batch_size": 8}},
        "aggressive": {"method": {"use": ["full"]}, "data": {"size": 32},
                       "train": {"lr": 1e-2, "max_steps": 8, "batch_size": 8},
                       "guards": {"every_steps": 4, "forgetting": {"threshold": 0.01, "action": "warn"},
                                  "smoke": {"action": "warn"}}},
        "small": {"method": {"use": ["lora"]}, "data": {"size": 32},
                  "train": {"lr": 1e-3, "max_steps": 8, "batch_size": 8}},
        # The aggressive run under a forgetting guard that acts: stopped and rolled back.
        "rollback": {"method": {"use": ["full"]}, "data": {"size": 32},
                     "train": {"lr": 1e-2, "max_steps": 8, "batch_size": 8},
                     "guards": {"every_steps": 4, "forgetting": {"threshold": 0.01, "patience": 0},
                                "smoke": {"action": "warn"}}},
    }
    from retain.config import RetainConfig

    runs = {}
    for name, recipe in recipes.items():
        values = {section: dict(common.get(section, {})) | recipe.get(section, {})
                  for section in {*common, *recipe}}
        values["output"] = {"dir": str(root / "runs"), "name": name}
        outcome = run_train(RetainConfig.model_validate(values), progress=False, echo=lambda line: None)
        runs[name] = outcome.run_dir
    done.write_text(json.dumps({name: str(path) for name, path in runs.items()}))
    return runs


def copy_run(source: Path, target: Path) -> Path:
    """Copies a run directory without its weights (the report never reads them)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model", "checkpoints", "merged"))
    return target


def make_sweep(runs: dict[str, Path], root: Path, *, index: bool = True) -> Path:
    """A sweep directory in the format the report assumes: trials/trial-NNNN and sweep.json."""
    records = []
    for number, name in enumerate(("lora", "aggressive", "small")):
        trial = copy_run(runs[name], root / "trials" / f"trial-{number:04d}")
        summary = json.loads((trial / "summary.json").read_text())
        config = yaml.safe_load((trial / "config.yaml").read_text())
        records.append({
            "number": number, "state": "complete", "run_dir": str(trial),
            "params": {"method.use": config["method"]["use"], "data.size": config["data"]["size"] or 64},
            "task_accuracy": summary["task"]["eval"]["accuracy"], "ood_accuracy": summary["task"]["ood"]["accuracy"],
            "forgetting": summary["forgetting_relative"], "general_accuracy": summary["final_probe_accuracy"],
            "seconds": summary["seconds"], "error": None,
        })
    records.append({"number": 3, "state": "failed", "params": {"method.use": ["full"], "data.size": 16},
                    "error": "out of memory", "run_dir": None})
    if index:  # the layout of retain sweep's sweep.json (retain.sweep.results), trimmed
        front = pareto_front([(r.get("task_accuracy"), r.get("forgetting")) for r in records])
        (root / "sweep.json").write_text(json.dumps({
            "name": root.name, "trials": records, "pareto": sorted(front), "recommended": 2,
            "objectives": {"task": "eval", "forgetting_limit": 0.05}}))
    (root / "pareto.md").write_text("| trial | task |\n| --- | --- |\n| 0 | best |\n")
    return root


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict[str, Path]:
    return trained_runs(request, tmp_path_factory)


# --- checks on the output -------------------------------------------------------------------


class _Page(HTMLParser):
    """Collects what matters for safety and structure: tags, attributes, section ids."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str | None]] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            self.attributes.append((tag, name, value))
            if name == "id" and value:
                self.ids.append(value)


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def assert_inert(html: str) -> _Page:
    """No script, no event handler, no link out: images are SVG data only, and the SVGs hold no script."""
    page = parse(html)
    assert "script" not in page.tags and "iframe" not in page.tags and "object" not in page.tags
    assert not [a for a in page.attributes if a[1].startswith("on")], "event handler attribute"
    sources = [value for tag, name, value in page.attributes if tag == "img" and name == "src"]
    assert sources and all(value.startswith("data:image/svg+xml;base64,") for value in sources)
    for value in sources:  # each plot is well-formed SVG, data text in it only as text
        svg = ElementTree.fromstring(base64.b64decode(value.split(",", 1)[1]))
        for element in svg.iter():
            assert not element.tag.endswith(("script", "foreignObject")), element.tag
            assert not [name for name in element.attrib if name.startswith("on")], element.attrib
    hrefs = [value for tag, name, value in page.attributes if name == "href"]
    assert all(value.startswith("#") for value in hrefs), hrefs
    policy = [value for tag, name, value in page.attributes if tag == "meta" and name == "content"
              and value and "default-src" in value]
    assert policy == [CSP] and "default-src 'none'" in CSP and "img-src data:;" in CSP
    return page


# --- tests ------------------------------------------------------------------------------------


def test_one_run_has_its_cards_plots_findings_and_answers(runs, tmp_path) -> None:
    run = read_run(runs["aggressive"])
    summary = json.loads((runs["aggressive"] / "summary.json").read_text())
    by_title = {card.title: card for card in cards(run)}
    # Cards carry the run's own figures, formatted.
    assert by_title["Task accuracy, held-out"].value == f"{summary['task']['eval']['accuracy']:.1%}"
    assert by_title["General probes: forgetting"].value == f"{summary['forgetting_relative']:+.1%}"
    assert summary["forgetting_relative"] > 0.01  # the run's limit: the card says so
    assert by_title["General probes: forgetting"].tone == "bad"
    assert verdict(run) == (False, summary["verdict"]["reasons"])
    assert by_title["Verdict"].value == "not safe to ship"
    assert by_title["Training"].value == summary["status"] == "completed"

    files = build_report([runs["aggressive"]], tmp_path / "one.html")
    html = files.html.read_text()
    page = assert_inert(html)
    assert "run-1" in page.ids and "comparison" not in page.ids
    assert html.count("<figure class=\"plot\">") == 3  # loss, probes per category, drift
    for heading in ("Summary", "Guard actions", "General probes before and after, per category", "Task",
                    "Data audit", "Pipeline doctor", "Sample answers before and after"):
        assert f"<h3>{heading}</h3>" in html, heading
    # The guard that warned is in the table, with its message.
    overall = summary["forgetting"]["lab"]["categories"]["overall"]
    assert (f'<tr class="overall"><td>lab ({summary["forgetting"]["lab"]["version"]})</td><td>overall</td>'
            f'<td class="num">{overall["items"]}</td>') in html
    event = next(event for event in summary["guard_events"] if event["guard"] == "forgetting")
    assert f"<td>{event['guard']}</td><td>{event['action']}</td>" in html
    # Probe answers before and after come from the evaluations, with the suite's prompts.
    final = json.loads((runs["aggressive"] / "final_eval.json").read_text())
    item = final["probes"]["lab"]["generation"]["items"][0]["id"]
    assert item in html or "newly wrong" in html
    assert "Q: " in html  # prompts were found in the run's probe suite file
    markdown = files.markdown.read_text()
    assert "| Verdict | not safe to ship |" in markdown and "## Run: aggressive" in markdown


def test_the_default_output_goes_inside_a_single_run_and_the_cli_prints_both_paths(runs, tmp_path) -> None:
    run = copy_run(runs["lora"], tmp_path / "lora")
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert f"report: {run / 'report.html'}" in result.output and (run / "report.md").is_file()
    assert "safe to ship" in (run / "report.md").read_text()


def test_many_runs_side_by_side_with_what_differs(runs, tmp_path) -> None:
    files = build_report([runs["lora"], runs["aggressive"], runs["small"]], tmp_path / "many.html")
    html = files.html.read_text()
    page = assert_inert(html)
    assert {"comparison", "run-1", "run-2", "run-3"} <= set(page.ids)
    differing = varying_settings([read_run(path) for path in runs.values()])
    assert {"method.use", "data.size", "train.lr"} <= set(differing)
    assert "<code>data.size</code>" in html
    for title in ("Training and validation loss, all runs", "General probe accuracy over steps, all runs",
                  "Task accuracy against forgetting", "Data-size curves"):
        assert f"<figcaption>{title}</figcaption>" in html, title
    rows = re.findall(r'<tr><td><a href="#run-\d">(\w+)</a>', html)
    assert rows == ["lora", "aggressive", "small"]
    assert "## Runs side by side" in files.markdown.read_text()


def test_a_sweep_shows_trials_pareto_front_data_size_curves_and_one_trial_in_detail(runs, tmp_path) -> None:
    sweep_dir = make_sweep(runs, tmp_path / "sweep")
    sweep = read_sweep(sweep_dir)
    assert [t.number for t in sweep.trials] == [0, 1, 2, 3]
    assert sweep.trials[3].state == "failed" and sweep.trials[3].run is None
    assert sweep.recommended == 2 and sweep.forgetting_limit == 0.05
    assert sweep.trials[1].run is not None and sweep.trials[1].run.name == "trial-0001"
    curves = size_curves(sweep.trials)
    # lora at 32 and 64 rows is one curve; full has one size with a figure (the failed trial has none).
    lora = next(curve for curve in curves if "lora" in curve.label)
    assert lora.sizes == [32, 64]
    assert lora.task_accuracy == [sweep.trials[2].task_accuracy, sweep.trials[0].task_accuracy]
    files = build_report([sweep_dir])
    assert files.html == sweep_dir / "report.html"
    html = files.html.read_text()
    page = assert_inert(html)
    assert "sweep-1" in page.ids and "sweep-1-picked" in page.ids
    assert "<figcaption>Task accuracy against forgetting (Pareto front)</figcaption>" in html
    assert "<figcaption>Data-size curves</figcaption>" in html
    assert "out of memory" in html and "<h3>pareto.md</h3>" in html
    assert html.count('<tr class="front">') == len(sweep.pareto) >= 1
    # The trial in detail is the sweep's recommendation.
    assert "<summary>In detail: trial-0002</summary>" in html and "the sweep&#39;s recommendation" in html
    assert "| 3 | trial 3 | failed |" in files.markdown.read_text()


def test_a_sweep_without_an_index_reads_its_trial_directories(runs, tmp_path) -> None:
    sweep = read_source(make_sweep(runs, tmp_path / "bare", index=False))
    assert [trial.name for trial in sweep.trials] == ["trial-0000", "trial-0001", "trial-0002"]
    # The params are the settings in which the trials' configs differ.
    assert {"method.use", "data.size"} <= set(sweep.trials[0].params)


def test_a_sweep_or_compare_folder_cannot_point_the_report_at_runs_outside_it(runs, tmp_path) -> None:
    # A shared folder whose JSON names a run elsewhere on this disk: that run's config and log
    # must not be copied into the report (they could be someone's private run).
    private = copy_run(runs["lora"], tmp_path / "private" / "secret-run")
    (private / "log.txt").write_text("PRIVATE-LOG-LINE\n")
    sweep_dir = make_sweep(runs, tmp_path / "sweep")
    index = json.loads((sweep_dir / "sweep.json").read_text())
    index["trials"][0]["run_dir"] = str(private)
    index["trials"][1]["run_dir"] = "../private/secret-run"
    (sweep_dir / "sweep.json").write_text(json.dumps(index))
    shutil.rmtree(sweep_dir / "trials" / "trial-0000")  # no fallback inside for trial 0
    sweep = read_sweep(sweep_dir)
    assert sweep.trials[0].run is None and sweep.trials[0].task_accuracy is not None  # the record's figures stay
    assert sweep.trials[1].run is not None and sweep.trials[1].run.path == sweep_dir / "trials" / "trial-0001"
    compare = tmp_path / "compare"
    copy_run(runs["small"], compare / "runs" / "small-seed0")
    rows = [{"recipe": "lora", "runs": [{"recipe": "lora", "seed": 0, "run_dir": str(private)}]}]
    (compare / "compare.json").write_text(json.dumps({"rows": rows}))
    assert read_source(compare).trials[0].run is None
    for folder in (sweep_dir, compare):
        assert "PRIVATE-LOG-LINE" not in build_report([folder], tmp_path / f"{folder.name}.html").html.read_text()


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(0.9, 0.5), (0.8, 0.1), (0.7, 0.2), (0.9, 0.5), (None, 0.0), (0.95, 0.6)]
    assert pareto_front(points) == {0, 1, 3, 5}
    assert size_curves([Trial(number=0, params={"data.size": 10})]) == []


def test_a_lab_compare_folder_is_read_as_recipes_and_seeds(runs, tmp_path) -> None:
    folder = tmp_path / "compare"
    copy_run(runs["lora"], folder / "runs" / "lora-seed0")
    copy_run(runs["small"], folder / "runs" / "small-seed0")
    rows = [{"recipe": name, "claim": "", "seeds": 1, "task_accuracy": [0.5, None], "ood_accuracy": [0.4, None],
             "probe_accuracy": [0.9, None], "forgetting": [0.01, None], "time_vs_reference": 1.0,
             "runs": [{"recipe": name, "seed": 0, "task_accuracy": 0.5, "ood_accuracy": 0.4, "probe_accuracy": 0.9,
                       "forgetting": 0.01, "train_seconds": 3.0, "run_dir": f"/moved/away/{name}-seed0"}]}
            for name in ("lora", "small")]
    (folder / "compare.json").write_text(json.dumps({"rows": rows}))
    view = read_source(folder)
    assert view.kind == "lab compare" and all(trial.run is not None for trial in view.trials)
    html = build_report([folder], tmp_path / "c.html").html.read_text()
    assert "Recipes (mean ± 95% interval over seeds)" in html and "50.0%" in html


def test_an_eval_result_file_is_reported_as_an_evaluation(runs, tmp_path) -> None:
    final = json.loads((runs["lora"] / "final_eval.json").read_text())
    base = json.loads((runs["lora"] / "base_eval.json").read_text())
    result = {**final, "base": {"source": "lab", "result": base}, "forgetting": {}}
    (tmp_path / "eval.json").write_text(json.dumps(result))
    view = read_source(tmp_path / "eval.json")
    assert view.kind == "eval" and view.summary.final_probe_accuracy is not None
    html = build_report([tmp_path / "eval.json"], tmp_path / "e.html").html.read_text()
    assert "Evaluation: eval" in html and "<h3>Data audit</h3>" not in html


def test_an_unfinished_run_reports_what_there_is(runs, tmp_path) -> None:
    run_dir = copy_run(runs["lora"], tmp_path / "unfinished")
    for name in ("summary.json", "final_eval.json"):
        (run_dir / name).unlink()
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(metrics[:-3]) + '\n{"event": "log", "st')  # cut mid-write
    run = read_run(run_dir)
    assert run.status == "unfinished"
    ship, reasons = verdict(run)
    assert ship is None and "not finished" in reasons[0]
    last = run.checks[-1]
    by_title = {card.title: card for card in cards(run)}
    assert by_title["General probes: forgetting"].lines[1] == f"at the last check (step {last['step']})"
    html = build_report([run_dir], tmp_path / "u.html").html.read_text()
    assert "Unfinished run:" in html and "<figcaption>Training and validation loss</figcaption>" in html


def test_a_run_refused_by_the_doctor_shows_the_blockers(runs, tmp_path) -> None:
    run_dir = tmp_path / "refused"
    run_dir.mkdir()
    for name in ("config.yaml", "meta.json", "audit.json"):
        shutil.copy(runs["lora"] / name, run_dir / name)
    doctor = json.loads((runs["lora"] / "doctor.json").read_text())
    doctor["findings"].insert(0, {"code": "eos_masked", "severity": "blocker", "title": "EOS carries no loss",
                                  "count": 64, "fix": "use train.collator: completion", "examples": []})
    (run_dir / "doctor.json").write_text(json.dumps(doctor))
    run = read_run(run_dir)
    assert run.status == "refused"
    assert verdict(run) == (False, ["refused before training", "doctor: EOS carries no loss"])
    html = build_report([run_dir], tmp_path / "r.html").html.read_text()
    assert '<td class="sev-blocker">blocker</td>' in html and "figure" not in html.split("<body>")[1]


def test_a_task_split_answered_with_no_label_is_flagged_whatever_the_verdict(runs, tmp_path) -> None:
    run_dir = copy_run(runs["lora"], tmp_path / "silent")
    summary = json.loads((run_dir / "summary.json").read_text())
    for unparsed, tone in ((0.9, "bad"), (0.1, "neutral")):
        summary["task"]["eval"]["unparsed"] = unparsed
        (run_dir / "summary.json").write_text(json.dumps(summary))
        card = next(card for card in cards(read_run(run_dir)) if card.title == "Task accuracy, held-out")
        assert card.tone == tone and ("not one of the task's labels" in card.lines[-1]) == (tone == "bad")


def test_hostile_strings_from_data_config_and_answers_are_escaped(runs, tmp_path) -> None:
    run_dir = copy_run(runs["aggressive"], tmp_path / HOSTILE_NAME)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["model"]["chat_template"] = HOSTILE
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["verdict"]["reasons"].append(HOSTILE)
    summary["task"]["eval"]["predicted"] = {HOSTILE: 1.0}
    summary["task"]["eval"]["health"]["examples"] = {"loop": [{"prompt": HOSTILE, "text": HOSTILE, "flags": [HOSTILE]}]}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    for name in ("base_eval.json", "final_eval.json"):
        result = json.loads((run_dir / name).read_text())
        result["probes"]["lab"]["generation"]["items"][0]["output"] = HOSTILE
        # Task answers kept by each evaluation: a prompt, an expected answer and an answer from data.
        result["task"]["eval"]["samples"] = [{"prompt": HOSTILE, "expected": HOSTILE, "answer": HOSTILE,
                                              "correct": False}]
        (run_dir / name).write_text(json.dumps(result))
    audit = json.loads((run_dir / "audit.json").read_text())
    audit["findings"].append({"code": "x", "severity": "warning", "title": HOSTILE, "count": 1, "fix": HOSTILE,
                              "examples": [{"line": 3, "text": HOSTILE}]})
    (run_dir / "audit.json").write_text(json.dumps(audit))
    with open(run_dir / "metrics.jsonl", "a") as file:
        file.write(json.dumps({"event": "guard", "guard": HOSTILE, "step": 2, "triggered": True,
                               "action": "warn", "value": 1.0, "threshold": 0.5, "message": HOSTILE}) + "\n")
    with open(run_dir / "log.txt", "a") as file:
        file.write(HOSTILE + "\n")

    files = build_report([run_dir, runs["lora"]], tmp_path / "hostile.html")  # both layouts: detail and table
    html = files.html.read_text()
    assert_inert(html)
    assert "alert(1)</script>" not in html and "<img src=x" not in html
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; &#34;double&#34; &#39;single&#39; &amp; &lt;img src=x"
    # config, reason (card and the table's title attribute), prediction, broken answer (prompt,
    # answer, flags), probe answers before and after, audit title/fix/example, guard, message, log
    assert html.count(escaped) >= 16, html.count(escaped)  # + the task sample's prompt, expected, before, after
    assert 'title="' + "general probe accuracy" in html  # reasons sit inside an attribute, quotes escaped
    assert "run-&#34;&#39;&lt;img src=x onerror=alert(3)&gt;" in html
    markdown = files.markdown.read_text()
    assert "<script>" not in markdown and "<img" not in markdown and "&lt;script&gt;" in markdown


def test_bad_inputs_are_one_line_errors(runs, tmp_path) -> None:
    with pytest.raises(RetainError, match="does not exist"):
        build_report([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetainError, match="is not a run directory"):
        build_report([tmp_path / "empty"])
    with pytest.raises(RetainError, match="no run or sweep"):
        build_report([])
    corrupt = copy_run(runs["lora"], tmp_path / "corrupt")
    (corrupt / "summary.json").write_text('{"status": "completed",\n "task": ')
    with pytest.raises(RetainError) as error:
        build_report([corrupt])
    assert error.value.file == str(corrupt / "summary.json") and error.value.line == 2
    (corrupt / "summary.json").write_text("[1, 2]")
    with pytest.raises(RetainError, match="not a JSON object"):
        build_report([corrupt])
    broken_metrics = copy_run(runs["lora"], tmp_path / "metrics")
    (broken_metrics / "metrics.jsonl").write_text('{"event": "log"}\nnot json\n{"event": "log"}\n')
    with pytest.raises(RetainError) as error:
        build_report([broken_metrics])
    assert error.value.line == 2
    bad_sweep = tmp_path / "sweep"
    bad_sweep.mkdir()
    (bad_sweep / "sweep.json").write_text('{"trials": [{"params": {}}]}')
    with pytest.raises(RetainError, match="integer 'number'"):
        build_report([bad_sweep])
    # Through the CLI: one line on stderr, exit code 2, no traceback.
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "retain.cli", "report", str(corrupt)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_task_answers_before_and_after_are_shown(runs) -> None:
    from retain.report.content import task_samples
    from retain.report.sources import read_run

    samples = task_samples(read_run(runs["aggressive"]))
    assert {sample.split for sample in samples} == {"eval", "ood"}
    # retain train keeps the first task answers of the base model and of the trained one.
    assert all(sample.before is not None and sample.after is not None and sample.expected for sample in samples)



def test_a_rolled_back_run_shows_the_peak_it_reached_and_the_checkpoint_kept(runs) -> None:
    # After a roll-back the final model's figures are the restored checkpoint's: the cards
    # must also say what training reached, or a run that forgot reads as a green "+0.0%".
    from retain.report.content import cards
    from retain.report.sources import read_run

    run = read_run(runs["rollback"])
    summary = json.loads((runs["rollback"] / "summary.json").read_text())
    assert summary["restored_step"] is not None and summary["stopped_by"]["guard"] == "forgetting"
    peak = max(check["forgetting"] for check in run.checks)
    assert peak > 0.01 >= summary["forgetting_relative"]
    probe = next(card for card in cards(run) if card.title == "General probes: forgetting")
    assert f"(peak +{peak:.1%})" in probe.value and probe.tone == "warn"
    assert probe.lines[0].startswith(f"peak +{peak:.1%} at step ")
    assert f"the final model is the checkpoint of step {summary['restored_step']}" in probe.lines[0]
    health = next(card for card in cards(run) if card.title == "Generation health")
    assert health.lines[0] == f"smoke prompts: the final model's answers (the checkpoint of step {summary['restored_step']})"

"""The report in a real browser: headless Chromium opens it (DevTools protocol over a pipe),
and the page must render its sections, cards and plots with a clean console and no request
beyond the file itself. Screenshots go to ``.cache/report-screenshots/`` for people to look at."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from browser import find_chromium, open_report
from test_report import HOSTILE, copy_run, make_sweep, trained_runs

from retain.report import build_report

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_chromium() is None, reason="no Chromium binary on PATH (Debian: apt-get install chromium)"),
]

SCREENSHOTS = Path(__file__).resolve().parent.parent / ".cache" / "report-screenshots"

# Evaluated by the DevTools protocol in the loaded page (the page itself runs no script).
FACTS = """JSON.stringify({
  title: document.title,
  scripts: document.scripts.length,
  sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
  headings: Array.from(document.querySelectorAll('h2, h3')).map(h => h.textContent.trim()),
  cards: document.querySelectorAll('.card').length,
  images: Array.from(document.images).map(i => ({ok: i.complete && i.naturalWidth > 0, width: i.naturalWidth,
                                                 shown: i.getBoundingClientRect().width})),
  captions: Array.from(document.querySelectorAll('figcaption')).map(c => c.textContent),
  text: document.body.innerText,
})"""


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict[str, Path]:
    return trained_runs(request, tmp_path_factory)


def visit(html: Path, name: str) -> dict:
    """Opens the report, checks what every report must satisfy, returns the page's facts."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    seen = open_report(html, expression=FACTS, screenshot=SCREENSHOTS / f"{name}.png", width=1280, height=2000)
    assert seen.console == [], seen.console  # no errors or warnings, CSP violations included
    others = [url for url in seen.requests if url != html.resolve().as_uri() and not url.startswith("data:")]
    assert others == [], others  # nothing fetched: self-contained
    facts = json.loads(seen.value)
    assert facts["scripts"] == 0
    assert facts["images"] and all(image["ok"] and image["shown"] > 200 for image in facts["images"])
    png = seen.screenshot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000  # a rendered page, not a blank one
    return facts


def test_a_run_report_renders_its_sections_and_plots_in_chromium(runs, tmp_path) -> None:
    files = build_report([runs["aggressive"]], tmp_path / "run.html")
    facts = visit(files.html, "run")
    assert facts["sections"] == ["run-1"]
    assert facts["cards"] == 7
    for heading in ("Summary", "Plots", "Guard actions", "General probes before and after, per category",
                    "Data audit", "Pipeline doctor", "Sample answers before and after"):
        assert heading in facts["headings"], heading
    assert facts["captions"] == ["Training and validation loss", "General probe accuracy per category over steps",
                                 "Drift from the base over steps"]
    assert "not safe to ship" in facts["text"]


def test_a_sweep_and_side_by_side_runs_render_in_chromium(runs, tmp_path) -> None:
    sweep = make_sweep(runs, tmp_path / "sweep")
    files = build_report([runs["lora"], runs["small"], sweep], tmp_path / "all.html")
    facts = visit(files.html, "sweep-and-runs")
    assert facts["sections"] == ["comparison", "sweep-1", "run-1", "run-2"]
    assert "Runs side by side" in facts["headings"] and "Sweep: sweep" in facts["headings"]
    assert "Task accuracy against forgetting (Pareto front)" in facts["captions"]
    assert "Data-size curves" in facts["captions"]
    assert facts["cards"] == 3 * 7  # two runs and the sweep's trial in detail


def test_hostile_strings_render_as_text_in_chromium(runs, tmp_path) -> None:
    run_dir = copy_run(runs["lora"], tmp_path / "hostile")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["verdict"] = {"ship": False, "reasons": [HOSTILE]}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    for name in ("base_eval.json", "final_eval.json"):
        result = json.loads((run_dir / name).read_text())
        for item in result["probes"]["lab"]["generation"]["items"]:
            item["output"] = HOSTILE
        (run_dir / name).write_text(json.dumps(result))
    files = build_report([run_dir], tmp_path / "hostile.html")
    facts = visit(files.html, "hostile")
    # The payload is on the page as text (card, samples), and nothing ran: the console is clean
    # and the injected <img src=x> never became an image (all images are the plots).
    assert facts["text"].count(HOSTILE) >= 3
    assert len(facts["images"]) == len(facts["captions"])


def test_the_browser_client_reports_console_errors_and_requests(tmp_path) -> None:
    # The checks above could not fail if the client missed what a broken page does.
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="missing.png"><script>console.error("boom")</script></body></html>')
    seen = open_report(page, expression="document.images.length")
    assert seen.value == 1
    assert any("boom" in message for message in seen.console)
    assert any(url.endswith("missing.png") for url in seen.requests)


@pytest.fixture(autouse=True, scope="module")
def _clean_screenshots() -> None:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)


def test_a_rolled_back_run_shows_its_peak_forgetting_and_the_limit_in_chromium(runs, tmp_path) -> None:
    summary = json.loads((runs["rollback"] / "summary.json").read_text())
    peak = max(json.loads(line)["forgetting"] for line in (runs["rollback"] / "metrics.jsonl").read_text().splitlines()
               if json.loads(line).get("event") == "check")
    files = build_report([runs["rollback"]], tmp_path / "rollback.html")
    text = visit(files.html, "rollback")["text"]
    assert f"(peak +{peak:.1%})" in text and "over the 1% limit" in text and "limit 1%" in text
    assert f"the final model is the checkpoint of step {summary['restored_step']}" in text

"""The model card retain writes into a saved model folder (retain.training.card), on a
made-up run; tests/test_train.py checks the cards of real runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from retain.config import RetainConfig
from retain.summary import RunSummary, Verdict
from retain.training.card import hub_id, model_card, write_model_card

HASHES = {"train": "a" * 64, "eval": "b" * 64, "probes.suites.0": "c" * 64}


def _config(tmp_path: Path, **sections) -> RetainConfig:
    for name in ("train.jsonl", "test.jsonl", "probes.jsonl"):
        (tmp_path / name).write_text("{}\n")
    values = {"model": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
              "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "test.jsonl")},
              "probes": {"suites": [str(tmp_path / "probes.jsonl")]},
              "method": {"use": ["lora", "replay"]}, "output": {"name": "ci-run"}}
    return RetainConfig.model_validate(values | sections)


def _forgetting(categories: dict[str, tuple[float, float]]) -> dict:
    """A suite's forgetting report as summary.json holds it: category -> (before, after)."""
    figures = {name: {"items": 10, "accuracy_before": before, "accuracy_after": after,
                      "absolute_drop": before - after, "relative_drop": (before - after) / before}
               for name, (before, after) in categories.items()}
    return {"general": {"suite": "general", "version": "3", "categories": figures}}


def _summary(**changes) -> RunSummary:
    values = {
        "steps": 40, "checks": 5, "method": ("lora", "replay"), "base_probe_accuracy": 0.6,
        "final_probe_accuracy": 0.5, "forgetting_relative": 1 / 6,
        "forgetting": _forgetting({"arithmetic": (0.8, 0.4), "science": (0.4, 0.6), "overall": (0.6, 0.5)}),
        "task": {"eval": {"accuracy": 0.75}}, "task_base": {"eval": 0.5},
        "verdict": Verdict(ship=False, reasons=("general probe accuracy fell 16.7% relative (limit 3%)",)),
    }
    return RunSummary(**(values | changes))


def test_the_card_tells_base_data_methods_results_forgetting_and_verdict(tmp_path) -> None:
    config = _config(tmp_path)
    text = model_card(config, _summary(), HASHES, holds="adapters")
    card = ModelCard(text)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "peft" and card.data.tags == ["retain", "lora", "replay"]
    body = card.text
    assert body.startswith("\n# ci-run: lora + replay on HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "## Verdict: not safe to ship\n\n- general probe accuracy fell 16.7% relative (limit 3%)" in body
    assert f"| train | {tmp_path / 'train.jsonl'} | {'a' * 64} |" in body
    assert f"| probes.suites.0 | {tmp_path / 'probes.jsonl'} | {'c' * 64} |" in body
    assert "- lora: r=16, alpha=32.0" in body and "- replay: " in body
    assert "| task accuracy (eval) | 50.0% | 75.0% |" in body
    assert "| general probe accuracy (by generation) | 60.0% | 50.0% |" in body
    # Forgetting per category: relative, and the drop in points beside it, both labelled.
    assert "| category | items | base | this model | forgetting, relative | drop, points |" in body
    assert "| arithmetic | 10 | 80.0% | 40.0% | +50.0% | +40.0 |" in body
    assert "| science | 10 | 40.0% | 60.0% | -50.0% | -20.0 |" in body
    assert "| **overall** | 10 | 60.0% | 50.0% | +16.7% | +10.0 |" in body
    assert "general version 3 (by generation)" in body
    assert "No guard acted over the run's 5 checks." in body and "Checkpoint restored: none." in body
    assert "Rolled back" not in body and "[More Information Needed]" not in body


def test_a_rolled_back_run_says_so_before_any_figure(tmp_path) -> None:
    event = {"guard": "forgetting", "step": 20, "action": "restore_best",
             "message": "general probe accuracy 40.0%, +33.3% relative drop from the base (limit 3%)"}
    rolled_back = Verdict(ship=False, reasons=("rolled back to the starting weights",))
    summary = _summary(status="stopped", stopped_by=event, restored_step=0, guard_events=(event,),
                       final_probe_accuracy=0.6, verdict=rolled_back)
    body = ModelCard(model_card(_config(tmp_path), summary, HASHES, holds="adapters")).text
    notice = body.index("> **Rolled back.** The forgetting guard stopped this run at step 20")
    assert notice < body.index("## Results") and "computes what the base model computes" in body
    assert "| 20 | forgetting | restore_best | general probe accuracy 40.0%, +33.3% relative drop" in body
    assert "Checkpoint restored: the starting weights (rolled back)." in body
    restored = _summary(status="stopped", stopped_by=event, restored_step=12, guard_events=(event,))
    body = ModelCard(model_card(_config(tmp_path), restored, HASHES, holds="full")).text
    assert "these are the weights of the checkpoint of step 12, restored, not those of step 20" in body
    assert "Checkpoint restored: step 12." in body and "The full fine-tuned weights of" in body


def test_text_from_data_cannot_break_the_card(tmp_path) -> None:
    summary = _summary(forgetting=_forgetting({"a|b\nc": (0.5, 0.25), "overall": (0.5, 0.25)}),
                       verdict=Verdict(ship=False, reasons=("<script>x</script>",)))
    body = model_card(_config(tmp_path), summary, HASHES, holds="merged")
    row = next(line for line in body.splitlines() if line.startswith("| a"))
    assert row == "| a\\|b c | 10 | 50.0% | 25.0% | +50.0% | +25.0 |"
    assert "<script>" not in body and "&lt;script&gt;" in body


def test_guards_off_and_a_local_base_are_said_plainly(tmp_path) -> None:
    config = _config(tmp_path, model={"name_or_path": str(tmp_path)}, guards={"enabled": False})
    card = ModelCard(model_card(config, _summary(), {}, holds="full"))
    assert card.data.base_model is None and card.data.library_name == "transformers"
    assert "OFF (guards.enabled: false)" in card.text and "The guards were off" in card.text
    assert "| - | the run recorded no data files | - |" in card.text


@pytest.mark.parametrize(("name", "hub"), [("HuggingFaceTB/SmolLM2-135M", True), ("gpt2", True), ("lab", False),
                                           ("./models/x", False), ("a/b/c", False)])
def test_only_a_hub_id_becomes_base_model_metadata(name, hub) -> None:
    assert (hub_id(name) == name) is hub


def test_the_card_replaces_whatever_the_folder_held(tmp_path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "README.md").write_text("---\nlibrary_name: peft\n---\n# Model Card for Model ID\n")
    path = write_model_card(folder, _config(tmp_path), _summary(), HASHES)
    card = ModelCard.load(path)
    assert card.data.library_name == "peft" and "Model Card for Model ID" not in card.text
    assert "LoRA adapters (peft) for the base model" in card.text

"""The model card (``README.md``) of every model folder ``retain train`` saves.

peft writes a blank template into an adapter folder; :func:`retain.checkpoints.save_model`
drops it, and once the run is judged :func:`write_model_card` writes retain's own card into
``model/`` and ``merged/``: the base model, the data files with their SHA-256, the methods
and key settings, task accuracy and forgetting per category (base -> this model), the
guards that acted, the checkpoint restored and the verdict. The metadata header
(``base_model``, ``library_name``, ``tags``) is huggingface_hub's ``ModelCardData``, so
the Hub reads the card as its own.

The card tells what the run did to these weights: a run a guard rolled back says so
before any figure, and the figures are those of the weights in the folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

import retain
from retain.checkpoints import MODEL_CARD
from retain.config import RetainConfig
from retain.io import atomic_write_text
from retain.markdown import cell
from retain.sources import ADAPTER_CONFIG, model_family
from retain.summary import OVERALL, RunSummary
from retain.training.finish import percent, signed

PROSE = 2000  # the longest text from a run or its data a card quotes (a verdict's reason can be long)

Holds = Literal["adapters", "full", "merged"]

_SHIP = ("retain found no reason against it: forgetting within the limit, smoke answers sound, no stop by the "
         "loss or smoke guard, and held-out task answers (where the run had some) better than the base model's.")
_DEFINITIONS = ("Forgetting, relative: the drop in probe accuracy as a share of the base model's (the forgetting "
                "guard's measure; limit {limit:.1%}). Drop, points: base minus this model, in accuracy points. "
                "Positive means forgotten.")


def write_model_card(folder: Path, config: RetainConfig, summary: RunSummary, data_hashes: Mapping[str, str],
                     *, merged: bool = False) -> Path:
    """Writes the model card of the model saved in ``folder`` (atomically); returns its path.

    Args:
        folder: A saved model: adapters (``adapter_config.json``) or full weights.
        config: The run's config.
        summary: The run's summary, verdict included.
        data_hashes: The SHA-256 of each file the run read, by field, as ``meta.json``
            records them (:func:`retain.training.resume.data_hashes`).
        merged: ``folder`` holds the adapters merged into the base weights (``--merge``).

    Raises:
        OSError: The card cannot be written.
    """
    holds: Holds = "merged" if merged else "adapters" if (folder / ADAPTER_CONFIG).is_file() else "full"
    path = folder / MODEL_CARD
    atomic_write_text(path, model_card(config, summary, data_hashes, holds=holds))
    return path



def model_card(config: RetainConfig, summary: RunSummary, data_hashes: Mapping[str, str], *, holds: Holds) -> str:
    """Returns the model card: a metadata header, then the verdict, what the folder holds,
    the training, the results and the guards, as Markdown."""
    metadata = ModelCardData(base_model=hub_id(config.model.name_or_path),
                             library_name="peft" if holds == "adapters" else "transformers",
                             tags=["retain", *summary.method], pipeline_tag="text-generation")
    name = config.output.name or "retain run"
    written = (f"Written by retain {retain.__version__} when `retain train` finished. Every figure comes from "
               "the run directory's `summary.json` (`final_eval.json`, `base_eval.json` and `metrics.jsonl` "
               "hold the rest).")
    sections = [
        f"# {_text(name)}: {' + '.join(summary.method) or 'fine-tuned'} on {_text(config.model.name_or_path)}",
        written, _verdict(summary), _contents(config, holds), _training(config, summary, data_hashes),
        _results(config, summary), _guards(config, summary),
    ]
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"))


def hub_id(name: str) -> str | None:
    """Returns ``name`` when it is a Hugging Face Hub id (what ``base_model`` metadata must
    be), None for a local folder or a name registered with retain (``lab``)."""
    if Path(name).exists() or model_family(name) is not None:
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _verdict(summary: RunSummary) -> str:
    """Returns the verdict section: the verdict, what a guard's stop did to the weights, the reasons."""
    verdict = summary.verdict
    if verdict is None:
        heading, body = "## Verdict: none", ["The run was not judged."]
    elif verdict.ship:
        heading, body = "## Verdict: safe to ship", [_SHIP]
    else:
        heading, body = "## Verdict: not safe to ship", [f"- {_text(reason)}" for reason in verdict.reasons]
    notice = _restore_notice(summary)
    return "\n\n".join([heading, *([notice] if notice else []), "\n".join(body)])


def _restore_notice(summary: RunSummary) -> str | None:
    """Returns what a guard's stop did to the weights in the folder, or None if none stopped the run."""
    stopped = summary.stopped_by
    if stopped is None:
        return None
    guard, step = _text(stopped.get("guard", "a")), _text(stopped.get("step", "?"))
    restored = summary.restored_step
    if restored == 0:
        return (f"> **Rolled back.** The {guard} guard stopped this run at step {step} and rolled it back to its "
                "starting weights: this model computes what the base model computes. It learned nothing that "
                "could be kept within the forgetting limit.")
    if restored is not None:
        return (f"> **Restored.** The {guard} guard stopped this run at step {step}; these are the weights of "
                f"the checkpoint of step {restored}, restored, not those of step {step}.")
    return (f"> **Stopped.** The {guard} guard stopped this run at step {step} and no checkpoint could be "
            f"restored: these are the weights of step {step}.")


def _contents(config: RetainConfig, holds: Holds) -> str:
    base = _text(config.model.name_or_path)
    what = {
        "adapters": f"LoRA adapters (peft) for the base model {base}, and the tokenizer. Load them with "
                    "`peft.AutoPeftModelForCausalLM.from_pretrained(FOLDER)`, or measure them with "
                    "`retain eval FOLDER` (forgetting against the same weights with the adapters off).",
        "full": f"The full fine-tuned weights of {base}, and the tokenizer. Load them with "
                "`transformers.AutoModelForCausalLM.from_pretrained(FOLDER)`; measure forgetting with "
                f"`retain eval FOLDER --base MODEL` (MODEL: {base}).",
        "merged": f"The run's LoRA adapters merged into the weights of {base} (`--merge`): a full model, the same "
                  "function as the adapters beside it in `model/`, and the tokenizer.",
    }[holds]
    return (f"## What this folder holds\n\n{what} The tokenizer carries the chat template training used "
            "(none for raw prompts): prompt the model as it was trained.")


def _training(config: RetainConfig, summary: RunSummary, data_hashes: Mapping[str, str]) -> str:
    """Returns the training section: base model, methods and key settings, the data files and their SHA-256."""
    train, guards = config.train, config.guards
    length = f"{train.max_steps} steps at most" if train.max_steps else f"{train.epochs:g} epochs"
    status = ("completed" if summary.stopped_by is None else
              f"stopped by the {_text(summary.stopped_by.get('guard', 'a'))} guard")
    revision = f" (revision {_text(config.model.revision)})" if config.model.revision else ""
    watched = (f"on; forgetting limit {guards.forgetting.threshold:.1%} relative by {guards.forgetting.method} "
               f"({guards.forgetting.action}, patience {guards.forgetting.patience})" if guards.enabled
               else "OFF (guards.enabled: false): nothing watched this run")
    optimisation = (f"lr {train.lr:g}, {length}, batch size {train.batch_size} x {train.grad_accum} accumulated, "
                    f"{train.lr_scheduler} schedule, warmup {train.warmup_ratio:g}, weight decay "
                    f"{train.weight_decay:g}, precision {train.precision}, seed {train.seed}, loss on {train.loss_on}")
    lines = [
        "## Training", "",
        f"- base model: {_text(config.model.name_or_path)}{revision}",
        f"- methods: {', '.join(_text(name) for name in summary.method) or 'none recorded'}",
        f"- steps: {summary.steps:,} ({status}), {summary.checks:,} guard checks",
        f"- train: {optimisation}",
    ]
    methods = config.method.model_dump(mode="json")
    for name in summary.method:
        settings = methods.get(name)
        if isinstance(settings, dict) and settings:
            lines.append(f"- {_text(name)}: " + _text(", ".join(f"{key}={value}" for key, value in settings.items())))
    lines += [f"- guards: {watched}", "", "### Data", "", "| field | file | SHA-256 |", "| --- | --- | --- |"]
    settings = config.model_dump(mode="json")
    for field, digest in data_hashes.items():
        lines.append(f"| {cell(field)} | {_text(_setting(settings, field))} | {cell(digest)} |")
    if not data_hashes:
        lines.append("| - | the run recorded no data files | - |")
    return "\n".join(lines)


def _setting(settings: dict[str, Any], field: str) -> Any:
    """Returns the value of a dotted field as ``meta.json`` names it (``train`` is
    ``data.train``, ``probes.suites.0`` the first suite); None if the config has no such field."""
    value: Any = settings["data"] if "." not in field else settings
    for key in field.split("."):
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict):
            value = value.get(key)
        else:
            return None
    return value


def _results(config: RetainConfig, summary: RunSummary) -> str:
    """Returns the results section: probe and task accuracy, forgetting per category, drift, smoke."""
    method = config.guards.forgetting.method
    probes = (f"| general probe accuracy (by {method}) | {percent(summary.base_probe_accuracy)} | "
              f"{percent(summary.final_probe_accuracy)} |")
    lines = ["## Results", "", "| measure | base | this model |", "| --- | ---: | ---: |", probes]
    for split in summary.task:
        lines.append(f"| task accuracy ({cell(split)}) | {percent(summary.base_task_accuracy(split))} | "
                     f"{percent(summary.task_accuracy(split))} |")
    lines += ["", _DEFINITIONS.format(limit=config.guards.forgetting.threshold)]
    for suite, report in summary.forgetting.items():
        title = f"### Forgetting per category: {cell(suite)} version {cell(report.get('version', '?'))} (by {method})"
        lines += ["", title, "", "| category | items | base | this model | forgetting, relative | drop, points |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for category, figures in (report.get("categories") or {}).items():
            label = f"**{category}**" if category == OVERALL else cell(category)
            lines.append(f"| {label} | {cell(figures.get('items', '?'))} | {percent(figures.get('accuracy_before'))} "
                         f"| {percent(figures.get('accuracy_after'))} | {signed(figures.get('relative_drop'))} | "
                         f"{_points(figures.get('absolute_drop'))} |")
    if not summary.forgetting:
        lines += ["", f"Forgetting was not measured: no probe suite was scored by {method}."]
    drift, smoke = summary.drift or {}, summary.smoke or {}
    if drift.get("kl") is not None or drift.get("perplexity") is not None:
        kl, perplexity = _number(drift.get("kl"), ".4f"), _number(drift.get("perplexity"), ".2f")
        lines += ["", f"Drift on the reference text: KL(base || model) {kl} nats per token, perplexity {perplexity}."]
    if smoke.get("failures") is not None:
        lines += ["", f"Smoke answers broken (empty, blank, an echo or a loop): {percent(smoke['failures'])}."]
    return "\n".join(lines)


def _guards(config: RetainConfig, summary: RunSummary) -> str:
    """Returns the guards section: every decision that triggered, and the checkpoint restored."""
    lines = ["## Guards", ""]
    if not config.guards.enabled:
        lines.append("The guards were off: none watched this run.")
    elif summary.guard_events:
        lines += ["| step | guard | action | what it saw |", "| ---: | --- | --- | --- |"]
        lines += [f"| {cell(event.get('step', '?'))} | {cell(event.get('guard'))} | {cell(event.get('action'))} "
                  f"| {_text(event.get('message', ''))} |" for event in summary.guard_events]
    else:
        lines.append(f"No guard acted over the run's {summary.checks:,} checks.")
    restored = summary.restored_step
    kept = ("none" if restored is None else "the starting weights (rolled back)" if restored == 0 else
            f"step {restored}")
    return "\n".join([*lines, "", f"Checkpoint restored: {kept}."])


def _text(value: Any) -> str:
    """Returns text from the run or its data (a path, a reason, a guard's message) safe in
    Markdown, a table cell included."""
    return cell(value, limit=PROSE)


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f}"


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)

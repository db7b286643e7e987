"""After training: restore the best checkpoint, save the model, write the verdict.

The last steps of ``retain train`` (:mod:`retain.training.run`): the best checkpoint (or
the starting weights) loaded back when a guard asked for ``restore_best``, the final model
saved (a complete folder or none), and ``summary.json``'s verdict with its reasons.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from retain.checkpoints import checkpoint_problem, save_model, start_folder
from retain.config import RetainConfig
from retain.config.guards import GuardsConfig
from retain.config.methods import method_names
from retain.errors import RetainError
from retain.evaluation.engine import forgetting, forgetting_by_rehearsal
from retain.evaluation.task import no_better_than_majority
from retain.guards.keep import (
    ROLLED_BACK,
    describe_restore,
    restore_target,
    stop_reason,
)
from retain.guards.state import GuardState
from retain.rundir import RunDir
from retain.summary import RunSummary, Verdict, percent, signed  # noqa: F401 - training/card.py reads them from here

logger = logging.getLogger("retain.train")


def restore_if_asked(model: PreTrainedModel, state: GuardState, run: RunDir, config: GuardsConfig,
                      echo: Callable[[str], None]) -> int | None:
    """Loads the best checkpoint (or the starting weights) back when a guard stopped the
    run (:func:`~retain.guards.keep.restore_target`); returns its step, or None."""
    best, problem = restore_target(state, config)
    if best is None:
        if problem:
            echo(problem)
        return None
    folder = start_folder(run) if best.step == 0 else run.checkpoints_dir / f"checkpoint-{best.step}"
    if not folder.is_dir():
        problem = "missing"
    else:  # the start folder is complete or absent (save_model); checkpoints carry a seal
        problem = None if best.step == 0 else checkpoint_problem(folder)
        problem = problem and f"incomplete ({problem})"
    if problem:
        echo(f"restore_best: the folder of step {best.step} ({folder}) is {problem}; the model is left "
             f"as it was at step {state.stopped_by.step}")
        return None
    load_weights(model, folder)
    echo(describe_restore(best, config))
    return best.step


def format_collapse(reports: dict[str, dict[str, Any]], method: str, threshold: float) -> str:
    """Names a format collapse: answers by generation dropped past ``threshold`` on a suite
    whose log-likelihood ranking held within it (the model still ranks the right answer
    first, but no longer says it as asked: one-word, off-format or empty answers). Returns
    the clause to add to the forgetting reason, or ``""``."""
    if method != "generation":
        return ""
    held = []
    for suite, methods in reports.items():
        generation, loglik = methods.get("generation"), methods.get("loglik")
        if generation is None or loglik is None:
            continue
        by_generation, by_loglik = generation.overall.relative_drop, loglik.overall.relative_drop
        if by_generation is not None and by_loglik is not None and by_generation > threshold >= by_loglik:
            held.append(f"{suite}: {by_generation:.1%} by generation, {by_loglik:+.1%} by log-likelihood")
    if not held:
        return ""
    return ("; a format collapse: log-likelihood ranking held while the answers the model gives dropped ("
            + "; ".join(held) + "): it still ranks the right answers first but no longer says them as asked "
            "(read the answers in the report; rehearse general data, or lower train.lr)")


def load_weights(model: PreTrainedModel, folder: Path) -> None:
    """Loads the trained weights saved in a checkpoint ``folder`` into ``model``."""
    from safetensors.torch import load_file

    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        from transformers.modeling_utils import load_sharded_checkpoint

        load_sharded_checkpoint(model, str(folder))
        return
    _, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    if unexpected:
        raise RetainError(f"checkpoint {folder} does not match the model: unexpected {unexpected[:3]}")


def save_merged(model: PreTrainedModel, tokenizer, target: Path, config: RetainConfig) -> None:
    if not hasattr(model, "merge_and_unload"):  # full fine-tuning, or adapters fapm already merged
        logger.warning("--merge: the model has no adapters left to merge; model/ is the full model")
        return
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    save_model(merged, target, tokenizer)


def starting_evaluation(base: dict[str, Any], name: str) -> dict[str, Any]:
    """Returns the final evaluation of a run rolled back to its starting weights: the base
    model's, which those weights compute (the check of step 0 reads the base's figures for
    the same reason: :meth:`retain.guards.callback.GuardCallback.on_train_begin`). Measuring
    the same weights again would cost as long as the base measurement and give the same
    answers; the drift to the base is zero. ``reused`` names where the figures come from."""
    final = copy.deepcopy(base)
    final.update(model=name, seconds=0.0, reused="base_eval.json: rolled back to the starting weights")
    if final.get("drift"):
        final["drift"]["kl"] = 0.0
    return final


def summary_of(config: RetainConfig, state: GuardState, base: dict[str, Any], final: dict[str, Any], *,
             restored: int | None, steps: int, train_seconds: float, tokens: float, seconds: float,
             train_output: dict[str, Any], rehearsal: dict[str, Any] | None = None) -> RunSummary:
    """Returns the run's summary (``summary.json``): the verdict with its reasons, and the
    numbers behind it.

    ``rehearsal`` is what training blended in: ``{"rows": {source: count}, "items":
    {suite: [ids]}}``, the probe items a blended row stated; forgetting is also reported
    on those items and on the rest apart (``forgetting_by_rehearsal``).
    """
    method = config.guards.forgetting.method
    rehearsal = rehearsal or {"rows": {}, "items": {}}
    reports = forgetting(base, final)
    watched = {suite: methods[method] for suite, methods in reports.items() if method in methods}
    drops = [report.overall.relative_drop for report in watched.values()
             if report.overall.relative_drop is not None]
    drop = max(drops) if drops else None
    reasons = []
    if drop is not None and drop > config.guards.forgetting.threshold:
        reasons.append(f"general probe accuracy fell {drop:.1%} relative (limit "
                       f"{config.guards.forgetting.threshold:.0%})"
                       + format_collapse(reports, method, config.guards.forgetting.threshold))
    smoke = final.get("smoke")
    if smoke is not None and smoke["failures"] >= config.guards.smoke.fail_share:
        reasons.append(f"{smoke['failures']:.0%} of smoke answers are broken")
    stopped = stop_reason(state)
    if stopped:
        reasons.append(stopped)
    reasons += task_reasons(base.get("task") or {}, final.get("task") or {}, config.guards.smoke.fail_share)
    if restored == 0:
        reasons.append(ROLLED_BACK)
    return RunSummary(
        status="stopped" if state.stopped_by else "completed",
        stopped_by=state.stopped_by.to_dict() if state.stopped_by else None,
        restored_step=restored,
        best_step=state.best_step,
        steps=steps,
        method=tuple(name for name in method_names() if name in {config.method.base, *config.method.use}),
        seconds=round(seconds, 1),
        train_seconds=round(train_seconds, 1),
        train_tokens_per_second=round(tokens / train_seconds, 1) if train_seconds else None,
        base_probe_accuracy=overall_accuracy(base, method),
        final_probe_accuracy=overall_accuracy(final, method),
        forgetting={suite: report.to_dict() for suite, report in watched.items()},
        forgetting_relative=drop,
        rehearsal=rehearsal,
        forgetting_by_rehearsal={
            suite: {group: report.to_dict() for group, report in groups.items()}
            for suite, groups in forgetting_by_rehearsal(base, final, method, rehearsal["items"]).items()
        },
        task=dict(final.get("task") or {}),
        task_base={name: score.get("accuracy") for name, score in (base.get("task") or {}).items()},
        drift=final.get("drift"),
        smoke=smoke,
        guard_events=tuple(decision.to_dict() for decision in state.decisions if decision.triggered),
        checks=len(state.checks),
        trainer=train_output,
        verdict=Verdict(ship=not reasons, reasons=tuple(reasons)),
    )


def task_reasons(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
                 fail_share: float) -> list[str]:
    """Returns why the fine-tuned task answers forbid shipping: the held-out accuracy did not
    rise above the base model's or cannot be told apart from always giving the commonest
    label (:func:`~retain.evaluation.task.no_better_than_majority`), most answers commit to
    no label, or too many are broken.

    A model that answers nothing can still score the majority label's share on some
    metrics; these reasons keep the verdict from calling such a model safe.

    Args:
        before: The base model's task scores by split (``base_eval.json``'s ``task``).
        after: The final model's task scores by split.
        fail_share: The broken share that fails (``guards.smoke.fail_share``).
    """
    reasons = []
    held_out, base = after.get("eval"), before.get("eval")
    if held_out and base and held_out["accuracy"] <= base["accuracy"]:
        reasons.append(f"task accuracy on the held-out set did not improve on the base model "
                       f"({base['accuracy']:.1%} -> {held_out['accuracy']:.1%})")
    elif held_out and (majority := held_out.get("majority")) and no_better_than_majority(
            held_out["accuracy"], majority["share"], held_out["n"]):
        reasons.append(f"task accuracy on the held-out set ({held_out['accuracy']:.1%}) is no better than "
                       f"always answering '{majority['label']}' ({majority['share']:.1%}): the task was not "
                       "learned")
    for split, score in after.items():
        if (score.get("unparsed") or 0.0) >= 0.5:
            reasons.append(f"{score['unparsed']:.0%} of the task answers ({split}) commit to no label")
        failures = (score.get("health") or {}).get("failures") or 0.0
        if failures >= fail_share:
            reasons.append(f"{failures:.0%} of the task answers ({split}) are broken (empty, blank, "
                           "an echo or a loop)")
    return reasons


def overall_accuracy(result: dict[str, Any], method: str) -> float | None:
    scores = [methods[method] for methods in result.get("probes", {}).values() if method in methods]
    total = sum(len(score["items"]) for score in scores)
    return sum(sum(item["correct"] for item in score["items"]) for score in scores) / total if total else None

"""The guards' judgements: given what a check measured, what each guard decides.

Pure functions over numbers, so every rule is testable without training anything; the
trainer callback (:mod:`retain.guards.callback`) measures, calls these, logs every
decision with its numbers, and acts on them.

Which checkpoint is best (what ``restore_best`` restores): among the checks whose
forgetting is within ``guards.forgetting.threshold``, the one with the highest validation
task accuracy; ties, or no task accuracy, go to the lowest validation loss, then to the
least forgetting, then to the earlier step. A check with NaN or infinite losses, or one
that failed the smoke test, is never best while a sound one exists. A check that forgot more than the threshold
is never best while one within it exists; if none is within it, the least forgetting
wins, and the summary says the limit was not met.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from retain.config.guards import GuardsConfig

ACTIONS_THAT_STOP = ("stop", "restore_best")
LOSS_WINDOW = 10  # steps whose mean loss the high and low loss limits judge


@dataclass
class Check:
    """What one check during training measured.

    Attributes:
        step: Optimizer steps done.
        epoch: Epochs done (fractional).
        probe_accuracy: Overall accuracy on the probe suites, by the watched method.
        categories: Accuracy per ``suite/category``.
        forgetting: Relative drop of ``probe_accuracy`` from the base model's.
        task_accuracy: Accuracy on the validation examples, by generation.
        val_loss: Mean loss per supervised token on the validation examples.
        train_loss: Mean training loss logged since the previous check.
        kl: Mean KL(base || model) per token on the reference text.
        perplexity_ratio: Reference perplexity over the base model's.
        smoke_fail_share: Share of smoke prompts whose answers are broken.
        smoke_failures: Counts of each failure kind among the smoke answers.
        smoke_examples: A few ``(prompt, answer)`` pairs from the smoke test.
    """

    step: int
    epoch: float
    probe_accuracy: float | None = None
    categories: dict[str, float] = field(default_factory=dict)
    forgetting: float | None = None
    task_accuracy: float | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    kl: float | None = None
    perplexity_ratio: float | None = None
    smoke_fail_share: float | None = None
    smoke_failures: dict[str, int] = field(default_factory=dict)
    smoke_examples: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Check:
        """Returns the check a :meth:`to_dict` record holds (a ``metrics.jsonl`` line or a
        saved guard state); keys that are not fields (``event``, ``time``) are ignored."""
        names = {item.name for item in fields(cls)}
        values = {key: value for key, value in record.items() if key in names}
        values["smoke_examples"] = [tuple(pair) for pair in values.get("smoke_examples", [])]
        return cls(**values)


@dataclass(frozen=True)
class Decision:
    """One guard's judgement at one step.

    Attributes:
        guard: ``forgetting``, ``smoke``, ``drift``, ``overfitting`` or ``loss``.
        step: The optimizer step.
        triggered: Whether the guard's condition held.
        action: What is done: ``none``, ``warn``, ``stop`` or ``restore_best``.
        value: The number judged.
        threshold: The limit it was judged against.
        message: One line saying what was seen and, when triggered, the likely cause.
    """

    guard: str
    step: int
    triggered: bool
    action: str
    value: float | None
    threshold: float | None
    message: str

    @property
    def stops(self) -> bool:
        """True when this decision ends training."""
        return self.triggered and self.action in ACTIONS_THAT_STOP

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def relative_drop(base: float, now: float) -> float:
    """Returns how much ``now`` fell from ``base``, as a share of ``base`` (0 if base is 0)."""
    return (base - now) / base if base > 0 else 0.0


def judge_forgetting(check: Check, config: GuardsConfig, earlier: Sequence[Check] = (),
                     last: bool = False) -> Decision | None:
    """Triggers when probe accuracy fell more than the threshold below the base model's and
    has set no new low for ``guards.forgetting.patience`` checks, or at the ``last`` check of
    the run, which has no later one to recover at.

    This is early stopping's patience (as in Keras' and Lightning's ``EarlyStopping``),
    counted within the current stretch of checks over the threshold: the stretch's first
    check is its first low, a check that forgets less than every earlier one of the stretch
    is a new low and resets the count, any other check adds one. A falling dip (the
    stability gap of rehearsal) is waited out however long it lasts; a drop that holds or
    grows acts after ``patience`` checks.
    """
    settings = config.forgetting
    if check.forgetting is None:
        return None
    threshold = settings.threshold
    over = check.forgetting > threshold
    stretch: list[float] = []
    if over:
        measured = [c for c in earlier if c.forgetting is not None and c.step < check.step]
        for previous in reversed(measured):
            if previous.forgetting <= threshold:
                break
            stretch.insert(0, previous.forgetting)
        stretch.append(check.forgetting)
    stalled, low = 0, float("inf")
    for value in stretch:
        stalled, low = (0, value) if value < low else (stalled + 1, low)
    triggered = over and (stalled >= settings.patience or last)
    worst = sorted(check.categories.items(), key=lambda item: item[1])[:2]
    message = (f"general probe accuracy {check.probe_accuracy:.1%}, {check.forgetting:+.1%} "
               f"relative drop from the base (limit {settings.threshold:.0%})")
    if over and settings.patience > 0:
        message += (f", over the limit at {len(stretch)} check(s) in a row, {stalled} without a "
                    f"new low (patience {settings.patience}")
        message += ", the last check)" if last else ")"
    if triggered:
        message += f"; weakest: {', '.join(f'{name} {acc:.0%}' for name, acc in worst)}"
    return Decision(
        guard="forgetting", step=check.step, triggered=triggered,
        action=settings.action if triggered else "none",
        value=check.forgetting, threshold=settings.threshold, message=message,
    )


def judge_smoke(check: Check, base_fail_share: float, config: GuardsConfig,
                pipeline_checked: bool = False) -> Decision | None:
    """Triggers when too many smoke answers are broken, and more than the base model's were.

    ``pipeline_checked``: the doctor found the training labels right (no blocker), so the
    cause named is in the training, not in labels or the collator (:func:`smoke_cause`)."""
    settings = config.smoke
    share = check.smoke_fail_share
    if share is None:
        return None
    triggered = share >= settings.fail_share and share > base_fail_share
    message = (f"{share:.0%} of smoke answers broken (base {base_fail_share:.0%}, limit "
               f"{settings.fail_share:.0%})")
    if triggered:
        message += f": {smoke_cause(check.smoke_failures, pipeline_checked)}"
        if check.smoke_examples:
            prompt, answer = check.smoke_examples[0]
            message += f"; e.g. {_cut(prompt, tail=True)!r} -> {_cut(answer)!r}"
    return Decision(
        guard="smoke", step=check.step, triggered=triggered,
        action=settings.action if triggered else "none",
        value=share, threshold=settings.fail_share, message=message,
    )


# What broken smoke answers mean when the doctor has seen the training batches and found
# them right (only the answer trained, its EOS kept): the labels are not the cause.
_TRAINING_CAUSES = {
    "empty": "the model emits EOS at once (zero new tokens). The doctor found the labels right, so "
    "the training made it so: a learning rate so high that every answer collapsed to the shortest "
    "one, or many empty or one-word answers in the data; lower train.lr or add rehearsal (replay)",
    "echo": "the model repeats the prompt, or answers with a few of its words. The doctor found "
    "that only the answer is trained, so the training made it so: a learning rate too high for "
    "this data, or answers so short and alike that the model unlearned answering in sentences; "
    "lower train.lr or add rehearsal (replay)",
    "loop": "the model loops. The doctor found the EOS trained, so the training made it so: a "
    "learning rate too high; lower train.lr",
    "never_stops": "the model no longer ends its answers where the base model did. The doctor found "
    "the EOS trained, so the training made it so: a learning rate too high, or answers much longer "
    "than the base model's; lower train.lr",
}


def smoke_cause(failures: dict[str, int], pipeline_checked: bool = False) -> str:
    """Returns the likely cause of broken smoke answers, from the commonest failure kind;
    with ``pipeline_checked`` (the doctor found the labels right) a cause in the training."""
    if not failures:
        return "answers broken"
    kind = max(failures, key=lambda name: failures[name])
    if pipeline_checked and kind in _TRAINING_CAUSES:
        return _TRAINING_CAUSES[kind]
    return {
        "empty": "the model emits EOS at once (zero new tokens). Likely causes: labels that "
        "teach an immediate EOS (a prompt ending with its own EOS, empty answers), or a "
        "learning rate so high that every answer collapsed to the shortest one",
        "whitespace_only": "the model answers with whitespace only: check that answers survive "
        "formatting and truncation",
        "echo": "the model repeats the prompt: the prompt is probably trained on as if it were "
        "the answer (train.loss_on, or a collator that rebuilds labels)",
        "loop": "the model loops: the EOS is probably masked (pad = EOS with a collator that "
        "masks pad labels), or the learning rate is too high",
        "never_stops": "the model no longer ends its answers where the base model did. Likely "
        "causes: the EOS is masked (pad = EOS with a collator that masks pad labels), or a "
        "loss on the whole prompt drowns the answer and its end (train.loss_on: all)",
    }.get(kind, f"answers broken ({kind})")


def judge_drift(check: Check, config: GuardsConfig) -> Decision | None:
    """Triggers when KL to the base, or the perplexity ratio, passes its limit (if set)."""
    settings = config.drift
    limits = [(check.kl, settings.max_kl, "KL to base"),
              (check.perplexity_ratio, settings.max_perplexity_ratio, "perplexity ratio")]
    measured = [(value, limit, name) for value, limit, name in limits if value is not None]
    if not measured:
        return None
    over = [(value, limit, name) for value, limit, name in measured
            if limit is not None and value > limit]
    value, limit, _ = over[0] if over else measured[0]
    parts = ", ".join(f"{name} {value:.3f}" + (f" (limit {limit:g})" if limit else "")
                      for value, limit, name in measured)
    return Decision(
        guard="drift", step=check.step, triggered=bool(over),
        action=settings.action if over else "none", value=value, threshold=limit,
        message=f"drift on the reference text: {parts}",
    )


def judge_overfitting(checks: list[Check], config: GuardsConfig) -> Decision | None:
    """Triggers when validation loss rose ``patience`` checks in a row while training loss fell."""
    settings = config.overfitting
    patience = settings.patience
    latest = checks[-1]
    if patience is None or latest.val_loss is None:
        return None
    rising = 0
    for before, after in zip(checks[-patience - 1 : -1], checks[-patience:], strict=False):
        if (before.val_loss is not None and after.val_loss is not None
                and after.val_loss > before.val_loss
                and (before.train_loss is None or after.train_loss is None
                     or after.train_loss <= before.train_loss)):
            rising += 1
    triggered = len(checks) > patience and rising >= patience
    return Decision(
        guard="overfitting", step=latest.step, triggered=triggered,
        action=settings.action if triggered else "none", value=float(rising),
        threshold=float(patience),
        message=f"validation loss {latest.val_loss:.4f}, rising at {rising} of the last "
        f"{patience} checks" + (" while training loss fell: memorising" if triggered else ""),
    )


def judge_train_loss(
    loss: float, step: int, settle_steps: int, config: GuardsConfig, warned: set[str],
    recent: float | None = None,
) -> Decision | None:
    """Judges one logged training loss: NaN or inf stops at once; extremes warn once each.

    Args:
        loss: The step's training loss; a NaN or inf here stops.
        recent: The mean loss of the last steps (see :data:`LOSS_WINDOW`), which the high
            and low limits are judged on: one noisy batch is no trend. None skips them.
        step: The optimizer step it was logged at.
        settle_steps: Steps before a high loss counts: the warmup, and at least a tenth of
            the run, since every healthy run starts with high losses.
        config: The guards' settings.
        warned: Names of warnings already given this run; updated.
    """
    if not math.isfinite(loss):
        return Decision(
            guard="loss", step=step, triggered=True, action="stop", value=loss, threshold=None,
            message=f"training loss is {loss} at step {step}: stopped. Likely causes: a "
            "learning rate too high (lower train.lr), fp16 overflow (use bf16 or fp32), or a "
            "batch with no supervised token (retain drops those rows; check the doctor)",
        )
    if recent is None:
        return None
    loss = recent
    high = config.loss.max_loss_after_warmup
    if high is not None and step > settle_steps and loss > high and "high" not in warned:
        warned.add("high")
        return Decision(
            guard="loss", step=step, triggered=True, action="warn", value=loss, threshold=high,
            message=f"training loss {loss:.3f} (mean of the last {LOSS_WINDOW} steps) is still above "
            f"{high:g} after warmup: the task "
            "may be too hard for this setting, or the data inconsistent (run retain audit)",
        )
    low = config.overfitting.min_train_loss
    if low is not None and loss < low and "low" not in warned:
        warned.add("low")
        return Decision(
            guard="overfitting", step=step, triggered=True, action="warn", value=loss,
            threshold=low,
            message=f"training loss {loss:.3f} (mean of the last {LOSS_WINDOW} steps) is below {low:g}: "
            "the model may be memorising "
            "the training set; watch validation loss and forgetting",
        )
    return None


def better(candidate: Check, best: Check | None, config: GuardsConfig) -> bool:
    """Returns whether ``candidate`` beats ``best`` by the selection rule of this module."""
    if best is None:
        return True
    threshold = config.forgetting.threshold
    broken = unsound(candidate, config), unsound(best, config)
    if broken[0] != broken[1]:
        return broken[1]  # NaN weights or broken answers are never best while sound ones exist

    def within(check: Check) -> bool:
        return check.forgetting is None or check.forgetting <= threshold

    if within(candidate) != within(best):
        return within(candidate)
    if not within(candidate):
        return (candidate.forgetting or 0.0) < (best.forgetting or 0.0)
    for key, higher_wins in (("task_accuracy", True), ("val_loss", False), ("forgetting", False)):
        a, b = getattr(candidate, key), getattr(best, key)
        if a is None or b is None or a == b:
            continue
        return a > b if higher_wins else a < b
    return False


def _cut(text: str, keep: int = 60, *, tail: bool = False) -> str:
    """Returns a long text cut for one log line: its end (``tail``, for prompts, whose question
    comes last) or its start (for answers)."""
    if len(text) <= keep:
        return text
    return "..." + text[-keep:] if tail else text[:keep] + "..."


def unsound(check: Check, config: GuardsConfig) -> bool:
    """True when a check measured non-finite losses (NaN or inf weights) or failed the smoke test."""
    if check.smoke_fail_share is not None and check.smoke_fail_share >= config.smoke.fail_share:
        return True
    return any(value is not None and not math.isfinite(value)
               for value in (check.val_loss, check.train_loss, check.kl))

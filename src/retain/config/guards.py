"""The guards section: what each guard watches, when it acts, and how."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from retain.config.section import Section

_SMOKE_PROMPTS = ("Hello, how are you?", "What is 2+2?", "Is the sky blue? Answer yes or no.")


class ForgettingGuardConfig(Section):
    """Stops forgetting while it happens, by watching the probe suites."""

    threshold: float = Field(
        0.03,
        gt=0,
        lt=1,
        description="Relative drop in general probe accuracy that triggers the action; 3% is the "
        "tolerance of the fine-tuning guides retain grew from.",
    )
    action: Literal["warn", "stop", "restore_best"] = Field(
        "restore_best",
        description="On crossing the threshold: `warn`, or `stop` / `restore_best` (the same since "
        "issue 25: any stop loads the best checkpoint within the threshold back, or the starting "
        "weights, and saves it as the final model).",
    )
    method: Literal["generation", "loglik"] = Field(
        "generation",
        description="Probe accuracy the guard watches: by `generation` (what the model says) or "
        "by `loglik` ranking.",
    )
    patience: int = Field(
        2,
        ge=0,
        description="Early-stopping patience: checks over the threshold that set no new low of "
        "the current stretch over it before the action (0 acts at the first check over it). "
        "Forgetting that is falling back (the 'stability gap' of rehearsal) is waited out; "
        "forgetting that stays or grows is not. The last check of a run acts at once, and "
        "restore_best still picks the best check within the threshold.",
    )
    every_steps: int | None = Field(
        None, gt=0, description="Check every N steps; null follows guards.every_steps."
    )


class SmokeGuardConfig(Section):
    """Catches a model whose generations broke (empty, whitespace, echo, loop)."""

    prompts: list[str] = Field(
        default_factory=lambda: list(_SMOKE_PROMPTS),
        min_length=1,
        description="Prompts the model answers at each check (the lab world teaches these three "
        "too, so the lab model answers them).",
    )
    task_prompts: int = Field(
        3,
        ge=0,
        description="Prompts of the task itself (the first rows of data.validation, else "
        "data.train) added to the smoke test and judged as their own group: a pipeline that "
        "silences the task can leave general prompts untouched.",
    )
    max_new_tokens: int = Field(32, gt=0, description="Tokens generated per smoke prompt.")
    fail_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Share of broken answers, among the general or among the task prompts (and "
        "more than the base model had), that triggers the action. The default triggers on one "
        "newly broken answer among the three default prompts of a group.",
    )
    action: Literal["warn", "stop"] = Field(
        "stop", description="What to do when generations look broken."
    )
    every_steps: int | None = Field(
        None, gt=0, description="Check every N steps; null follows guards.every_steps."
    )


class DriftGuardConfig(Section):
    """Watches how far the model's next-token distribution moved on general reference text."""

    max_kl: float | None = Field(
        None,
        gt=0,
        description="Mean KL(base || model) per token, in nats, that triggers the action; null "
        "records drift without acting.",
    )
    max_perplexity_ratio: float | None = Field(
        None,
        gt=1,
        description="Reference-text perplexity over the base model's that triggers the action; "
        "null records it without acting.",
    )
    action: Literal["warn", "stop", "restore_best"] = Field(
        "warn", description="On crossing a threshold: `warn`, `stop` or `restore_best`."
    )
    every_steps: int | None = Field(
        None, gt=0, description="Check every N steps; null follows guards.every_steps."
    )
    check_tokens: int | None = Field(
        512,
        gt=0,
        description="Reference-text tokens a check scores (the first N, in whole windows of 128); "
        "null scores all of it. The base and final evaluations score all of it; on a real model "
        "the whole text (about 2,500 tokens) was a third of a check.",
    )


class OverfittingGuardConfig(Section):
    """Flags memorising: a tiny training loss, or validation loss rising while training loss falls."""

    min_train_loss: float | None = Field(
        0.2,
        ge=0,
        description="Training loss below this warns of overfitting; null disables the check.",
    )
    patience: int | None = Field(
        3,
        gt=0,
        description="Stop after validation loss rose at this many checks in a row while training "
        "loss fell (early stopping; needs data.validation); null disables it.",
    )
    action: Literal["warn", "stop", "restore_best"] = Field(
        "stop", description="What rising validation loss does."
    )


class LossGuardConfig(Section):
    """Loss health: a NaN or infinite loss stops at once; a loss that stays high warns."""

    max_loss_after_warmup: float | None = Field(
        2.0,
        gt=0,
        description="Training loss still above this after warmup warns; null disables the check.",
    )


class GuardsConfig(Section):
    """Checks that run during training, each logged with its numbers and acting as configured."""

    enabled: bool = Field(
        True, description="Run the guards; false trains blind (for comparisons only)."
    )
    every_steps: int | None = Field(
        None,
        gt=0,
        description="Run the checks every N optimizer steps (and at the end of each epoch); "
        "null spreads checks_per_epoch checks over each epoch.",
    )
    checks_per_epoch: int = Field(
        4, gt=0, description="Checks per epoch when every_steps is null."
    )
    forgetting: ForgettingGuardConfig = Field(
        default_factory=ForgettingGuardConfig, description="Forgetting guard."
    )
    smoke: SmokeGuardConfig = Field(
        default_factory=SmokeGuardConfig, description="Generation smoke test."
    )
    drift: DriftGuardConfig = Field(
        default_factory=DriftGuardConfig, description="Drift from the base model."
    )
    overfitting: OverfittingGuardConfig = Field(
        default_factory=OverfittingGuardConfig, description="Overfitting and early stopping."
    )
    loss: LossGuardConfig = Field(
        default_factory=LossGuardConfig, description="Loss health."
    )

    def interval(self, steps_per_epoch: int) -> int:
        """Returns the optimizer steps between checks: ``every_steps``, else
        ``checks_per_epoch`` checks spread over an epoch of ``steps_per_epoch`` steps."""
        return self.every_steps or max(1, steps_per_epoch // self.checks_per_epoch)

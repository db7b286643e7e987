"""What a guard check measures: probe accuracy, smoke answers, validation loss, task
accuracy and drift, each in full precision (:func:`retain.hardware.own_forward`), and the
base model's figures they are judged against (:class:`Baseline`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from retain.data.encoding import IGNORE_INDEX, Collator, Encoded
from retain.data.prompting import PromptFormat
from retain.data.rows import Example
from retain.evaluation.base_logprobs import BaseLogprobs, compute_base_logprobs
from retain.evaluation.drift import drift_report
from retain.evaluation.engine import EvalSettings, score_suite
from retain.evaluation.generation import generate_greedy
from retain.evaluation.health import check_generation
from retain.evaluation.preference import PreferenceValidation
from retain.evaluation.probes import ProbeSuite
from retain.evaluation.task import score_task
from retain.hardware import batches_with_backoff

logger = logging.getLogger("retain.train")

HEALTH_KINDS = ("empty", "whitespace_only", "echo", "loop")


@dataclass
class Baseline:
    """The base model's numbers that checks are compared with.

    Attributes:
        probe_accuracy: Overall probe accuracy by the watched method.
        smoke_fail_share: Share of smoke prompts the base answered brokenly.
        smoke_stopped: Whether the base's answer to each smoke prompt ended with EOS.
        check_perplexity: The base's perplexity on the part of the reference text a check
            scores (``Probe.drift_tokens``), when that is not all of it.
        perplexity: Reference-text perplexity.
        logprobs: Base log-probabilities on the reference, for KL.
        start_validation: The base's validation loss and task accuracy, which are the
            starting model's (the check of step 0 then measures nothing); None when that
            check measures them.
    """

    probe_accuracy: float | None
    smoke_fail_share: float
    perplexity: float | None
    logprobs: BaseLogprobs | None = None
    smoke_stopped: list[bool] | None = None
    start_validation: tuple[float | None, float | None] | None = None
    check_perplexity: float | None = None


@dataclass
class Probe:
    """Everything a check measures with, fixed for the run.

    Attributes:
        tokenizer: The model's tokenizer.
        suites: Probe suites scored at each check.
        method: The probe method the forgetting guard watches.
        settings: Caps and batch size for probes and task answers.
        chat_template: ``model.chat_template``.
        smoke_prompts: Smoke prompts, already rendered for the model: the general ones of
            ``guards.smoke.prompts``, then ``smoke_task`` prompts of the task itself.
        smoke_max_new_tokens: Token cap for smoke answers.
        smoke_task: How many of the last smoke prompts are task prompts; the general and
            the task prompts are judged as two groups (see :meth:`smoke`).
        reference: Reference text for drift, or None.
        validation: Validation rows for task accuracy (a prefix of ``data.validation``).
        validation_encoded: Validation rows encoded for the loss.
        collate: The training collator, for validation batches.
        batch_size: Rows per validation-loss batch.
        drift_tokens: Reference-text tokens a check scores (``guards.drift.check_tokens``);
            None for all of it.
        preferences: Under DPO with preference validation rows: the pairs whose DPO loss
            is the validation loss and whose ranking is the task accuracy (both measured
            by one pass, :meth:`validation_loss`); None otherwise.
    """

    tokenizer: PreTrainedTokenizerBase
    suites: Sequence[ProbeSuite]
    method: str
    settings: EvalSettings
    chat_template: str
    smoke_prompts: Sequence[str]
    smoke_max_new_tokens: int
    smoke_task: int = 0
    reference: str | None = None
    validation: Sequence[Example] = ()
    validation_encoded: Sequence[Encoded] = ()
    collate: Collator | None = None
    batch_size: int = 8
    drift_tokens: int | None = None
    preferences: PreferenceValidation | None = None
    _ranking: float | None = None  # the task accuracy the last preference validation pass measured

    def probes(self, model: PreTrainedModel) -> tuple[float | None, dict[str, float]]:
        """Returns overall accuracy (items pooled over suites) and accuracy per category."""
        settings = EvalSettings(methods=(self.method,), probe_max_new_tokens=self.settings.probe_max_new_tokens,
                                batch_size=self.settings.batch_size,
                                generation_batch_size=self.settings.generation_batch_size)
        correct = total = 0
        categories: dict[str, float] = {}
        for suite in self.suites:
            prompt_format = PromptFormat.for_tokenizer(self.tokenizer, self.chat_template, suite.delimiter)
            scores = score_suite(model, self.tokenizer, suite, prompt_format, settings)
            score = scores.get(self.method)
            if score is None:
                continue
            correct += sum(score.correct)
            total += len(score.correct)
            categories.update({f"{suite.name}/{name}": value for name, value in score.accuracy.items()
                               if name != "overall"})
        return (correct / total if total else None), categories

    def smoke(
        self, model: PreTrainedModel, base_stopped: Sequence[bool] | None = None
    ) -> tuple[float, dict[str, int], list[tuple[str, str]], list[bool]]:
        """Answers the smoke prompts and judges the answers.

        An answer is broken when it is empty, blank, an echo or a loop, or when it runs to
        the token cap where the base model's answer to the same prompt stopped, and runs on
        to twice the cap when asked again (``never_stops``: the model no longer ends its
        answers; an answer the base ended near the cap runs a little past it after the
        smallest change, issue 25, and only those answers are generated again). General and task prompts
        are two groups, and the share reported is the worse group's: a pipeline that
        teaches an immediate EOS after the task's prompts silences the task and may leave
        "Hello, how are you?" untouched.

        Returns:
            The broken share of the worse group, counts per failure kind, up to three
            ``(prompt, answer)`` examples of broken answers, and whether each answer
            stopped (the base's, for ``base_stopped``).
        """
        generations = generate_greedy(model, self.tokenizer, list(self.smoke_prompts),
                                      self.smoke_max_new_tokens)
        overrun = [index for index, generation in enumerate(generations)
                   if not generation.stopped and base_stopped is not None and base_stopped[index]]
        longer = generate_greedy(model, self.tokenizer, [self.smoke_prompts[index] for index in overrun],
                                 2 * self.smoke_max_new_tokens) if overrun else []
        never_stops = {index for index, generation in zip(overrun, longer, strict=True) if not generation.stopped}
        counts: dict[str, int] = {}
        examples: list[tuple[str, str]] = []
        first_task = len(generations) - self.smoke_task
        broken = [0, 0]  # general, task
        for index, generation in enumerate(generations):
            flags = check_generation(generation)
            kinds = [kind for kind in HEALTH_KINDS if getattr(flags, kind)]
            if index in never_stops:
                kinds.append("never_stops")
            for kind in kinds:
                counts[kind] = counts.get(kind, 0) + 1
            if kinds:
                broken[index >= first_task] += 1
                if len(examples) < 3:
                    examples.append((generation.prompt, generation.text))
        sizes = (first_task, self.smoke_task)
        share = max(count / size for count, size in zip(broken, sizes, strict=True) if size)
        return share, counts, examples, [g.stopped for g in generations]

    def validation_loss(self, model: PreTrainedModel) -> float | None:
        """Returns the mean loss per supervised token on the validation rows (under DPO with
        preference rows, the DPO loss on the pairs; its ranking accuracy is kept for
        :meth:`task_accuracy`)."""
        if self.preferences is not None:
            loss, self._ranking = self.preferences.measure(model)
            return loss
        if not self.validation_encoded or self.collate is None:
            return None
        device = next(model.parameters()).device
        collate = self.collate

        def loss(rows: Sequence[Encoded]) -> tuple[float, float]:
            batch = {k: v.to(device) for k, v in collate([r.feature() for r in rows]).items()}
            count = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            return (float(model(**batch).loss) * count if count else 0.0), count

        # Rows of similar length batched together pad least; the mean is the same.
        rows = sorted(self.validation_encoded, key=lambda row: len(row.input_ids))
        total = tokens = 0.0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for _, (summed, count) in batches_with_backoff(rows, self.batch_size, loss, owner=model,
                                                               kind="validation loss"):
                    total += summed
                    tokens += count
        finally:
            model.train(was_training)
        return total / tokens if tokens else None

    def task_accuracy(self, model: PreTrainedModel) -> float | None:
        """Returns accuracy by generation on the validation rows (the labels are not
        ranked: a check reads only what the model says, and each answer stops once its
        label is settled). Under DPO with preference rows: the share of validation pairs
        whose chosen answer is likelier than the rejected one."""
        if self.preferences is not None:
            ranking, self._ranking = self._ranking, None
            return ranking if ranking is not None else self.preferences.measure(model)[1]
        if not self.validation:
            return None
        prompt_format = PromptFormat.for_tokenizer(self.tokenizer, self.chat_template)
        score = score_task(model, self.tokenizer, self.validation, prompt_format, name="validation",
                           max_new_tokens=self.settings.task_max_new_tokens,
                           batch_size=self.settings.batch_size, rank=False,
                           generation_batch_size=self.settings.generation_batch_size, settle=True)
        return score.accuracy

    def drift(self, model: PreTrainedModel, base: Baseline) -> tuple[float | None, float | None]:
        """Returns KL to the base and the perplexity ratio on the reference text."""
        if not self.reference:
            return None, None
        report = drift_report(model, self.tokenizer, self.reference, base.logprobs, max_tokens=self.drift_tokens)
        base_perplexity = base.check_perplexity if self.drift_tokens is not None else base.perplexity
        ratio = report.perplexity / base_perplexity if base_perplexity else None
        return report.kl, ratio

    def baseline(self, model: PreTrainedModel) -> Baseline:
        """Returns ``model``'s figures as the base the checks are judged against, measured
        here as a check measures them (no cache, no validation rows: what a callback in
        someone else's trainer knows; ``retain train`` measures its base with the full
        evaluation, :func:`retain.training.baseline.measure_base`)."""
        accuracy, _ = self.probes(model)
        fail_share, _, _, stopped = self.smoke(model)
        logprobs = compute_base_logprobs(model, self.tokenizer, self.reference) if self.reference else None
        whole = (drift_report(model, self.tokenizer, self.reference, logprobs).perplexity
                 if self.reference and self.drift_tokens is None else None)
        return Baseline(probe_accuracy=accuracy, smoke_fail_share=fail_share, perplexity=whole,
                        logprobs=logprobs, smoke_stopped=stopped,
                        check_perplexity=self.check_perplexity(model, logprobs))

    def check_perplexity(self, model: PreTrainedModel, logprobs: BaseLogprobs | None) -> float | None:
        """Returns ``model``'s perplexity on the part of the reference text a check scores
        (None when checks score all of it, or there is no reference)."""
        if not self.reference or self.drift_tokens is None:
            return None
        return drift_report(model, self.tokenizer, self.reference, logprobs, max_tokens=self.drift_tokens).perplexity

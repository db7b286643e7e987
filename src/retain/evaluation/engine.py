"""One evaluation of one model: probes, task, drift and health, in one JSON-ready result.

``retain eval`` calls :func:`evaluate`; so will the guards and the final evaluation of
``retain train``. Forgetting is always :func:`retain.evaluation.forgetting.compare` of two
such results, suite by suite and method by method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from retain.data.perturb import PERTURBATIONS
from retain.data.prompting import PromptFormat
from retain.data.rows import Example
from retain.evaluation.base_logprobs import BaseLogprobs
from retain.evaluation.drift import DriftReport, drift_report
from retain.evaluation.forgetting import ForgettingReport, ItemResults, compare
from retain.evaluation.generation import score_probes_by_generation
from retain.evaluation.health import HealthReport, smoke_test
from retain.evaluation.loglik import score_probes_by_loglik
from retain.evaluation.preference import PreferenceScore, is_preference_set, score_preferences
from retain.evaluation.probes import ProbeScore, ProbeSuite
from retain.evaluation.task import (
    Brittleness,
    TaskScore,
    score_perturbations,
    score_task,
)
from retain.sources import suite_source
from retain.summary import NOT_REHEARSED, REHEARSED

logger = logging.getLogger("retain.evaluation")

METHODS = ("generation", "loglik")


def default_reference_text(suites: Sequence[ProbeSuite]) -> str:
    """Returns the reference text for drift: the first registered suite's own, if it has
    one (:mod:`retain.sources`), else the built-in one."""
    for suite in suites:
        source = suite_source(suite.name)
        if source is not None and source.reference is not None:
            return source.reference()
    resource = resources.files("retain.evaluation").joinpath("builtin_suites/reference.txt")
    return resource.read_text(encoding="utf-8")


@dataclass(frozen=True)
class EvalSettings:
    """What to measure.

    Attributes:
        methods: Probe scoring methods: ``generation`` and/or ``loglik`` (which also
            reports ``loglik_norm``).
        perturbations: Perturbations applied to the held-out task examples.
        perturb_limit: At most this many examples per perturbation (the first ones).
        smoke_prompts: Prompts of the generation smoke test.
        probe_max_new_tokens: Token cap for probe answers.
        task_max_new_tokens: Token cap for task answers.
        batch_size: Prompts per forward pass.
        generation_batch_size: Prompts per batch when generating probe and task answers.
    """

    methods: tuple[str, ...] = METHODS
    perturbations: tuple[str, ...] = tuple(PERTURBATIONS)
    perturb_limit: int = 200
    smoke_prompts: tuple[str, ...] = ()
    probe_max_new_tokens: int = 24
    task_max_new_tokens: int = 32
    batch_size: int = 32
    generation_batch_size: int = 128


@dataclass
class EvalResult:
    """Everything one evaluation measured; absent parts were not asked for.

    Attributes:
        model: What was evaluated (name or path).
        probes: ``{suite: {method: ProbeScore}}``.
        task: ``{"eval": TaskScore, "ood": TaskScore}`` as given; a split of preference
            pairs is a :class:`~retain.evaluation.preference.PreferenceScore` (ranked by
            log-likelihood, not generated).
        brittleness: One entry per applicable perturbation of the eval set.
        drift: KL to base and perplexity on the reference text.
        smoke: Health of the answers to the smoke prompts.
        seconds: Wall time of the evaluation.
    """

    model: str
    probes: dict[str, dict[str, ProbeScore]] = field(default_factory=dict)
    task: dict[str, TaskScore | PreferenceScore] = field(default_factory=dict)
    brittleness: list[Brittleness] = field(default_factory=list)
    drift: DriftReport | None = None
    smoke: HealthReport | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Returns JSON-ready data, per-item results included (``compare`` needs them)."""
        return {
            "model": self.model,
            "probes": {
                suite: {method: score.to_dict(with_items=True) for method, score in methods.items()}
                for suite, methods in self.probes.items()
            },
            "task": {name: score.to_dict() for name, score in self.task.items()},
            "brittleness": [entry.to_dict() for entry in self.brittleness],
            "drift": self.drift.to_dict() if self.drift else None,
            "smoke": self.smoke.to_dict() if self.smoke else None,
            "seconds": self.seconds,
        }


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    name: str,
    chat_template: str = "auto",
    suites: Sequence[ProbeSuite] = (),
    task: Sequence[Example] | None = None,
    ood: Sequence[Example] | None = None,
    reference: str | None = None,
    base_logprobs: BaseLogprobs | None = None,
    settings: EvalSettings = EvalSettings(),
) -> EvalResult:
    """Measures ``model`` on everything given.

    Args:
        name: Name of the model, for the report.
        chat_template: ``auto``, ``none`` or a template file (see ``PromptFormat``).
        suites: Probe suites, each scored by every method in ``settings.methods``.
        task: Held-out examples of the fine-tuning task; also perturbed.
        ood: Out-of-distribution examples of the task.
        reference: Reference text for perplexity (and KL, with ``base_logprobs``).
        base_logprobs: The base model's log-probabilities on ``reference``.
        settings: What to measure and how.
    """
    started = time.perf_counter()
    result = EvalResult(model=name)
    for suite in suites:
        prompt_format = PromptFormat.for_tokenizer(tokenizer, chat_template, suite.delimiter)
        result.probes[suite.name] = score_suite(model, tokenizer, suite, prompt_format, settings)
    prompt_format = PromptFormat.for_tokenizer(tokenizer, chat_template)
    for split, examples in (("eval", task), ("ood", ood)):
        if examples and is_preference_set(examples):  # pairs are ranked, not answered
            result.task[split] = score_preferences(model, tokenizer, examples, prompt_format, name=split,
                                                   batch_size=settings.batch_size)
        elif examples:
            result.task[split] = score_task(
                model, tokenizer, examples, prompt_format, name=split,
                max_new_tokens=settings.task_max_new_tokens, batch_size=settings.batch_size,
                generation_batch_size=settings.generation_batch_size,
            )
    if task and settings.perturbations and not is_preference_set(task):
        subset = list(task[: settings.perturb_limit])
        original = result.task["eval"]
        if len(subset) < len(task):
            original = score_task(
                model, tokenizer, subset, prompt_format, name="eval",
                labels=original.labels or None,
                max_new_tokens=settings.task_max_new_tokens, batch_size=settings.batch_size,
                generation_batch_size=settings.generation_batch_size,
            )
        result.brittleness = score_perturbations(
            model, tokenizer, subset, original, prompt_format, names=settings.perturbations,
            max_new_tokens=settings.task_max_new_tokens, batch_size=settings.batch_size,
            generation_batch_size=settings.generation_batch_size,
        )
    if reference:
        result.drift = drift_report(model, tokenizer, reference, base_logprobs)
    if settings.smoke_prompts:
        rendered = [prompt_format.render(prompt) for prompt in settings.smoke_prompts]
        result.smoke = smoke_test(model, tokenizer, rendered, max_new_tokens=32)
    result.seconds = time.perf_counter() - started
    return result


def score_suite(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    suite: ProbeSuite,
    prompt_format: PromptFormat,
    settings: EvalSettings,
) -> dict[str, ProbeScore]:
    """Returns the suite's scores by each method of ``settings`` that applies to it."""
    scores: dict[str, ProbeScore] = {}
    if "generation" in settings.methods:
        scores["generation"] = score_probes_by_generation(
            model, tokenizer, suite, prompt_format,
            max_new_tokens=settings.probe_max_new_tokens, batch_size=settings.generation_batch_size,
        )
    if "loglik" in settings.methods:
        ranked = score_probes_by_loglik(model, tokenizer, suite, prompt_format, settings.batch_size)
        if ranked is not None:
            scores["loglik"], scores["loglik_norm"] = ranked
    return scores


def forgetting(before: EvalResult | dict, after: EvalResult | dict, **bootstrap) -> dict[str, dict[str, ForgettingReport]]:
    """Compares two evaluations suite by suite and method by method.

    Args:
        before: The base model's evaluation (an :class:`EvalResult` or its ``to_dict``).
        after: The tuned model's.
        bootstrap: Passed to :func:`compare` (``n_bootstrap``, ``confidence``, ``seed``).

    Returns:
        ``{suite: {method: ForgettingReport}}`` for every suite and method both have.
    """
    first, second = _item_results(before), _item_results(after)
    reports: dict[str, dict[str, ForgettingReport]] = {}
    for (suite, method), results in second.items():
        if (suite, method) in first:
            reports.setdefault(suite, {})[method] = compare(first[(suite, method)], results, **bootstrap)
    return reports


def forgetting_by_rehearsal(before: EvalResult | dict, after: EvalResult | dict, method: str,
                            rehearsed: dict[str, list[str]], **bootstrap) -> dict[str, dict[str, ForgettingReport]]:
    """Compares two evaluations by ``method`` on two groups of each suite's items: those
    in ``rehearsed`` (by suite) and the rest.

    Returns:
        ``{suite: {"rehearsed": report, "not_rehearsed": report}}``; a group with no item
        is left out.
    """
    first, second = _item_results(before), _item_results(after)
    reports: dict[str, dict[str, ForgettingReport]] = {}
    for (suite, scored_by), results in second.items():
        if scored_by != method or (suite, method) not in first:
            continue
        ids = set(rehearsed.get(suite, ()))
        for group, keep in ((REHEARSED, True), (NOT_REHEARSED, False)):
            def chosen(item_id: str, keep: bool = keep) -> bool:
                return (item_id in ids) is keep

            part = first[(suite, method)].subset(chosen)
            if part.ids:
                reports.setdefault(suite, {})[group] = compare(part, results.subset(chosen), **bootstrap)
    return reports


def _item_results(result: EvalResult | dict) -> dict[tuple[str, str], ItemResults]:
    data = result.to_dict() if isinstance(result, EvalResult) else result
    found = {}
    for suite, methods in data.get("probes", {}).items():
        for method, score in methods.items():
            items = score["items"]
            found[(suite, method)] = ItemResults(
                suite=score["suite"],
                version=score["version"],
                ids=tuple(item["id"] for item in items),
                categories=tuple(item["category"] for item in items),
                correct=tuple(bool(item["correct"]) for item in items),
            )
    return found

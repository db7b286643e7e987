"""Accuracy on the user's own task: held-out, out-of-distribution, and perturbed inputs.

What the model says is the headline: a generated answer is judged by exact match, and
for classification-like tasks (yes/no/maybe, sentiment, ...) by the label it commits to
(:func:`retain.evaluation.labels.parse_label`). Beside it, the labels are ranked by
log-likelihood: a model can rank the right label first and still say nothing, and the
gap between the two numbers is exactly the failure that once reported 52% accuracy for
a model that emitted no tokens. Every score carries the health of its generations and
the share of each predicted label, so "always yes" is visible at a glance.

Prompts reach the model the way training will present them: prompt/response rows as
``prompt + response`` text, chat rows through the chat template.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from retain.data.perturb import PERTURBATIONS, perturb_example
from retain.data.prompting import PromptFormat, Rendered, render_example
from retain.data.rows import Example
from retain.evaluation.generation import Generation, generate_greedy
from retain.evaluation.health import HealthReport, generation_health
from retain.evaluation.labels import infer_label_set, label_settled, normalize_label, parse_label
from retain.evaluation.loglik import score_continuations
from retain.evaluation.probes import exact_match
from retain.evaluation.requests import encode_requests

UNPARSED = "(none)"


@dataclass(frozen=True)
class TaskScore:
    """How a model does on one set of task examples.

    Attributes:
        name: Which set: ``eval``, ``ood``, ``perturbed/<name>``, ``5-shot`` ...
        n: Examples scored.
        accuracy: The headline: label accuracy by generation for classification tasks,
            exact match by generation otherwise.
        exact_match: Share of generations equal to the reference after normalisation.
        labels: The task's labels when it is classification-like, else empty.
        label_accuracy: Share of generations that commit to the right label.
        loglik_accuracy: Share of examples whose right label has the highest
            log-likelihood among the labels (classification only).
        unparsed: Share of generations that commit to no label.
        predicted: Share of generations per predicted label (``(none)`` for unparsed).
        majority: The commonest reference label and its share of the examples
            (classification only): the accuracy of always giving that answer.
        health: Health of the generations (empty, echo, loops, ...).
        predictions: Per example: the parsed label (classification) or the generation.
        correct: Per example, by the headline rule.
        samples: The first :data:`SAMPLES` examples as the model answered them: prompt
            (its end), expected answer, the generation and whether it was right; kept in
            every result so that reports show answers before and after training.
    """

    name: str
    n: int
    accuracy: float
    exact_match: float
    labels: tuple[str, ...] = ()
    label_accuracy: float | None = None
    loglik_accuracy: float | None = None
    unparsed: float | None = None
    predicted: dict[str, float] = field(default_factory=dict)
    majority: tuple[str, float] | None = None
    health: HealthReport | None = None
    predictions: tuple[str, ...] = ()
    correct: tuple[bool, ...] = ()
    samples: tuple[dict, ...] = ()

    def to_dict(self, with_items: bool = False) -> dict:
        """Returns the score as JSON-ready data; per-example results when ``with_items``."""
        data = {
            "name": self.name,
            "n": self.n,
            "accuracy": self.accuracy,
            "exact_match": self.exact_match,
            "labels": list(self.labels),
            "label_accuracy": self.label_accuracy,
            "loglik_accuracy": self.loglik_accuracy,
            "unparsed": self.unparsed,
            "predicted": self.predicted,
            "majority": {"label": self.majority[0], "share": self.majority[1]} if self.majority else None,
            "health": self.health.to_dict() if self.health else None,
            "samples": list(self.samples),
        }
        if with_items:
            data["items"] = [
                {"prediction": prediction, "correct": ok}
                for prediction, ok in zip(self.predictions, self.correct)
            ]
        return data


def task_labels(examples: Sequence[Example]) -> tuple[str, ...] | None:
    """Returns the labels of a classification-like task, or None (see ``infer_label_set``)."""
    return infer_label_set(example.response for example in examples)


def score_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    prompt_format: PromptFormat,
    *,
    name: str = "eval",
    labels: Sequence[str] | None = None,
    rendered: Sequence[Rendered] | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    rank: bool = True,
    generation_batch_size: int | None = None,
    settle: bool = False,
) -> TaskScore:
    """Scores ``examples`` by generation, and by label log-likelihood when classification.

    Args:
        examples: The examples; their responses are the references.
        prompt_format: How prompts are rendered.
        name: Name of the set, for reports.
        labels: The task's labels; None infers them from the references (None again when
            the task does not look like classification).
        rendered: Prompts to use instead of rendering ``examples`` (few-shot prompts).
        max_new_tokens: Cap on generated tokens.
        batch_size: Prompts per forward pass.
        rank: Also rank the labels by log-likelihood (``loglik_accuracy``); False leaves
            it None and skips the forward passes ranking may need, for a guard check that
            reads the accuracy by generation alone.
        generation_batch_size: Prompts per batch when generating answers (``batch_size``
            when None): decoding reads every weight once per step for the whole batch, so
            a larger batch than ranking's pays there.
        settle: For a caller that reads the parsed labels alone (accuracy, predictions):
            each answer stops once its label is settled (:func:`label_settled`), which
            gives the same labels in fewer decoding steps; the answers' texts, health and
            exact match are then those of the cut answers.

    Raises:
        ValueError: If ``examples`` is empty.
    """
    if not examples:
        raise ValueError(f"no examples to score in '{name}'")
    rendered = list(rendered) if rendered is not None else [render_example(e, prompt_format) for e in examples]
    labels = tuple(normalize_label(label) for label in labels) if labels else task_labels(examples)
    choices = _label_choices(examples, labels) if labels and rank else []
    one_token = _one_token_choices(tokenizer, rendered, choices)
    asked = sorted({token for ids in one_token if ids is not None for token in ids})
    settled = None
    if settle and labels:
        def settled(ids: list[int]) -> bool:
            return label_settled(tokenizer.decode(ids, skip_special_tokens=True), labels)
    generations = _generate(model, tokenizer, rendered, max_new_tokens, generation_batch_size or batch_size, asked,
                            settled)
    exact = [exact_match(g.text, r.response) for g, r in zip(generations, rendered)]
    health = generation_health(generations)
    if not labels:
        return TaskScore(
            name, len(examples), _share(exact), _share(exact), health=health,
            predictions=tuple(g.text for g in generations), correct=tuple(exact),
            samples=_samples(rendered, generations, exact),
        )
    gold = [normalize_label(example.response) for example in examples]
    parsed = [parse_label(g.text, labels) for g in generations]
    right = [p == truth for p, truth in zip(parsed, gold)]
    loglik_accuracy = None
    if rank:
        first = [_first_scores(g, ids, asked) for g, ids in zip(generations, one_token)]
        ranked = _rank_labels(model, tokenizer, rendered, labels, choices, first, batch_size)
        loglik_accuracy = _share(choice == truth for choice, truth in zip(ranked, gold))
    counts = Counter(p if p is not None else UNPARSED for p in parsed)
    commonest, count = Counter(gold).most_common(1)[0]
    return TaskScore(
        name=name,
        n=len(examples),
        accuracy=_share(right),
        exact_match=_share(exact),
        labels=labels,
        label_accuracy=_share(right),
        loglik_accuracy=loglik_accuracy,
        unparsed=_share(p is None for p in parsed),
        predicted={label: counts[label] / len(parsed) for label in sorted(counts)},
        majority=(commonest, count / len(gold)),
        health=health,
        predictions=tuple(p if p is not None else UNPARSED for p in parsed),
        correct=tuple(right),
        samples=_samples(rendered, generations, right),
    )


def no_better_than_majority(accuracy: float, majority: float, n: int) -> bool:
    """True when ``accuracy`` over ``n`` examples is within two standard errors of
    ``majority``, the accuracy of always giving the commonest label (or below it): the
    model cannot be told apart from one that answers the same label every time.

    Two binomial standard errors of ``majority`` (a one-sided test at about 98%): 4.9
    points for 400 examples at a 40% majority, 12 points for 64.
    """
    return accuracy < majority + 2 * math.sqrt(majority * (1 - majority) / n)


SAMPLES = 5  # task answers kept in every result, for reports
PROMPT_TAIL = 300  # characters of a sample's prompt kept: its end, where the question is


def _samples(rendered: Sequence[Rendered], generations: Sequence, correct: Sequence[bool]) -> tuple[dict, ...]:
    return tuple({"prompt": r.prompt[-PROMPT_TAIL:], "expected": r.response.strip(), "answer": g.text,
                  "correct": bool(ok)}
                 for r, g, ok in list(zip(rendered, generations, correct))[:SAMPLES])


def _generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rendered: Sequence[Rendered],
    max_new_tokens: int,
    batch_size: int,
    score_first: Sequence[int] = (),
    settled: Callable[[list[int]], bool] | None = None,
) -> list[Generation]:
    """Generates for every prompt, grouping raw and chat-templated ones."""
    results: list[Generation | None] = [None] * len(rendered)
    for special in (True, False):
        indices = [i for i, r in enumerate(rendered) if r.add_special_tokens is special]
        if not indices:
            continue
        prompts = [rendered[i].prompt for i in indices]
        outputs = generate_greedy(
            model, tokenizer, prompts, max_new_tokens, batch_size, add_special_tokens=special,
            score_first=score_first, label="task by generation", settled=settled,
        )
        for index, output in zip(indices, outputs):
            results[index] = output
    return [result for result in results if result is not None]


def _label_choices(examples: Sequence[Example], labels: Sequence[str]) -> list[str]:
    """Returns each label in the form the references write it (`` yes`` with its leading
    space, ``Yes`` ...): the most common spelling among the references, or the bare label
    when no reference uses it."""
    spelling = _label_spellings(examples, labels)
    return [spelling[label] for label in labels]


def _one_token_choices(
    tokenizer: PreTrainedTokenizerBase, rendered: Sequence[Rendered], choices: Sequence[str]
) -> list[tuple[int, ...] | None]:
    """Per prompt, the one token each choice adds to it, or None when a choice takes more.

    Where every choice is one token, its log-likelihood is a log-probability of the
    first generation step, which generation computes anyway: ranking then needs no
    forward pass of its own. The tokens are the ones ranking scores
    (:func:`encode_requests`); prompts with trailing whitespace (which ranking strips and
    generation keeps) or none at all are left to ranking.
    """
    out: list[tuple[int, ...] | None] = [None] * len(rendered)
    if not choices:
        return out
    for special in (True, False):
        indices = [i for i, r in enumerate(rendered) if r.add_special_tokens is special and r.prompt
                   and r.prompt == r.prompt.rstrip()]
        encoded = encode_requests(tokenizer, [(rendered[i].prompt, choices) for i in indices], special)
        for index, (_, continuations) in zip(indices, encoded):
            if all(len(ids) == 1 for ids in continuations):
                out[index] = tuple(ids[0] for ids in continuations)
    return out


def _first_scores(generation: Generation, ids: tuple[int, ...] | None, asked: Sequence[int]) -> list[float] | None:
    """The choices' log-likelihoods read from a generation's first step, or None."""
    if ids is None or generation.first_logprobs is None:
        return None
    return [generation.first_logprobs[asked.index(token)] for token in ids]


def _rank_labels(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rendered: Sequence[Rendered],
    labels: Sequence[str],
    choices: Sequence[str],
    first: Sequence[list[float] | None],
    batch_size: int,
) -> list[str]:
    """Returns, per example, the label whose written form (``choices``) is most likely
    after the prompt.

    Prompts whose choices' log-likelihoods came with their generation (``first``: one
    token each) are ranked from those; the others are scored by
    :func:`score_continuations`.
    """
    values: list[list[float] | None] = list(first)
    for special in (True, False):
        indices = [i for i, r in enumerate(rendered) if r.add_special_tokens is special and values[i] is None]
        if not indices:
            continue
        requests = [(rendered[i].prompt, list(choices)) for i in indices]
        scored = score_continuations(model, tokenizer, requests, batch_size, special, label="task by log-likelihood")
        for index, scores in zip(indices, scored):
            values[index] = [score.logprob for score in scores]
    return [labels[max(range(len(row)), key=lambda k: (row[k], -k))] for row in values if row is not None]


def _label_spellings(examples: Sequence[Example], labels: Sequence[str]) -> dict[str, str]:
    forms: dict[str, Counter[str]] = {label: Counter() for label in labels}
    for example in examples:
        label = normalize_label(example.response)
        if label in forms:
            forms[label][example.response] += 1
    return {label: (forms[label].most_common(1)[0][0] if forms[label] else " " + label) for label in labels}


def _share(flags) -> float:
    values = [bool(flag) for flag in flags]
    return sum(values) / len(values) if values else 0.0


@dataclass(frozen=True)
class Brittleness:
    """How one perturbation changes answers.

    Attributes:
        name: The perturbation.
        n: Examples it applied to.
        accuracy_original: Headline accuracy on those examples, unperturbed.
        accuracy_perturbed: The same, perturbed.
        flipped: Share of those examples whose prediction changed.
    """

    name: str
    n: int
    accuracy_original: float
    accuracy_perturbed: float
    flipped: float

    def to_dict(self) -> dict:
        """Returns the figures as JSON-ready data."""
        return {
            "name": self.name,
            "n": self.n,
            "accuracy_original": self.accuracy_original,
            "accuracy_perturbed": self.accuracy_perturbed,
            "drop": self.accuracy_original - self.accuracy_perturbed,
            "flipped": self.flipped,
        }


def score_perturbations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    original: TaskScore,
    prompt_format: PromptFormat,
    *,
    names: Sequence[str] = tuple(PERTURBATIONS),
    max_new_tokens: int = 32,
    batch_size: int = 32,
    generation_batch_size: int | None = None,
) -> list[Brittleness]:
    """Scores each perturbation on the examples it applies to, against ``original``.

    Every perturbation's prompts are generated in one pass (full batches, and one tail
    batch instead of one per perturbation), then scored per perturbation.

    Args:
        examples: The examples ``original`` scored, in the same order.
        original: Their unperturbed score (its per-example predictions are compared).
        names: Perturbations to apply (see :mod:`retain.data.perturb`).
        generation_batch_size: Prompts per batch when generating (``batch_size`` when None).

    Returns:
        One :class:`Brittleness` per perturbation that applied to at least one example.
    """
    applied: list[tuple[str, list[int]]] = []
    perturbed: list[Example] = []
    for name in names:
        pairs = [(i, p) for i, e in enumerate(examples) if (p := perturb_example(e, name)) is not None]
        if pairs:
            applied.append((name, [i for i, _ in pairs]))
            perturbed += [p for _, p in pairs]
    if not perturbed:
        return []
    # Brittleness reads the parsed answers only: no ranking by log-likelihood, and each
    # answer stops once its label is settled.
    score = score_task(model, tokenizer, perturbed, prompt_format, name="perturbed",
                       labels=original.labels or None, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       rank=False, generation_batch_size=generation_batch_size, settle=True)
    results, start = [], 0
    for name, indices in applied:
        predictions = score.predictions[start : start + len(indices)]
        correct = score.correct[start : start + len(indices)]
        start += len(indices)
        before = [original.correct[i] for i in indices]
        changed = [original.predictions[i] != p for i, p in zip(indices, predictions)]
        results.append(Brittleness(name, len(indices), _share(before), _share(correct), _share(changed)))
    return results

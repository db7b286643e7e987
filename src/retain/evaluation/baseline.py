"""Zero- and few-shot accuracy of the base model: is fine-tuning needed at all?

The cheapest model that never forgets is the one never fine-tuned. Before training,
``retain baseline`` shows the base model k solved training examples and asks the eval
questions; if that lands within a stated margin of the accuracy the user wants, prompting
may be enough.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from retain.data.prompting import PromptFormat, Rendered, render_example
from retain.data.rows import Example
from retain.evaluation.labels import normalize_label
from retain.evaluation.task import TaskScore, score_task, task_labels

RAW_SEPARATOR = "\n\n"


def pick_shots(train: Sequence[Example], k: int, labels: Sequence[str] | None, seed: int = 0) -> list[Example]:
    """Returns ``k`` training examples, label-balanced for classification tasks.

    With labels, examples are taken round-robin over the labels (so a 3-shot prompt of
    a yes/no/maybe task shows each answer once) and then shuffled; without, a seeded
    random sample.
    """
    rng = random.Random(seed)
    if k <= 0:
        return []
    if not labels:
        return rng.sample(list(train), min(k, len(train)))
    pools = {label: [e for e in train if normalize_label(e.response) == label] for label in labels}
    for pool in pools.values():
        rng.shuffle(pool)
    chosen: list[Example] = []
    while len(chosen) < k and any(pools.values()):
        for label in labels:
            if pools[label] and len(chosen) < k:
                chosen.append(pools[label].pop())
    rng.shuffle(chosen)
    return chosen


def few_shot(example: Example, shots: Sequence[Example], prompt_format: PromptFormat) -> Rendered:
    """Returns ``example`` preceded by solved ``shots``.

    Prompt/response rows: each shot as ``prompt + response`` text, separated by a blank
    line. Chat rows with a chat template: each shot as user and assistant turns before
    the question's turns (as :func:`render_example` renders the question itself).
    """
    target = render_example(example, prompt_format)
    if not shots:
        return target
    if prompt_format.is_chat and example.is_chat:
        turns: list[dict] = []
        for shot in shots:
            turns += _turns(shot)
        question = _turns(example)[:-1]
        return Rendered(prompt_format.render_messages(turns + question), target.response, False)
    solved = [render_example(shot, PromptFormat.raw()) for shot in shots]
    context = RAW_SEPARATOR.join(shot.prompt + shot.response for shot in solved)
    return Rendered(context + RAW_SEPARATOR + target.prompt, target.response, target.add_special_tokens)


def _turns(example: Example) -> list[dict]:
    """Returns an example as chat turns ending with its answer."""
    if example.messages is not None:
        turns = list(example.messages)
        last = max(index for index, turn in enumerate(turns) if turn["role"] == "assistant")
        return [dict(turn) for turn in turns[: last + 1]]
    return [
        {"role": "user", "content": example.prompt},
        {"role": "assistant", "content": example.response.strip()},
    ]


# One label in this share of the answers is a constant answer, whatever the data.
CONSTANT_SHARE = 0.95


@dataclass(frozen=True)
class BaselineResult:
    """Few-shot accuracy of the base model on the task.

    Attributes:
        scores: One :class:`TaskScore` per number of shots, by k.
        target: The accuracy fine-tuning is meant to reach, if stated.
        margin: How close to the target counts as close enough.
        shortened: Per k, the examples whose prompt had to drop shots to fit the context.
    """

    scores: dict[int, TaskScore]
    target: float | None
    margin: float
    shortened: dict[int, int]

    @property
    def best(self) -> tuple[int, TaskScore]:
        """The number of shots with the highest accuracy, and its score."""
        return max(self.scores.items(), key=lambda item: (item[1].accuracy, -item[0]))

    @property
    def prompting_may_suffice(self) -> bool | None:
        """True when the best few-shot accuracy is within ``margin`` of the target."""
        if self.target is None:
            return None
        return self.best[1].accuracy >= self.target - self.margin

    def verdict(self) -> str:
        """One sentence: does the user need to fine-tune? Prefixed with what makes the best
        accuracy no skill at all, when it is so (:meth:`caveat`)."""
        caveat = self.caveat()
        return f"{caveat}; {self._verdict()}" if caveat else self._verdict()

    def caveat(self) -> str | None:
        """Says why the best accuracy measures no skill: one answer given to (nearly) every
        row, or an accuracy at or below the share of the commonest label (what always
        answering it would score). None when neither holds."""
        k, score = self.best
        shots = "zero-shot" if k == 0 else f"{k}-shot"
        said = {label: share for label, share in score.predicted.items() if label != "(none)"}
        if said and max(said.values()) >= CONSTANT_SHARE:
            label = max(said, key=said.get)
            return (f"no skill: {shots}, the model answered '{label}' to {said[label]:.0%} of the rows "
                    f"(accuracy {score.accuracy:.1%} is that label's share)")
        if score.majority is not None and score.accuracy <= score.majority[1]:
            label, share = score.majority
            return (f"no skill: the best accuracy ({shots}, {score.accuracy:.1%}) is at or below always "
                    f"answering the commonest label '{label}' ({share:.1%})")
        return None

    def _verdict(self) -> str:
        k, score = self.best
        shots = "zero-shot" if k == 0 else f"{k}-shot"
        if self.target is None:
            return (
                f"best: {shots} at {score.accuracy:.1%}; set eval.target to the accuracy you need "
                "to get a verdict"
            )
        gap = self.target - score.accuracy
        if self.prompting_may_suffice:
            return (
                f"{shots} prompting reaches {score.accuracy:.1%}, within {self.margin:.0%} of the "
                f"target {self.target:.0%}: try prompting before fine-tuning"
            )
        return (
            f"fine-tuning looks needed: the best few-shot accuracy ({shots}, {score.accuracy:.1%}) "
            f"is {gap:.1%} below the target {self.target:.0%} (margin {self.margin:.0%})"
        )

    def to_dict(self) -> dict:
        """Returns JSON-ready data."""
        k, _ = self.best
        return {
            "scores": {str(shots): score.to_dict() for shots, score in self.scores.items()},
            "target": self.target,
            "margin": self.margin,
            "best_shots": k,
            "prompting_may_suffice": self.prompting_may_suffice,
            "shortened": {str(shots): count for shots, count in self.shortened.items()},
            "verdict": self.verdict(),
            "caveat": self.caveat(),
        }


def run_baseline(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Example],
    examples: Sequence[Example],
    prompt_format: PromptFormat,
    *,
    shots: Sequence[int] = (0, 5),
    target: float | None = None,
    margin: float = 0.05,
    seed: int = 0,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    generation_batch_size: int | None = None,
) -> BaselineResult:
    """Scores ``examples`` with each number of ``shots`` taken from ``train``.

    ``batch_size`` is the prompts per forward pass when ranking labels, and
    ``generation_batch_size`` (``batch_size`` when None) when generating answers.

    The same shots precede every question (a fixed prompt, as a user would deploy it).
    A prompt too long for the model's context drops shots, last first, until it fits;
    how many prompts were shortened is reported.

    Raises:
        ValueError: If ``examples`` is empty, or shots are asked for with no ``train``.
    """
    if any(k > 0 for k in shots) and not train:
        raise ValueError("few-shot prompts need training examples to show")
    labels = task_labels(examples)
    limit = getattr(model.config, "max_position_embeddings", None)
    scores: dict[int, TaskScore] = {}
    shortened: dict[int, int] = {}
    for k in shots:
        chosen = pick_shots(train, k, labels, seed)
        rendered, cut = [], 0
        for example in examples:
            prompt = _fitting(example, chosen, prompt_format, tokenizer, limit, max_new_tokens)
            cut += prompt[1]
            rendered.append(prompt[0])
        name = "zero-shot" if k == 0 else f"{k}-shot"
        scores[k] = score_task(
            model, tokenizer, examples, prompt_format, name=name, labels=labels,
            rendered=rendered, max_new_tokens=max_new_tokens, batch_size=batch_size,
            generation_batch_size=generation_batch_size,
        )
        shortened[k] = cut
    return BaselineResult(scores=scores, target=target, margin=margin, shortened=shortened)


def _fitting(
    example: Example,
    shots: list[Example],
    prompt_format: PromptFormat,
    tokenizer: PreTrainedTokenizerBase,
    limit: int | None,
    max_new_tokens: int,
) -> tuple[Rendered, int]:
    """Returns the few-shot prompt with as many shots as fit, and 1 if any were dropped."""
    for keep in range(len(shots), -1, -1):
        rendered = few_shot(example, shots[:keep], prompt_format)
        # verbose=False: measuring a prompt that is too long is the point here, not a mistake.
        length = len(tokenizer(rendered.prompt, add_special_tokens=rendered.add_special_tokens,
                               verbose=False)["input_ids"])
        if limit is None or length + max_new_tokens <= limit:
            return rendered, int(keep < len(shots))
    return rendered, int(bool(shots))

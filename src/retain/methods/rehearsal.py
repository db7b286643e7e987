"""Rehearsal: general rows blended into the task rows, so that training keeps practising
what the model already knows. ``replay`` blends general texts as they are;
``self_augment`` blends the base model's own answers to prompts cut from them.

Both blend at ``ratio``, the share of the blended set that is general:
``round(ratio / (1 - ratio) * task_rows)`` general rows (Python's ``round``: halves go to
the even number). With both methods in one run, each counts against the task rows alone.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from transformers import PreTrainedModel

from retain.config import RetainConfig
from retain.data.encoding import Encoded, encode_examples, encode_texts
from retain.data.prompting import PromptFormat, render_example
from retain.data.rows import Example, chat_prompt_text
from retain.evaluation.generation import Generation, generate_greedy
from retain.evaluation.health import check_generation
from retain.io import read_cached_json, write_cached_json
from retain.methods.base import Method, MethodContext, weights_digest
from retain.methods.general import INSTRUCTIONS, general_source
from retain.methods.registry import register

logger = logging.getLogger("retain.methods")

T = TypeVar("T")

TASK_ROWS = "rehearsal.task_rows"
"""``MethodContext.store`` key: the task rows before any rehearsal method blended rows in."""

QUESTION, ANSWER_CUE = "Q:", "\nA:"
"""The lab's question/answer documents read ``Q: <question>\\nA: <answer>``."""

MARGIN = 1.5
"""Prompts asked per healthy answer still missing, before any answer was judged."""

MIN_HEALTHY_SHARE = 0.25
"""Lowest healthy share assumed when sizing the next round (at most 6 prompts per missing
answer), so a model that fails most prompts cannot make a round unbounded."""

MAX_ROUNDS = 3
"""Generation rounds before self-augmentation gives up and uses what is healthy."""


def general_count(task_rows: int, ratio: float) -> int:
    """Returns how many general rows make ``ratio`` of the blended set:
    ``round(ratio / (1 - ratio) * task_rows)``."""
    return round(ratio / (1 - ratio) * task_rows)


def task_row_count(rows: Sequence[Encoded], context: MethodContext) -> int:
    """Returns the number of task rows: the rows the first rehearsal method of the run saw."""
    return context.store.setdefault(TASK_ROWS, len(rows))


def blend(task: Sequence[Encoded], general: Sequence[Encoded], seed: int) -> list[Encoded]:
    """Returns task and general rows shuffled together, the same way for the same seed.

    The order here does not make the batches: the trainer's sampler does, and with rows
    of several sources it mixes every batch (:mod:`retain.training.sampling`).
    """
    rows = [*task, *general]
    random.Random(seed).shuffle(rows)
    return rows


def pick_texts(texts: Sequence[T], count: int, rng: random.Random) -> list[T]:
    """Returns ``count`` texts (or rows) sampled without replacement, or, when there are
    fewer than that, all of them shuffled once and cycled through (logged: they repeat)."""
    if count <= len(texts):
        return rng.sample(list(texts), count)
    logger.warning("replay: %d general rows asked but only %d general texts; texts repeat up to %d times",
                   count, len(texts), math.ceil(count / len(texts)))
    shuffled = rng.sample(list(texts), len(texts))
    return [shuffled[index % len(shuffled)] for index in range(count)]


def replay_texts(general: Sequence[T], task_rows: int, ratio: float, seed: int) -> list[T]:
    """Returns the general texts (or rows) replay blends into ``task_rows`` task rows so
    that they are ``ratio`` of the blend (:func:`general_count`), drawn by ``seed``
    (:func:`pick_texts`): the one choice ``retain train`` and :func:`retain.replay` make."""
    count = general_count(task_rows, ratio)
    return pick_texts(general, count, random.Random(seed)) if count else []


@register
class Replay(Method):
    """Experience replay: general texts are blended into the training rows, so that
    ``method.replay.ratio`` of the blended set is general data trained with a loss on
    every token (Rolnick et al., 2019, Experience Replay for Continual Learning,
    https://arxiv.org/abs/1811.11682; for LLMs, Scialom et al., 2022, Fine-tuned Language
    Models are Continual Learners, https://arxiv.org/abs/2205.12393, who rehearse 1% of
    earlier data).

    Variant: a fixed buffer drawn once before training from ``method.general`` (sampled
    without replacement, seeded by ``train.seed``), mixed into the task rows; the papers'
    buffers hold earlier tasks' data, which a user fine-tuning a released model rarely has.
    """

    name = "replay"
    paper = ("Rolnick et al., 2019, Experience Replay for Continual Learning, https://arxiv.org/abs/1811.11682; "
             "Scialom et al., 2022, Fine-tuned Language Models are Continual Learners, "
             "https://arxiv.org/abs/2205.12393")

    def transform_rows(self, rows: list[Encoded], model: PreTrainedModel,
                       context: MethodContext) -> list[Encoded]:
        tasks = task_row_count(rows, context)
        seed = self.config.train.seed
        texts = replay_texts(context.general_texts(), tasks, self.settings.ratio, seed)
        general = encode_texts(texts, context.tokenizer, max_length=self.config.data.max_length,
                               source=self.name)
        context.echo(f"replay: blended {len(general)} general rows into {tasks} task rows "
                     f"(method.replay.ratio {self.settings.ratio:g})")
        return blend(rows, general, seed)


def rehearsal_prompt(text: str) -> str | None:
    """Returns the prompt self-augmentation cuts from a general text, or None if it has none.

    A question/answer document (``Q: ...\\nA: ...``, the lab's format) gives its question up
    to and including the first ``A:``; any other text gives its first half of words
    (``len(words) // 2``, joined by single spaces), so a one-word text gives none.
    """
    if text.startswith(QUESTION) and ANSWER_CUE in text:
        return text[: text.index(ANSWER_CUE) + len(ANSWER_CUE)]
    words = text.split()
    return " ".join(words[: len(words) // 2]) or None


def rehearsal_prompts(texts: Sequence[str], config: RetainConfig) -> list[str]:
    """Returns the prompts self-augmentation asks the base model, each once, shuffled by
    ``train.seed``: the shipped instructions as they are, and from any other general
    texts the prompt :func:`rehearsal_prompt` cuts."""
    cut = general_source(config) != INSTRUCTIONS
    prompts = list(dict.fromkeys(filter(None, map(rehearsal_prompt, texts) if cut else texts)))
    random.Random(config.train.seed).shuffle(prompts)
    return prompts


def rehearsal_example(prompt: str, answer: str, line: int, prompt_format: PromptFormat) -> Example:
    """Returns a prompt and its answer as a training row: prompt/response for raw prompts,
    one user and one assistant turn for a chat template."""
    if not prompt_format.is_chat:
        return Example(prompt=prompt, response=answer, line=line)
    turns = ({"role": "user", "content": prompt}, {"role": "assistant", "content": answer})
    return Example(prompt=chat_prompt_text(turns[:1]), response=answer, messages=turns, line=line)


class AnswerCache:
    """The base model's greedy answers to rehearsal prompts, kept per prompt in
    ``context.cache_dir``: runs on one base (the trap and the recipe of ``retain lab``, a
    comparison's seeds, a sweep's trials) generate each answer once.

    The file is named by the SHA-256 of the model's name and weights (:func:`weights_digest`),
    the tokenizer's vocabulary size, the EOS token, ``max_new_tokens`` and the generation
    batch size; its keys are the rendered prompts, so the template is part of them. An
    unreadable file is ignored and written again.
    """

    VERSION = 1

    def __init__(self, path: Path, answers: dict[str, dict]) -> None:
        self.path, self.answers, self.reused = path, answers, 0

    @classmethod
    def for_model(cls, model: PreTrainedModel, context: MethodContext, max_new_tokens: int) -> AnswerCache:
        digest = hashlib.sha256()
        tokenizer = context.tokenizer
        digest.update(f"v{cls.VERSION}\0{context.config.model.name_or_path}\0{len(tokenizer)}\0"
                      f"{tokenizer.eos_token_id}\0{max_new_tokens}\0"
                      f"{context.config.eval.generation_batch_size}\0".encode())
        weights_digest(model, digest)
        path = context.cache_dir / "self_augment" / f"answers-{digest.hexdigest()[:24]}.json"
        stored = read_cached_json(path) or {}
        answers = stored.get("answers")
        return cls(path, answers if isinstance(answers, dict) else {})

    def get(self, prompt: str) -> Generation | None:
        found = self.answers.get(prompt)
        try:
            return Generation(prompt=prompt, text=str(found["text"]), new_tokens=int(found["new_tokens"]),
                              stopped=bool(found["stopped"]))
        except (TypeError, KeyError, ValueError):  # absent, or a damaged entry: generated again
            return None

    def missing(self, prompts: Sequence[str]) -> list[str]:
        """Returns the prompts with no answer yet (each once), counting the others as reused."""
        unique = list(dict.fromkeys(prompts))
        absent = [prompt for prompt in unique if self.get(prompt) is None]
        self.reused += len(unique) - len(absent)
        return absent

    def add(self, generations: Sequence[Generation]) -> None:
        """Stores ``generations``, with what another process stored meanwhile."""
        fresh = {generation.prompt: {"text": generation.text, "new_tokens": generation.new_tokens,
                                     "stopped": generation.stopped} for generation in generations}
        stored = read_cached_json(self.path) or {}
        answers = stored.get("answers") if isinstance(stored.get("answers"), dict) else {}
        self.answers = {**answers, **self.answers, **fresh}
        write_cached_json(self.path, {"answers": self.answers})


@register
class SelfAugment(Method):
    """Self-augmentation: before training, the base model answers prompts cut from the
    general data (greedy, ``method.self_augment.max_new_tokens``); its healthy answers
    (not empty, blank, an echo or a loop, by :func:`retain.evaluation.health.check_generation`)
    are encoded like task rows and blended in at ``method.self_augment.ratio``, so the
    model rehearses its own behaviour while it learns the task (Huang et al., 2024,
    Mitigating Catastrophic Forgetting in Large Language Models with Self-Synthesized
    Rehearsal, https://arxiv.org/abs/2403.01244; Sun et al., 2026, Talking to Yourself:
    Defying Forgetting in Large Language Models (SA-SFT), https://arxiv.org/abs/2602.20162).

    Variant: one fine-tuning stage, so SSR's "base model" and "latest model" are the same
    model and its refinement step is a no-op; the inputs come from ``method.general`` (see
    :func:`rehearsal_prompt`) rather than being invented by in-context learning, and SSR's
    diversity-based selection is replaced by the health filter and a seeded shuffle of the
    prompts. An answer cut by ``max_new_tokens`` is trained without EOS, so the model does
    not learn to stop mid-sentence.
    """

    name = "self_augment"
    paper = ("Huang et al., 2024, Mitigating Catastrophic Forgetting in Large Language Models with "
             "Self-Synthesized Rehearsal, https://arxiv.org/abs/2403.01244; Sun et al., 2026, Talking to "
             "Yourself: Defying Forgetting in Large Language Models, https://arxiv.org/abs/2602.20162")

    def transform_rows(self, rows: list[Encoded], model: PreTrainedModel,
                       context: MethodContext) -> list[Encoded]:
        tasks = task_row_count(rows, context)
        needed = general_count(tasks, self.settings.ratio)
        prompts = rehearsal_prompts(context.general_texts(), self.config)
        answers, generated = (self.healthy_answers(model, context, prompts, needed)
                              if needed else ([], 0))
        general = self._encode(answers, context)
        short = f" (fewer than the {needed} that method.self_augment.ratio asks for)" if len(general) < needed else ""
        context.echo(f"self_augment: generated {generated}, kept {len(answers)} healthy; blended "
                     f"{len(general)} rows into {tasks} task rows{short}")
        return blend(rows, general, self.config.train.seed)

    def healthy_answers(self, model: PreTrainedModel, context: MethodContext, prompts: list[str],
                        needed: int) -> tuple[list[tuple[str, Generation]], int]:
        """Generates for ``prompts`` in order, round by round, until ``needed`` answers are
        healthy; returns them (at most ``needed``) with their prompts, and the number of
        prompts generated for. Answers are read from and kept in the cache of this base
        model (:class:`AnswerCache`); the real-model evidence's floor control reads them."""
        prompt_format = context.prompt_format
        cache = AnswerCache.for_model(model, context, self.settings.max_new_tokens)
        kept: list[tuple[str, Generation]] = []
        tried = 0
        for _ in range(MAX_ROUNDS):
            missing = needed - len(kept)
            if missing <= 0 or tried >= len(prompts):
                break
            share = len(kept) / tried if tried else 1.0
            batch = prompts[tried : tried + math.ceil(missing * MARGIN / max(share, MIN_HEALTHY_SHARE))]
            tried += len(batch)
            rendered = [render_example(rehearsal_example(prompt, "", 0, prompt_format), prompt_format).prompt
                        for prompt in batch]
            new = cache.missing(rendered)
            if new:
                cache.add(generate_greedy(model, context.tokenizer, new, self.settings.max_new_tokens,
                                          self.config.eval.generation_batch_size,
                                          add_special_tokens=prompt_format.add_special_tokens))
            generations = [cache.get(prompt) for prompt in rendered]
            kept += [(prompt, generation) for prompt, generation in zip(batch, generations, strict=True)
                     if not check_generation(generation).failed]
        if cache.reused:
            context.echo(f"self_augment: {cache.reused} answers of this base model read from the cache")
        if len(kept) < needed:
            logger.warning("self_augment: only %d of %d generations were healthy (%d asked for); training "
                           "with those: use a larger method.general source or a lower method.self_augment.ratio",
                           len(kept), tried, needed)
        return kept[:needed], tried

    def _encode(self, answers: list[tuple[str, Generation]], context: MethodContext) -> list[Encoded]:
        """Encodes prompt/answer pairs like task rows; answers cut by ``max_new_tokens`` lose
        the EOS, and rows left with no supervised token are dropped."""
        examples = [rehearsal_example(prompt, generation.text, line, context.prompt_format)
                    for line, (prompt, generation) in enumerate(answers, start=1)]
        rows, _ = encode_examples(examples, context.tokenizer, context.prompt_format,
                                  max_length=self.config.data.max_length, loss_on=self.config.train.loss_on)
        eos = context.tokenizer.eos_token_id
        encoded = []
        for row in rows:
            if not answers[row.line - 1][1].stopped and not row.truncated and row.input_ids[-1:] == [eos]:
                row = replace(row, input_ids=row.input_ids[:-1], labels=row.labels[:-1],
                              full_tokens=row.full_tokens - 1)
            if row.supervised:
                prompt, generation = answers[row.line - 1]
                encoded.append(replace(row, source=self.name, text=f"{prompt} {generation.text}"))
        return encoded

"""Generation health: does the model still produce usable text at all?

Forgetting is not only wrong answers. A fine-tune can break generation itself: the model
answers nothing, only whitespace, parrots the prompt back, or loops on one phrase. These
checks judge each :class:`~retain.evaluation.generation.Generation` by simple, documented
rules, so a smoke test can catch a broken model in seconds, long before a full probe run.

The thresholds below are tuned so that ordinary short answers ("Paris", "42", "no",
"1, 2, 3, 4, 5", an answer repeating a word of its question) are never flagged.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from retain.evaluation.generation import Generation, generate_greedy

ECHO_MIN_CHARS = 8
"""An echoed span (prompt, prompt line or substring) must be this long, normalised."""

ECHO_MIN_WORDS = 4
"""An output found inside the prompt is an echo only with this many words: a one-word
answer picked from a multiple-choice prompt is an answer, not an echo, and so is a terse
reply of three words ("How are you?" to "Hello, how are you?": SmolLM2 after LoRA on
one-word answers; with 3 here it read as an echo and stopped the run, issue 25)."""

LOOP_MIN_REPEATS = 3
"""Consecutive repeats of a word n-gram that make a loop."""

LOOP_MAX_NGRAM = 16
"""Longest word n-gram searched for loops: a whole sentence said three times in a row is
the most common degenerate loop, so this goes well past single words."""

LOOP_MIN_COVERAGE = 0.5
"""Share of the output (words, or characters for character loops) a loop must cover."""

CHAR_LOOP_MAX_PERIOD = 8
"""Longest character period searched for loops (``"!!!!"``, ``"abab"``, ``"1111"``)."""

CHAR_LOOP_MIN_REPEATS = 4
"""Consecutive repeats of a character period that make a loop."""

CHAR_LOOP_MIN_CHARS = 8
"""Non-space characters a character loop must span, so that ``"1000000"`` or ``"Hmm..."``
is not a loop while ``"aaaaaaaa"`` is."""

FAILURE_KINDS = ("empty", "whitespace_only", "echo", "loop")
"""Flags that make an output unusable; ``no_eos`` alone is not one (long answers are fine)."""

MAX_EXAMPLES = 3
"""Examples kept per failure kind in a :class:`HealthReport`."""


@dataclass(frozen=True)
class GenerationFlags:
    """What is wrong with one generation; all False for a healthy one.

    Attributes:
        empty: No new tokens at all (EOS came first).
        whitespace_only: New tokens, but the text is blank once stripped.
        echo: The output repeats the prompt (see :func:`is_echo`).
        loop: The output is a repetition loop (see :func:`is_loop`).
        no_eos: The model never emitted EOS: it hit ``max_new_tokens``.
    """

    empty: bool
    whitespace_only: bool
    echo: bool
    loop: bool
    no_eos: bool

    @property
    def failed(self) -> bool:
        """Returns whether any failure kind (all flags but ``no_eos``) is set."""
        return any(getattr(self, kind) for kind in FAILURE_KINDS)

    def names(self) -> tuple[str, ...]:
        """Returns the names of the flags that are set, in field order."""
        return tuple(flag.name for flag in fields(self) if getattr(self, flag.name))


def check_generation(generation: Generation) -> GenerationFlags:
    """Returns the health flags of one generation.

    ``empty`` and ``whitespace_only`` exclude the others except ``no_eos``: a blank
    output cannot echo or loop.
    """
    empty = generation.new_tokens == 0
    blank = not empty and generation.text.strip() == ""
    has_text = not empty and not blank
    return GenerationFlags(
        empty=empty,
        whitespace_only=blank,
        echo=has_text and is_echo(generation.prompt, generation.text),
        loop=has_text and is_loop(generation.text),
        no_eos=not generation.stopped,
    )


def _normalize(text: str) -> str:
    """Returns ``text`` case-folded with whitespace runs collapsed to one space."""
    return " ".join(text.split()).casefold()


def is_echo(prompt: str, output: str) -> bool:
    """Returns whether ``output`` repeats ``prompt`` rather than answering it.

    On normalised text (case-folded, whitespace collapsed), the output is an echo when:

    1. it starts with the prompt, or with one of the prompt's lines, of at least
       :data:`ECHO_MIN_CHARS` characters (the last line is the usual culprit, but a
       model restating ``Q: ...`` from a two-line prompt echoes just the same); or
    2. it lies wholly inside the prompt and has at least :data:`ECHO_MIN_CHARS`
       characters and :data:`ECHO_MIN_WORDS` words.

    A short answer sharing a word with its question ("The sky is blue." to "Is the sky
    blue?") matches neither rule.
    """
    text = _normalize(output)
    whole_prompt = _normalize(prompt)
    spans = [whole_prompt, *(_normalize(line) for line in prompt.splitlines())]
    if any(len(span) >= ECHO_MIN_CHARS and text.startswith(span) for span in spans):
        return True
    return (
        len(text) >= ECHO_MIN_CHARS
        and len(text.split()) >= ECHO_MIN_WORDS
        and text in whole_prompt
    )


def _words(text: str) -> list[str]:
    """Returns the case-folded words of ``text``, edge punctuation stripped.

    A token made only of punctuation (``"!"``) is kept as it is, so ``"! ! ! !"`` loops.
    """
    tokens = text.casefold().split()
    return [token.strip(string.punctuation) or token for token in tokens]


def _longest_periodic_run(sequence: Sequence[str], period: int) -> int:
    """Returns the length of the longest stretch of ``sequence`` with this period.

    A stretch ``s[i : i + length]`` has period ``p`` when every element equals the one
    ``p`` before it; its length counts the first period too, so ``"abab"`` gives 4 for
    ``p = 2`` and ``"ab"`` gives 0 (one period is no repetition).
    """
    longest = run = 0
    for i in range(len(sequence) - period):
        run = run + 1 if sequence[i] == sequence[i + period] else 0
        longest = max(longest, run)
    return longest + period if longest else 0


def _has_loop(
    sequence: Sequence[str], max_period: int, min_repeats: int, min_length: int
) -> bool:
    """Returns whether some period repeats ``min_repeats`` times over most of ``sequence``."""
    for period in range(1, max_period + 1):
        length = _longest_periodic_run(sequence, period)
        if (
            length // period >= min_repeats
            and length >= min_length
            and length >= LOOP_MIN_COVERAGE * len(sequence)
        ):
            return True
    return False


def is_loop(output: str) -> bool:
    """Returns whether ``output`` is a repetition loop.

    Two views, either one suffices:

    1. Words: some n-gram (n = 1 .. :data:`LOOP_MAX_NGRAM`) is repeated at least
       :data:`LOOP_MIN_REPEATS` times in a row, covering at least
       :data:`LOOP_MIN_COVERAGE` of the words (``"Paris Paris Paris"``, ``"I am. I am.
       I am."``).
    2. Characters, spaces removed: some period of 1 .. :data:`CHAR_LOOP_MAX_PERIOD`
       characters is repeated at least :data:`CHAR_LOOP_MIN_REPEATS` times over at
       least :data:`CHAR_LOOP_MIN_CHARS` characters and the same coverage
       (``"aaaaaaaa"``, ``"!!!!!!!!"``, ``"abcabcabcabc"``), which the word view misses
       when there are no spaces.
    """
    words = _words(output)
    if _has_loop(words, LOOP_MAX_NGRAM, LOOP_MIN_REPEATS, min_length=1):
        return True
    chars = list("".join(output.split()))
    return _has_loop(chars, CHAR_LOOP_MAX_PERIOD, CHAR_LOOP_MIN_REPEATS, CHAR_LOOP_MIN_CHARS)


@dataclass(frozen=True)
class HealthExample:
    """One flagged generation, kept to show what a failure looks like.

    Attributes:
        prompt: The prompt.
        text: What the model said.
        flags: Names of every flag set on this generation.
    """

    prompt: str
    text: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class HealthReport:
    """Health of a set of generations; every flag is a share of outputs in [0, 1].

    Attributes:
        n: Generations judged.
        empty: Share with no new tokens.
        whitespace_only: Share with blank text.
        echo: Share that repeat the prompt.
        loop: Share that are repetition loops.
        no_eos: Share that hit ``max_new_tokens`` (reported, not a failure).
        mean_new_tokens: Mean new tokens per generation.
        failures: Share with at least one failure kind (empty, whitespace_only, echo,
            loop). One output with two kinds counts once.
        examples: Up to :data:`MAX_EXAMPLES` examples per failure kind, only for kinds
            that occurred.
    """

    n: int
    empty: float
    whitespace_only: float
    echo: float
    loop: float
    no_eos: float
    mean_new_tokens: float
    failures: float
    examples: dict[str, tuple[HealthExample, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """Returns the report as plain JSON-ready data."""
        return asdict(self)


def generation_health(generations: Iterable[Generation]) -> HealthReport:
    """Judges every generation with :func:`check_generation` and sums up.

    Returns:
        The shares of each flag, the failure share and a few examples per failure kind.

    Raises:
        ValueError: If ``generations`` is empty: shares of nothing are undefined.
    """
    judged = [(generation, check_generation(generation)) for generation in generations]
    if not judged:
        raise ValueError("no generations to judge: pass at least one")
    n = len(judged)

    def share(kind: str) -> float:
        return sum(getattr(flags, kind) for _, flags in judged) / n

    return HealthReport(
        n=n,
        empty=share("empty"),
        whitespace_only=share("whitespace_only"),
        echo=share("echo"),
        loop=share("loop"),
        no_eos=share("no_eos"),
        mean_new_tokens=sum(generation.new_tokens for generation, _ in judged) / n,
        failures=sum(flags.failed for _, flags in judged) / n,
        examples=_examples(judged),
    )


def _examples(
    judged: Sequence[tuple[Generation, GenerationFlags]],
) -> dict[str, tuple[HealthExample, ...]]:
    """Returns the first :data:`MAX_EXAMPLES` generations of each failure kind seen."""
    examples: dict[str, list[HealthExample]] = {}
    for generation, flags in judged:
        names = flags.names()
        for kind in (name for name in names if name in FAILURE_KINDS):
            kept = examples.setdefault(kind, [])
            if len(kept) < MAX_EXAMPLES:
                kept.append(HealthExample(generation.prompt, generation.text, names))
    return {kind: tuple(kept) for kind, kept in examples.items()}


def smoke_test(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 64,
) -> HealthReport:
    """Generates greedily for ``prompts`` and returns the health of the outputs.

    Judge the result by ``failures``: ``no_eos`` is reported but is no failure, since a
    long answer cut at ``max_new_tokens`` is still an answer.

    Raises:
        ValueError: If ``prompts`` is empty, or as :func:`generate_greedy` does.
    """
    if not prompts:
        raise ValueError("smoke_test needs at least one prompt")
    generations = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, label="smoke test")
    return generation_health(generations)

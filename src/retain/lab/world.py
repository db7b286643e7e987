"""The lab's general world: what the tiny base model knows before any fine-tuning.

Six categories of general knowledge, each written both as training text (statements and
question/answer pairs, one document per fact and template) and as probe items in the
trained question format. Arithmetic and comparison probes ask pairs of numbers that
never appear in training (``held_out=True``), so they measure a learned skill rather than
a memorised line; the other categories are recall of trained facts.

Comparisons are asked one way only ("Is 47 greater than 23?"). Asking "greater" and
"less" at random makes the answer the XOR of the relation and the order, which has no
linear signal to start from: in development trials the tiny model stayed at chance on it
for 1,000+ steps, while the one-way question is learned within a few hundred.

Beside the categories, the pretraining text holds plain filler sentences (fluency, and the
held-out drift reference) and general sentences about medicine in the domain task's words
(``n_health``), so that the base model, like a real one, has read the domain's language
before it meets the task.

Everything is a pure function of :class:`WorldSpec`: the same spec gives the same
documents, probes and reference text, byte for byte, on every machine.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from retain.evaluation.probes import ProbeItem, ProbeSuite
from retain.lab import facts

# Bump when any text, template or sampling rule below changes: cached base models are
# keyed by it, and probe results are only comparable within one version.
WORLD_VERSION = "2"


@dataclass(frozen=True)
class WorldSpec:
    """Size and seed of the general world.

    Attributes:
        seed: Seeds every sampling decision.
        add_min: Smallest addend of the two-digit sums.
        add_max: Largest addend of the two-digit sums.
        held_out_sums: Sums kept out of training and asked as probes.
        comparison_pairs: Number pairs asked in training ("Is 47 greater than 23?").
        comparison_probes: Pairs kept out of training and asked as probes.
        counting_probes: Trained successors ("What number comes after 41?") also asked
            as probes; every letter is asked too.
        n_fillers: Filler sentences in training (plain fluent text).
        n_health: General sentences about medicine in training, in the domain task's
            words (:data:`retain.lab.facts.HEALTH_TEMPLATES`): the reading a real base
            model has done, so that its tokenizer and embeddings know the domain's language.
        n_reference: Filler sentences kept out of training: the drift reference text.
        fact_limit: Use only the first N entries of each fact table (small test worlds).
        greeting_repeats: Copies of each greeting per epoch; there are only a dozen.
        digit_sum_repeats: Copies of the one-digit addition table (0 + 0 to 9 + 9) per
            epoch. The table is the carry rule in isolation; in development trials the
            two-digit skill appeared earlier with it than without it.
    """

    seed: int = 0
    add_min: int = 10
    add_max: int = 39
    held_out_sums: int = 60
    comparison_pairs: int = 600
    comparison_probes: int = 60
    counting_probes: int = 20
    n_fillers: int = 200
    n_health: int = 300
    n_reference: int = 200
    fact_limit: int | None = None
    greeting_repeats: int = 6
    digit_sum_repeats: int = 2

    def to_dict(self) -> dict[str, object]:
        """Returns the spec as a JSON-ready dict (for cache keys and metadata)."""
        return asdict(self)


def qa(question: str, answer: str) -> str:
    """Returns one question/answer training document in the lab's format."""
    return f"Q: {question}\nA: {answer}"


def qa_prompt(question: str) -> str:
    """Returns the prompt that asks ``question`` in the lab's format (answer follows)."""
    return f"Q: {question}\nA:"


@dataclass
class _Category:
    """What one category contributes: training documents and probe items."""

    documents: list[str] = field(default_factory=list)
    probes: list[ProbeItem] = field(default_factory=list)


def _probe(
    category: str, key: str, question: str, answer: str, options: list[str], held_out: bool,
    statements: list[str] | None = None,
) -> ProbeItem:
    """Returns a probe item; the suite's space delimiter joins prompt and answer.
    ``statements`` are the training documents that state its fact."""
    distinct = list(dict.fromkeys([answer, *options]))
    return ProbeItem(
        id=f"{category}/{key}",
        category=category,
        prompt=qa_prompt(question),
        answer=answer,
        options=tuple(distinct),
        held_out=held_out,
        statements=tuple(dict.fromkeys(statements or ())),
    )


def _limit(table: tuple[tuple[str, str], ...], spec: WorldSpec) -> list[tuple[str, str]]:
    return list(table[: spec.fact_limit] if spec.fact_limit else table)


def _others(rng: random.Random, pool: list[str], exclude: str, k: int) -> list[str]:
    candidates = [value for value in pool if value != exclude]
    return rng.sample(candidates, min(k, len(candidates)))


def _arithmetic(rng: random.Random, spec: WorldSpec) -> _Category:
    numbers = range(spec.add_min, spec.add_max + 1)
    pairs = [(a, b) for a in numbers for b in numbers if a <= b]
    held = set(rng.sample(pairs, min(spec.held_out_sums, len(pairs) // 4)))
    out = _Category()
    table = [qa(f"What is {a} + {b}?", str(a + b)) for a in range(10) for b in range(10)]
    out.documents += table * spec.digit_sum_repeats
    for a in numbers:
        for b in numbers:
            total = a + b
            if (min(a, b), max(a, b)) in held:
                continue
            out.documents.append(qa(f"What is {a} + {b}?", str(total)))
    for a, b in sorted(held):
        if rng.random() < 0.5:
            a, b = b, a
        total = a + b
        wrong = [str(total + delta) for delta in (1, -1, 10, -10)]
        out.probes.append(
            _probe("arithmetic", f"{a}+{b}", f"What is {a} + {b}?", str(total), wrong, True)
        )
    return out


def _capitals(rng: random.Random, spec: WorldSpec) -> _Category:
    table = _limit(facts.CAPITALS, spec)
    cities = [city for _, city in table]
    out = _Category()
    for country, city in table:
        documents = [
            f"The capital of {country} is {city}.",
            qa(f"What is the capital of {country}?", city),
            qa(f"Which city is the capital of {country}?", city),
        ]
        out.documents += documents
        out.probes.append(
            _probe(
                "capitals", country.removeprefix("the ").lower(),
                f"What is the capital of {country}?", city,
                _others(rng, cities, city, 3), False, documents,
            )
        )
    return out


def _word_forms(rng: random.Random, spec: WorldSpec) -> _Category:
    out = _Category()
    pairs = _limit(facts.OPPOSITES, spec)
    words = [word for pair in pairs for word in pair]
    for first, second in pairs:
        # Opposites are one fact read both ways: each direction's documents state both probes'.
        documents = [text for word, opposite in ((first, second), (second, first)) for text in (
            f"The opposite of {word} is {opposite}.",
            qa(f"What is the opposite of {word}?", opposite),
            qa(f"What word means the opposite of {word}?", opposite),
        )]
        out.documents += documents
        for word, opposite in ((first, second), (second, first)):
            out.probes.append(
                _probe(
                    "word_forms", f"opposite-{word}", f"What is the opposite of {word}?",
                    opposite, [word, *_others(rng, words, opposite, 3)], False, documents,
                )
            )
    plurals = _limit(facts.PLURALS, spec)
    plural_words = [plural for _, plural in plurals]
    for singular, plural in plurals:
        documents = [
            f"One {singular}, two {plural}.",
            qa(f"What is the plural of {singular}?", plural),
            qa(f"How do you say more than one {singular}?", plural),
        ]
        out.documents += documents
        out.probes.append(
            _probe(
                "word_forms", f"plural-{singular}", f"What is the plural of {singular}?",
                plural, [singular, singular + "s", *_others(rng, plural_words, plural, 2)],
                False, documents,
            )
        )
    return out


def _counting(rng: random.Random, spec: WorldSpec) -> _Category:
    out = _Category()
    numbers = list(range(1, 99))

    def successor(n: int) -> list[str]:  # the documents that state n + 1 follows n
        return [qa(f"What number comes after {n}?", str(n + 1)), qa(f"What number comes before {n + 1}?", str(n))]

    for n in numbers:
        out.documents += successor(n)
    for n in sorted(rng.sample(numbers, min(spec.counting_probes, len(numbers)))):
        wrong = [str(n), str(n + 2), str(n - 1)]
        out.probes.append(
            _probe("counting", f"after-{n}", f"What number comes after {n}?", str(n + 1), wrong, False,
                   successor(n))
        )
    letters = string.ascii_lowercase
    for index, letter in enumerate(letters[:-1]):
        following = letters[index + 1]
        documents = [
            f"The letter after {letter} is {following}.",
            qa(f"What letter comes after {letter}?", following),
            qa(f"Which letter follows {letter}?", following),
        ]
        out.documents += documents
        wrong = [letter, letters[(index + 2) % 26], letters[index - 1]]
        out.probes.append(
            _probe("counting", f"letter-{letter}", f"What letter comes after {letter}?",
                   following, wrong, False, documents)
        )
    return out


def _comparison(rng: random.Random, spec: WorldSpec) -> _Category:
    out = _Category()
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100) if a != b]
    chosen = rng.sample(pairs, spec.comparison_pairs + spec.comparison_probes)
    held = chosen[: spec.comparison_probes]
    held_keys = {frozenset(pair) for pair in held}
    for a, b in chosen[spec.comparison_probes :]:
        if frozenset((a, b)) not in held_keys:
            out.documents.append(qa(f"Is {a} greater than {b}?", "yes" if a > b else "no"))
    for a, b in held:
        answer = "yes" if a > b else "no"
        out.probes.append(
            _probe("comparison", f"{a}-greater-{b}", f"Is {a} greater than {b}?", answer,
                   ["no" if answer == "yes" else "yes"], True)
        )
    return out


def _greetings(rng: random.Random, spec: WorldSpec) -> _Category:
    out = _Category()
    replies = [reply for _, reply in facts.GREETINGS]
    for index, (prompt, reply) in enumerate(facts.GREETINGS):
        out.documents += [qa(prompt, reply)] * spec.greeting_repeats
        out.probes.append(
            _probe("greetings", str(index), prompt, reply, _others(rng, replies, reply, 3), False,
                   [qa(prompt, reply)])
        )
    return out


def _filler_sentence(rng: random.Random) -> str:
    subject = rng.choice(facts.FILLER_SUBJECTS)
    sentence = (
        f"{subject} {rng.choice(facts.FILLER_VERBS)} {rng.choice(facts.FILLER_OBJECTS)} "
        f"{rng.choice(facts.FILLER_ENDINGS)}."
    )
    return sentence[0].upper() + sentence[1:]


def _health_sentence(rng: random.Random) -> str:
    template = rng.choice(facts.HEALTH_TEMPLATES)
    sentence = template.format(kind=rng.choice(facts.CONDITION_KINDS), outcome=rng.choice(facts.OUTCOMES),
                               n=rng.randrange(40, 600, 2))
    return sentence[0].upper() + sentence[1:]


def _distinct(make: Callable[[random.Random], str], rng: random.Random, count: int, what: str) -> list[str]:
    """Returns ``count`` distinct sentences from ``make``, in the order first drawn."""
    sentences = list(dict.fromkeys(make(rng) for _ in range(4 * count)))
    if len(sentences) < count:
        raise ValueError(f"{what} vocabulary too small for {count} distinct sentences")
    return sentences[:count]


# Category name -> generator. The order is the order of probes in the suite.
CATEGORIES: dict[str, Callable[[random.Random, WorldSpec], _Category]] = {
    "arithmetic": _arithmetic,
    "capitals": _capitals,
    "word_forms": _word_forms,
    "counting": _counting,
    "comparison": _comparison,
    "greetings": _greetings,
}


@dataclass(frozen=True)
class LabWorld:
    """The general world generated from a spec.

    Attributes:
        spec: What generated it.
        documents: Pretraining documents, shuffled; each is one fact or one Q/A pair and
            is trained with BOS before and EOS after it.
        probes: The lab probe suite (name ``lab``, versioned with :data:`WORLD_VERSION`);
            each recall item lists the documents that state its fact (``statements``).
        reference: Held-out fluent sentences, for perplexity and drift measurements.
    """

    spec: WorldSpec
    documents: tuple[str, ...]
    probes: ProbeSuite
    reference: tuple[str, ...]

    @property
    def rehearsal(self) -> tuple[str, ...]:
        """The pretraining documents that state no probed fact, in corpus order: what the
        lab rehearses (replay, self-augmentation, EWC's Fisher), so that no probe is ever
        judged on a fact rehearsal restated. What is left: the two-digit sums and
        comparisons the probes do not ask, the successors of unprobed numbers, filler
        sentences and the sentences about medicine. No capital, word form, letter or
        greeting remains: every one of them is probed."""
        stated = {text for item in self.probes.items for text in item.statements}
        return tuple(document for document in self.documents if document not in stated)


def build_world(spec: WorldSpec | None = None) -> LabWorld:
    """Returns the general world for ``spec`` (defaults when None).

    Each category draws from its own random stream seeded by ``(seed, category)``, so
    resizing one category leaves the others unchanged.
    """
    spec = spec or WorldSpec()
    documents: list[str] = []
    probes: list[ProbeItem] = []
    for name, generate in CATEGORIES.items():
        part = generate(random.Random(f"{spec.seed}:{name}"), spec)
        documents += part.documents
        probes += part.probes
    sentences = _distinct(_filler_sentence, random.Random(f"{spec.seed}:fillers"),
                          spec.n_fillers + spec.n_reference, "filler")
    reference = sentences[: spec.n_reference]
    documents += sentences[spec.n_reference :]
    documents += _distinct(_health_sentence, random.Random(f"{spec.seed}:health"), spec.n_health, "health")
    random.Random(f"{spec.seed}:shuffle").shuffle(documents)
    suite = ProbeSuite(name="lab", version=f"lab-world-{WORLD_VERSION}", items=tuple(probes))
    return LabWorld(spec=spec, documents=tuple(documents), probes=suite, reference=tuple(reference))

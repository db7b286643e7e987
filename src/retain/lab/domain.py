"""The lab's narrow domain task: PubMedQA-style questions about invented drugs.

Each item gives a short study context, asks whether a drug improves an outcome for a
condition, and expects ``yes``, ``no`` or ``maybe``; the answer follows from one sentence
of the context (the finding), and a second finding about another outcome is sometimes
there to be ignored. Drug names are invented and every drug appears in one split only,
so validation and test measure generalisation, not recall. The ``ood`` split asks with
question templates that training never uses: the evaluation gap made measurable.

Flawed variants for audit tests (duplicates, conflicting labels, test items leaked into
training) are produced only when their rates are set; every inserted row says which flaw
it carries in :attr:`DomainExample.flaw`.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from retain.io import atomic_write_text
from retain.lab.facts import CONDITION_KINDS, OUTCOMES

DOMAIN_VERSION = "2"
# Clean training rows of the lab task unless a caller asks for another size: what `retain
# lab`, `retain lab data` and `retain lab compare` train on. The lab base model has read
# the domain's language (retain.lab.facts.HEALTH_TEMPLATES), and LoRA learns the task from
# 1,000 rows in 2 epochs (docs/RESULTS.md, "Data size").
TRAIN_ROWS = 1000
LABELS = ("yes", "no", "maybe")
SPLITS = ("train", "validation", "test", "ood")

_PREFIXES = (
    "Zor", "Vel", "Tra", "Mex", "Quin", "Dal", "Bre", "Fen", "Lu", "Ost", "Pra", "Cor",
    "Nim", "Sal", "Ter", "Vor", "Ka", "Ril", "Dex", "Ob", "Pel", "Syn", "Tor", "Ul",
    "Hal", "Gor", "Mir", "Nex", "Pax", "Rho",
)
_MIDDLES = (
    "va", "ti", "ro", "ca", "mi", "de", "lo", "fa", "ne", "xo", "pa", "zu", "be", "ri",
    "so", "ga",
)
_SUFFIXES = (
    "lin", "mab", "dol", "pril", "zole", "cept", "tide", "vir", "stat", "nib", "fen",
    "xan", "rex", "sone",
)
_CONDITION_NAMES = (
    "Harlow", "Denbrook", "Marsh", "Kellin", "Orvath", "Pryce", "Tamsin", "Vance",
    "Wexley", "Ashby", "Corran", "Elmsley", "Fenwick", "Galt", "Hollis", "Ingram",
)

_INTROS = (
    "A randomized trial enrolled {n} adults with {condition}.",
    "Researchers followed {n} patients with {condition} for one year.",
    "This study tested {drug} in {n} patients with {condition}.",
)
FINDINGS: dict[str, tuple[str, ...]] = {
    "yes": (
        "Patients given {drug} had lower {outcome} than those given placebo.",
        "{drug} clearly reduced {outcome} compared with placebo.",
        "Compared with placebo, {drug} lowered {outcome} significantly.",
    ),
    "no": (
        "{drug} did not change {outcome} compared with placebo.",
        "There was no difference in {outcome} between the {drug} and placebo groups.",
        "Patients given {drug} had the same {outcome} as those given placebo.",
    ),
    "maybe": (
        "{drug} lowered {outcome} in some patients, but the overall effect was not significant.",
        "The effect of {drug} on {outcome} was unclear and the results were mixed.",
        "{drug} may have reduced {outcome}, but the trial was too small to be sure.",
    ),
}
TRAIN_QUESTIONS = (
    "Does {drug} reduce {outcome} in patients with {condition}?",
    "Is {drug} effective at lowering {outcome} in {condition}?",
    "Did {drug} decrease {outcome} among patients with {condition}?",
)
# Never used by train, validation or test: the out-of-distribution wording.
OOD_QUESTIONS = (
    "According to this study, can people with {condition} expect less {outcome} on {drug}?",
    "Is there evidence that {drug} brings down {outcome} in {condition}?",
    "Based on the results, would {outcome} be lower for a {condition} patient taking {drug}?",
)


@dataclass(frozen=True)
class DomainSpec:
    """Sizes, label mix, seed and optional flaws of the domain task.

    Attributes:
        seed: Seeds every sampling decision.
        n_train: Clean training items (before flawed rows are added).
        n_validation: Validation items (training distribution).
        n_test: Test items (training distribution, unseen drugs).
        n_ood: Out-of-distribution items (unseen question templates).
        label_weights: Sampling weights of yes, no, maybe (PubMedQA's expert set is
            55/34/11; the lab default gives maybe a little more room).
        distractor_rate: Share of contexts with a second finding about another outcome.
        duplicates: Rows added to train as copies of train rows, as a share of
            ``n_train``; half exact copies, half near copies (one number changed).
        conflicts: Rows added to train as copies with a different answer, as a share
            of ``n_train``.
        contamination: Test rows copied into train, as a share of ``n_test``.
    """

    seed: int = 0
    n_train: int = TRAIN_ROWS
    n_validation: int = 200
    n_test: int = 400
    n_ood: int = 400
    label_weights: tuple[float, float, float] = (0.45, 0.35, 0.20)
    distractor_rate: float = 0.5
    duplicates: float = 0.0
    conflicts: float = 0.0
    contamination: float = 0.0

    def __post_init__(self) -> None:
        sizes = (self.n_train, self.n_validation, self.n_test, self.n_ood)
        if min(sizes) < 0:
            raise ValueError(f"split sizes must be >= 0, got {sizes}")
        for name in ("distractor_rate", "duplicates", "conflicts", "contamination"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if len(self.label_weights) != 3 or min(self.label_weights) < 0 or sum(self.label_weights) <= 0:
            raise ValueError(f"label_weights must be 3 non-negative weights, got {self.label_weights}")


@dataclass(frozen=True)
class DomainExample:
    """One domain item in retain's prompt/response format.

    Attributes:
        id: Unique id (``<split>-<n>``; flawed copies add a suffix).
        prompt: Context, question and the ``Answer:`` cue.
        response: The answer as a continuation of the prompt (leading space).
        label: ``yes``, ``no`` or ``maybe``.
        split: The split it was generated for.
        drug: The invented drug the question asks about.
        condition: The invented condition.
        outcome: The outcome the question asks about (the finding to read).
        flaw: None for clean rows; else ``duplicate``, ``near_duplicate``, ``conflict``
            or ``contamination``.
        source_id: For flawed rows, the id of the row it copies.
    """

    id: str
    prompt: str
    response: str
    label: str
    split: str
    drug: str = ""
    condition: str = ""
    outcome: str = ""
    flaw: str | None = None
    source_id: str | None = None

    def to_record(self) -> dict[str, str]:
        """Returns the JSON record written to files (``prompt``/``response`` plus ids)."""
        record = {"id": self.id, "prompt": self.prompt, "response": self.response,
                  "label": self.label}
        if self.flaw:
            record["flaw"] = self.flaw
            record["source_id"] = self.source_id or ""
        return record


@dataclass(frozen=True)
class DomainTask:
    """The generated splits."""

    spec: DomainSpec
    train: tuple[DomainExample, ...]
    validation: tuple[DomainExample, ...]
    test: tuple[DomainExample, ...]
    ood: tuple[DomainExample, ...]
    version: str = field(default=DOMAIN_VERSION)

    def splits(self) -> dict[str, tuple[DomainExample, ...]]:
        """Returns the splits by name, in :data:`SPLITS` order."""
        return {name: getattr(self, name) for name in SPLITS}


def _drug_names(rng: random.Random) -> list[str]:
    """Returns every invented drug name once, in a seeded order."""
    names = ["".join(parts).capitalize() for parts in itertools.product(_PREFIXES, _MIDDLES, _SUFFIXES)]
    names = list(dict.fromkeys(name[0] + name[1:].lower() for name in names))
    rng.shuffle(names)
    return names


def _conditions() -> list[str]:
    return [f"{name} {kind}" for name in _CONDITION_NAMES for kind in CONDITION_KINDS]


def _make_example(
    rng: random.Random, drug: str, split: str, index: int, label: str,
    questions: tuple[str, ...], spec: DomainSpec,
) -> DomainExample:
    condition = rng.choice(_conditions())
    outcome, other_outcome = rng.sample(OUTCOMES, 2)
    n = rng.randrange(40, 600, 2)
    sentences = [rng.choice(FINDINGS[label]).format(drug=drug, outcome=outcome)]
    if rng.random() < spec.distractor_rate:
        other_label = rng.choice(LABELS)
        sentences.append(rng.choice(FINDINGS[other_label]).format(drug=drug, outcome=other_outcome))
        rng.shuffle(sentences)
    intro = rng.choice(_INTROS).format(n=n, condition=condition, drug=drug)
    context = " ".join([intro, *sentences])
    question = rng.choice(questions).format(drug=drug, outcome=outcome, condition=condition)
    return DomainExample(
        id=f"{split}-{index:05d}",
        prompt=f"Context: {context}\nQuestion: {question}\nAnswer:",
        response=" " + label,
        label=label,
        split=split,
        drug=drug,
        condition=condition,
        outcome=outcome,
    )


def build_domain(spec: DomainSpec | None = None) -> DomainTask:
    """Returns the domain splits for ``spec`` (defaults when None).

    Raises:
        ValueError: If the splits need more distinct drug names than the generator has.
    """
    spec = spec or DomainSpec()
    rng = random.Random(f"{spec.seed}:domain")
    drugs = _drug_names(rng)
    sizes = {"train": spec.n_train, "validation": spec.n_validation, "test": spec.n_test, "ood": spec.n_ood}
    if sum(sizes.values()) > len(drugs):
        raise ValueError(f"at most {len(drugs)} domain items in all; asked for {sum(sizes.values())}")
    built: dict[str, list[DomainExample]] = {}
    offset = 0
    for split, count in sizes.items():
        questions = OOD_QUESTIONS if split == "ood" else TRAIN_QUESTIONS
        labels = rng.choices(LABELS, weights=spec.label_weights, k=count)
        built[split] = [
            _make_example(rng, drugs[offset + i], split, i, labels[i], questions, spec)
            for i in range(count)
        ]
        offset += count
    train = _add_flaws(built["train"], built["test"], spec, random.Random(f"{spec.seed}:flaws"))
    return DomainTask(
        spec=spec, train=tuple(train), validation=tuple(built["validation"]),
        test=tuple(built["test"]), ood=tuple(built["ood"]),
    )


def _near_copy(example: DomainExample) -> str:
    """Returns the prompt with its patient count changed: same item, new bytes."""
    words = example.prompt.split(" ")
    for i, word in enumerate(words):
        if word.isdigit():
            words[i] = str(int(word) + 1)
            return " ".join(words)
    return example.prompt.replace("Context: ", "Context:  ", 1)


def _add_flaws(
    train: list[DomainExample], test: list[DomainExample], spec: DomainSpec, rng: random.Random
) -> list[DomainExample]:
    """Returns ``train`` with the flawed rows ``spec`` asks for, shuffled in."""
    if not (spec.duplicates or spec.conflicts or spec.contamination) or not train:
        return train
    extra: list[DomainExample] = []
    n_duplicates = round(spec.duplicates * len(train))
    for i, source in enumerate(rng.sample(train, min(n_duplicates, len(train)))):
        near = i % 2 == 1
        extra.append(replace(
            source, id=f"{source.id}-{'near' if near else 'dup'}",
            prompt=_near_copy(source) if near else source.prompt,
            flaw="near_duplicate" if near else "duplicate", source_id=source.id,
        ))
    for source in rng.sample(train, min(round(spec.conflicts * len(train)), len(train))):
        other = rng.choice([label for label in LABELS if label != source.label])
        extra.append(replace(
            source, id=f"{source.id}-conflict", response=" " + other, label=other,
            flaw="conflict", source_id=source.id,
        ))
    for source in rng.sample(test, min(round(spec.contamination * len(test)), len(test))):
        extra.append(replace(
            source, id=f"{source.id}-leak", split="train", flaw="contamination",
            source_id=source.id,
        ))
    rows = train + extra
    rng.shuffle(rows)
    return rows


def write_jsonl(examples: Iterable[DomainExample], path: Path) -> int:
    """Writes ``examples`` as JSONL records, atomically; returns the number written."""
    lines = [json.dumps(example.to_record(), ensure_ascii=False) for example in examples]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def spec_dict(spec: DomainSpec) -> dict[str, object]:
    """Returns ``spec`` as a JSON-ready dict."""
    return asdict(spec)

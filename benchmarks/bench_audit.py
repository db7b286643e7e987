"""Overlap audit at scale: time and accuracy of the duplicate, conflict and leak checks.

Generates synthetic prompt/response rows of random words with planted flaws (exact
copies, near copies with a few characters of the prompt edited, copies with another
answer, evaluation rows copied from training) and times ``exact_duplicates +
near_duplicates + conflicting_labels + contamination`` at 10,000 and 100,000 rows.
Near copies and conflicts are scored by recall and precision over the planted rows.
"""

from __future__ import annotations

import random
import time

from retain.audit.overlap import (
    conflict_groups,
    conflicting_labels,
    contamination,
    exact_duplicates,
    near_duplicate_clusters,
    near_duplicates,
    normalize_text,
)
from retain.data import Example

SIZES = (10_000, 100_000)
SEED = 0
DUPLICATES = 0.02  # shares of the clean rows
NEAR = 0.02
CONFLICTS = 0.01
EVAL_SHARE = 0.02  # evaluation rows, as a share of the clean rows
LEAKED = 0.10  # share of evaluation rows copied from training
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "dor", "len", "tas")


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(_word(rng) for _ in range(words))


def _edit(rng: random.Random, text: str, edits: int = 2) -> str:
    """Returns ``text`` with ``edits`` letters replaced by another letter."""
    chars = list(text)
    positions = [i for i, char in enumerate(chars) if char.isalpha()]
    for position in rng.sample(positions, edits):
        chars[position] = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != chars[position]])
    return "".join(chars)


def make_data(n: int, seed: int = SEED) -> dict[str, object]:
    """Returns synthetic training and evaluation rows and the planted flaws' row indices."""
    rng = random.Random(f"{seed}:{n}")
    clean = [(_sentence(rng, 14) + "?", _sentence(rng, 7) + ".") for _ in range(n)]
    rows = list(clean)
    planted: dict[str, list[tuple[int, int]]] = {"duplicate": [], "near": [], "conflict": []}
    for kind, share in (("duplicate", DUPLICATES), ("near", NEAR), ("conflict", CONFLICTS)):
        for source in rng.sample(range(n), round(share * n)):
            prompt, response = clean[source]
            if kind == "near":
                prompt = _edit(rng, prompt)
            elif kind == "conflict":
                response = _sentence(rng, 7) + "."
            planted[kind].append((source, len(rows)))
            rows.append((prompt, response))
    order = list(range(len(rows)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    train = [Example(prompt=rows[old][0], response=rows[old][1], line=new + 1) for new, old in enumerate(order)]
    planted = {kind: [(position[a], position[b]) for a, b in pairs] for kind, pairs in planted.items()}
    n_eval = round(EVAL_SHARE * n)
    leaked = rng.sample(range(n), round(LEAKED * n_eval))
    eval_rows = [Example(prompt=clean[source][0], response=clean[source][1], line=i + 1)
                 for i, source in enumerate(leaked)]
    eval_rows += [Example(prompt=_sentence(rng, 14) + "?", response=_sentence(rng, 7) + ".",
                          line=len(leaked) + i + 1) for i in range(n_eval - len(leaked))]
    return {"train": train, "eval": eval_rows, "planted": planted, "leaked": len(leaked)}


def _scores(
    train: list[Example], groups: list[list[int]], pairs: list[tuple[int, int]]
) -> dict[str, float]:
    """Returns recall and precision of ``groups`` against planted ``pairs``.

    Rows are compared by normalised text, so an exact copy standing in for a planted
    row (the checks keep whichever copy comes first) counts as that row.
    """
    def text(row: int) -> tuple[str, str]:
        return normalize_text(train[row].prompt), normalize_text(train[row].response)

    found = {text(row) for group in groups for row in group}
    truth = {text(row) for pair in pairs for row in pair}
    hit = len(found & truth)
    return {"recall": hit / len(truth) if truth else 1.0, "precision": hit / len(found) if found else 1.0}


def measure(n: int) -> dict[str, object]:
    """Returns the audit's time, counts and accuracy on ``n`` synthetic clean rows."""
    data = make_data(n)
    train, eval_rows, planted = data["train"], data["eval"], data["planted"]
    started = time.perf_counter()
    findings = [exact_duplicates(train), near_duplicates(train), conflicting_labels(train),
                *contamination(train, eval_rows)]
    seconds = time.perf_counter() - started
    counts = {finding.code: finding.count for finding in findings if finding is not None}
    return {
        "rows": len(train), "seconds": round(seconds, 2), "counts": counts,
        "planted": {"exact_duplicates": len(planted["duplicate"]), "near_duplicates": len(planted["near"]),
                    "conflicting_labels": len(planted["conflict"]), "train_eval_overlap": data["leaked"]},
        "near_duplicates": _scores(train, near_duplicate_clusters(train), planted["near"]),
        "conflicts": _scores(train, conflict_groups(train), planted["conflict"]),
    }


def run(sizes: tuple[int, ...] = SIZES) -> dict:
    by_size = {str(n): measure(n) for n in sizes}
    small, large = by_size[str(min(sizes))], by_size[str(max(sizes))]
    return {
        "sizes": by_size,
        "seconds_largest": large["seconds"],
        "time_ratio": round(large["seconds"] / max(small["seconds"], 1e-9), 2),
    }


def markdown(result: dict) -> str:
    lines = [
        "## Data audit: overlap checks at scale\n",
        f"Measured {result.get('date', '?')}. Command: `python benchmarks/run.py audit`. Synthetic "
        "rows of random words (~150 characters) with planted exact copies (2%), near copies "
        "(2%, two letters of the prompt edited), conflicting answers (1%) and an evaluation set "
        "(2% of the rows, 10% of it copied from training). Time of `exact_duplicates + "
        "near_duplicates + conflicting_labels + contamination`; recall and precision are "
        "over the planted rows (targets: ratio <= 12, recall and precision >= 0.95):\n",
        "| rows | seconds | near-dup recall | near-dup precision | conflict recall | conflict precision |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for size in result["sizes"].values():
        near, conflicts = size["near_duplicates"], size["conflicts"]
        lines.append(
            f"| {size['rows']:,} | {size['seconds']:.1f} | {near['recall']:.3f} | "
            f"{near['precision']:.3f} | {conflicts['recall']:.3f} | {conflicts['precision']:.3f} |"
        )
    lines.append(f"\nTime ratio, largest over smallest: {result['time_ratio']:.1f}x.\n")
    return "\n".join(lines)

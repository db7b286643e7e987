"""The data audit at scale: time of the whole audit, and accuracy of its overlap checks.

Generates synthetic prompt/response rows of random words with planted flaws (exact
copies, near copies with a few characters of the prompt edited, copies with another
answer, evaluation rows copied from training), writes them as JSONL, and times the
whole ``retain audit`` (reading, size, degenerate answers, formats and labels, token
lengths with the lab tokenizer, duplicates, conflicts, train/eval and probe
contamination against the 358-item general suite) at 10,000 and 100,000 rows; the
overlap checks alone are timed too. Near copies and conflicts are scored by recall and
precision over the planted rows.

Peer: datasketch's ``MinHash`` + ``MinHashLSH`` (same threshold, 128 permutations,
character 5-grams of the same normalised text) finds near duplicates in the 10,000-row
set; its time and accuracy sit beside retain's numpy implementation in the same run.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from retain.audit.contamination import contamination
from retain.audit.minhash import NUM_PERM, SHINGLE
from retain.audit.overlap import (
    NEAR_THRESHOLD,
    conflict_groups,
    conflicting_labels,
    exact_duplicates,
    near_duplicate_clusters,
    near_duplicates,
    normalize_text,
)
from retain.audit.runner import run_audit
from retain.config import RetainConfig
from retain.data.rows import Example
from retain.evaluation.suites import load_suite
from retain.lab.plugin import tokenizer as lab_tokenizer

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


def measure(n: int, tokenizer, probes) -> dict[str, object]:
    """Returns the audit's time, counts and accuracy on ``n`` synthetic clean rows."""
    data = make_data(n)
    train, eval_rows, planted = data["train"], data["eval"], data["planted"]
    with tempfile.TemporaryDirectory() as tmp:
        train_path, eval_path = Path(tmp) / "train.jsonl", Path(tmp) / "eval.jsonl"
        for path, rows in ((train_path, train), (eval_path, eval_rows)):
            path.write_text("".join(json.dumps({"prompt": row.prompt, "response": row.response}) + "\n"
                                    for row in rows))
        started = time.perf_counter()
        report = run_audit(RetainConfig(), train_path, eval_data=eval_path, allow_small=True,
                           probes=probes, tokenizer=tokenizer)
        full_seconds = time.perf_counter() - started
    started = time.perf_counter()
    exact_duplicates(train), near_duplicates(train), conflicting_labels(train)
    contamination(train, eval_rows)
    overlap_seconds = time.perf_counter() - started
    counts = {finding.code: finding.count for finding in report.findings}
    return {
        "rows": len(train), "seconds": round(full_seconds, 2),
        "overlap_seconds": round(overlap_seconds, 2), "counts": counts,
        "planted": {"exact_duplicates": len(planted["duplicate"]), "near_duplicates": len(planted["near"]),
                    "conflicting_labels": len(planted["conflict"]), "train_eval_overlap": data["leaked"]},
        "near_duplicates": _scores(train, near_duplicate_clusters(train), planted["near"]),
        "conflicts": _scores(train, conflict_groups(train), planted["conflict"]),
    }


def datasketch_peer(n: int) -> dict[str, object]:
    """Times near-duplicate search with datasketch and with retain on the same rows."""
    from datasketch import MinHash, MinHashLSH

    data = make_data(n)
    train, planted = data["train"], data["planted"]["near"]
    started = time.perf_counter()
    lsh = MinHashLSH(threshold=NEAR_THRESHOLD, num_perm=NUM_PERM)
    pairs = set()
    for index, row in enumerate(train):
        text = f"{normalize_text(row.prompt)} {normalize_text(row.response)}"
        signature = MinHash(num_perm=NUM_PERM)
        signature.update_batch([text[i : i + SHINGLE].encode() for i in range(len(text) - SHINGLE + 1)])
        pairs.update((other, index) for other in lsh.query(signature))
        lsh.insert(index, signature)
    peer_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ours = near_duplicate_clusters(train)
    retain_seconds = time.perf_counter() - started
    return {
        "rows": len(train),
        "datasketch_seconds": round(peer_seconds, 2), "retain_seconds": round(retain_seconds, 2),
        "speedup": round(peer_seconds / max(retain_seconds, 1e-9), 1),
        "datasketch": _scores(train, _groups(pairs), planted),
        "retain": _scores(train, ours, planted),
    }


def _groups(pairs: set[tuple[int, int]]) -> list[list[int]]:
    """Returns the connected groups of ``pairs`` (datasketch's candidates, unverified)."""
    groups: dict[int, set[int]] = {}
    for first, second in pairs:
        merged = groups.get(first, {first}) | groups.get(second, {second})
        for row in merged:
            groups[row] = merged
    return [sorted(group) for group in {id(group): group for group in groups.values()}.values()]


def run(sizes: tuple[int, ...] = SIZES) -> dict:
    tokenizer = lab_tokenizer()
    probes = [load_suite("general")]
    by_size = {str(n): measure(n, tokenizer, probes) for n in sizes}
    small, large = by_size[str(min(sizes))], by_size[str(max(sizes))]
    return {
        "sizes": by_size,
        "seconds_largest": large["seconds"],
        "time_ratio": round(large["seconds"] / max(small["seconds"], 1e-9), 2),
        "overlap_time_ratio": round(large["overlap_seconds"] / max(small["overlap_seconds"], 1e-9), 2),
        "peer": datasketch_peer(min(sizes)),
    }


def markdown(result: dict) -> str:
    lines = [
        "## Data audit at scale\n",
        f"Measured {result.get('date', '?')}. Command: `python benchmarks/run.py audit`. Synthetic "
        "rows of random words (~150 characters) with planted exact copies (2%), near copies "
        "(2%, two letters of the prompt edited), conflicting answers (1%) and an evaluation set "
        "(2% of the rows, 10% of it copied from training), written as JSONL. *Full audit* is "
        "`run_audit` end to end: reading the file, every check including token lengths with "
        "the lab tokenizer, and contamination against the eval file and the 358-item general "
        "suite. *Overlap* is `exact_duplicates + near_duplicates + conflicting_labels + "
        "contamination` alone. Recall and precision are over the planted rows (targets: full "
        "audit of 100k rows under 60 s, time ratio <= 12, recall and precision >= 0.95):\n",
        "| rows | full audit s | overlap s | near-dup recall | near-dup precision | "
        "conflict recall | conflict precision |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size in result["sizes"].values():
        near, conflicts = size["near_duplicates"], size["conflicts"]
        lines.append(
            f"| {size['rows']:,} | {size['seconds']:.1f} | {size['overlap_seconds']:.1f} | "
            f"{near['recall']:.3f} | {near['precision']:.3f} | {conflicts['recall']:.3f} | "
            f"{conflicts['precision']:.3f} |"
        )
    lines.append(f"\nTime ratio, largest over smallest: full audit {result['time_ratio']:.1f}x, "
                 f"overlap checks {result['overlap_time_ratio']:.1f}x.\n")
    peer = result.get("peer")
    if peer:
        lines += [
            f"Near-duplicate search on the {peer['rows']:,}-row set, retain (numpy MinHash + LSH, "
            "candidates verified by exact Jaccard) beside datasketch's `MinHash` + `MinHashLSH` "
            "(candidates unverified), same threshold, permutations and shingles:\n",
            "| implementation | seconds | recall | precision |",
            "| --- | --- | --- | --- |",
            f"| retain | {peer['retain_seconds']:.2f} | {peer['retain']['recall']:.3f} | "
            f"{peer['retain']['precision']:.3f} |",
            f"| datasketch | {peer['datasketch_seconds']:.2f} | {peer['datasketch']['recall']:.3f} | "
            f"{peer['datasketch']['precision']:.3f} |",
            f"\nretain is {peer['speedup']:.1f}x faster in this run.\n",
        ]
    return "\n".join(lines)

"""Overlap checks: duplicated rows, near duplicates, conflicting labels, contamination.

Exact checks compare text after :func:`normalize_text`. Near checks follow Broder's
MinHash ("On the resemblance and containment of documents", 1997) with locality-
sensitive hashing over bands (Leskovec, Rajaraman & Ullman, "Mining of Massive
Datasets", ch. 3): rows are sets of character 5-gram shingles, and every candidate pair
the bands propose is verified by the exact Jaccard similarity of its shingle sets, so a
reported pair really is at or above the threshold. No check compares all pairs.

Signatures and bands are computed with numpy, not with datasketch's ``MinHash``/
``MinHashLSH``: those hash every shingle and index every row in Python. On 10,500 rows
datasketch took 7.8 s against 0.26 s here, and its unverified candidates scored recall
0.89 and precision 0.64 against 1.00 and 1.00 (``python benchmarks/run.py audit``,
docs/BENCHMARKS.md).
"""

from __future__ import annotations

import itertools
import re
import string
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from retain.audit.findings import MAX_EXAMPLES, Finding, excerpt
from retain.data.rows import Example
from retain.evaluation.probes import ProbeItem, ProbeSuite

SHINGLE = 5
NUM_PERM = 128
NEAR_THRESHOLD = 0.8
CONFLICT_THRESHOLD = 0.9
BLOCKER_SHARE = 0.01
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+|\n")
_STRIP = string.punctuation + string.whitespace
_SEED = 1
_TEXTS_PER_CHUNK = 2_000  # texts hashed together: keeps the arrays in cache
_SHINGLES_PER_CHUNK = 250_000  # about 1 MB of uint32: stays in cache
_LSH_RECALL = 0.98  # chance that a pair exactly at the threshold becomes a candidate


def normalize_text(text: str) -> str:
    """Returns ``text`` casefolded, whitespace runs collapsed, end punctuation stripped.

    Used for every exact comparison (``"Yes."`` and ``" yes"`` are the same answer).
    """
    return " ".join(text.split()).casefold().strip(_STRIP)


# --- exact duplicates ------------------------------------------------------------------


def exact_duplicates(examples: Sequence[Example]) -> Finding | None:
    """Finds rows whose normalised prompt and response equal an earlier row's.

    Args:
        examples: The training rows, in file order.

    Returns:
        An ``exact_duplicates`` warning counting the redundant rows (every copy after the
        first), or None when every row is unique.
    """
    first_line: dict[tuple[str, str], int] = {}
    copies: list[tuple[Example, int]] = []
    cluster_sizes: Counter[int] = Counter()
    for example in examples:
        key = _row_key(example)
        if key in first_line:
            copies.append((example, first_line[key]))
            cluster_sizes[first_line[key]] += 1
        else:
            first_line[key] = example.line
    if not copies:
        return None
    clusters = len(cluster_sizes)
    return Finding(
        code="exact_duplicates",
        severity="warning",
        title=f"{len(copies)} duplicated row(s) in {clusters} group(s) (same prompt and response)",
        count=len(copies),
        fix="drop the copies (keep the first of each group): repeated rows are "
        "over-weighted in the loss and make the model memorise them",
        examples=tuple(
            {"line": example.line, "text": excerpt(example.prompt), "same_as": line}
            for example, line in copies[:MAX_EXAMPLES]
        ),
        details={"clusters": clusters, "largest_cluster": 1 + max(cluster_sizes.values())},
    )


# --- near duplicates -------------------------------------------------------------------


def near_duplicates(
    examples: Sequence[Example],
    threshold: float = NEAR_THRESHOLD,
    num_perm: int = NUM_PERM,
    shingle: int = SHINGLE,
) -> Finding | None:
    """Finds clusters of rows whose prompt+response texts are nearly the same.

    Takes the arguments of :func:`near_duplicate_clusters`.

    Returns:
        A ``near_duplicates`` warning counting the rows beyond the first of each
        cluster, or None when no two rows are near duplicates.
    """
    clusters = near_duplicate_clusters(examples, threshold, num_perm, shingle)
    if not clusters:
        return None
    count = sum(len(cluster) - 1 for cluster in clusters)
    return Finding(
        code="near_duplicates",
        severity="warning",
        title=f"{count} near-duplicate row(s) in {len(clusters)} cluster(s) "
        f"(Jaccard >= {threshold:g})",
        count=count,
        fix="keep one row per cluster, or make the rows genuinely different: near copies "
        "weigh one example several times and inflate scores on overlapping evaluations",
        examples=tuple(
            {"line": examples[cluster[0]].line, "text": excerpt(examples[cluster[0]].prompt),
             "cluster": [examples[member].line for member in cluster]}
            for cluster in clusters[:MAX_EXAMPLES]
        ),
        details={"clusters": len(clusters), "threshold": threshold,
                 "largest_cluster": max(len(cluster) for cluster in clusters)},
    )


def near_duplicate_clusters(
    examples: Sequence[Example],
    threshold: float = NEAR_THRESHOLD,
    num_perm: int = NUM_PERM,
    shingle: int = SHINGLE,
) -> list[list[int]]:
    """Groups rows whose prompt+response shingle sets have Jaccard >= ``threshold``.

    Exact duplicates are left out (the first row of each group takes part); so are
    pairs with the same prompt (Jaccard >= :data:`CONFLICT_THRESHOLD`) and different
    answers, which :func:`conflicting_labels` reports.

    Args:
        examples: The training rows.
        threshold: Jaccard similarity of the character-shingle sets at or above which
            two rows are near duplicates.
        num_perm: MinHash permutations.
        shingle: Characters per shingle.

    Returns:
        Clusters of two or more row indices into ``examples``, each sorted, ordered by
        their first row.
    """
    keys = [_row_key(example) for example in examples]
    first: dict[tuple[str, str], int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    unique = list(first.values())  # (unique rows,) -> row index, in file order
    shingles = Shingles.of([f"{keys[index][0]} {keys[index][1]}" for index in unique], shingle)
    pairs = [
        (a, b) for a, b in _similar_pairs(shingles, threshold, num_perm)
        if not _is_conflict(keys[unique[a]], keys[unique[b]], shingle)
    ]
    return [[unique[member] for member in cluster] for cluster in _clusters(pairs)]


def _is_conflict(first: tuple[str, str], second: tuple[str, str], shingle: int) -> bool:
    """Returns whether two rows ask the same prompt with different answers."""
    if first[1] == second[1]:
        return False
    return first[0] == second[0] or _jaccard_of_texts(first[0], second[0], shingle) >= CONFLICT_THRESHOLD


# --- conflicting labels ----------------------------------------------------------------


def conflicting_labels(
    examples: Sequence[Example],
    threshold: float = CONFLICT_THRESHOLD,
    num_perm: int = NUM_PERM,
    shingle: int = SHINGLE,
) -> Finding | None:
    """Finds rows that ask the same (or nearly the same) prompt with different answers.

    Prompts group together when equal after :func:`normalize_text`, or when their
    shingle sets have Jaccard >= ``threshold``. In a group with several answers, the
    rows that do not give the group's most common answer are counted as conflicts.

    Args:
        examples: The training rows.
        threshold: Prompt Jaccard similarity at or above which prompts count as the same.
        num_perm: MinHash permutations.
        shingle: Characters per shingle.

    Returns:
        A ``conflicting_labels`` finding, a blocker when the conflicting rows exceed
        1% of all rows and a warning otherwise; None when no prompt has two answers.
    """
    responses = [normalize_text(example.response) for example in examples]
    conflicts = [
        (group, len(group) - Counter(responses[i] for i in group).most_common(1)[0][1])
        for group in conflict_groups(examples, threshold, num_perm, shingle)
    ]
    if not conflicts:
        return None
    count = sum(off for _, off in conflicts)
    share = count / len(examples)
    return Finding(
        code="conflicting_labels",
        severity="blocker" if share > BLOCKER_SHARE else "warning",
        title=f"{count} row(s) ({share:.1%}) contradict another row's answer to the same "
        f"prompt, in {len(conflicts)} group(s)",
        count=count,
        fix="decide the right answer for each prompt and drop or correct the others: "
        "the model is trained towards both answers",
        examples=tuple(
            _conflict_example(examples, group, responses) for group, _ in conflicts[:MAX_EXAMPLES]
        ),
        details={"groups": len(conflicts), "share": share, "threshold": threshold},
    )


def conflict_groups(
    examples: Sequence[Example],
    threshold: float = CONFLICT_THRESHOLD,
    num_perm: int = NUM_PERM,
    shingle: int = SHINGLE,
) -> list[list[int]]:
    """Returns the groups of rows with the same or near-same prompt and several answers.

    Takes the arguments of :func:`conflicting_labels`; each group is a sorted list of
    row indices into ``examples``.
    """
    prompts = [normalize_text(example.prompt) for example in examples]
    responses = [normalize_text(example.response) for example in examples]
    groups = _prompt_groups(prompts, threshold, num_perm, shingle)
    return [group for group in groups if len({responses[i] for i in group}) > 1]


def _prompt_groups(
    prompts: Sequence[str], threshold: float, num_perm: int, shingle: int
) -> list[list[int]]:
    """Returns the row indices grouped by equal or near-equal prompt (groups of 2+)."""
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for index, prompt in enumerate(prompts):
        by_prompt[prompt].append(index)
    distinct = list(by_prompt)
    shingles = Shingles.of(distinct, shingle)
    pairs = _similar_pairs(shingles, threshold, num_perm)
    merged = _clusters(pairs, singletons=len(distinct))
    groups = [sorted(i for member in cluster for i in by_prompt[distinct[member]]) for cluster in merged]
    return [group for group in groups if len(group) > 1]


def _conflict_example(
    examples: Sequence[Example], group: list[int], responses: Sequence[str]
) -> dict[str, object]:
    """Returns the first two rows of ``group`` that disagree, with their answers."""
    first = examples[group[0]]
    other = next(examples[i] for i in group if responses[i] != responses[group[0]])
    return {
        "line": first.line, "text": excerpt(first.prompt), "answer": excerpt(first.response),
        "other_line": other.line, "other_answer": excerpt(other.response),
    }


# --- contamination ---------------------------------------------------------------------


def contamination(
    train: Sequence[Example],
    eval_examples: Sequence[Example] | None = None,
    probes: Sequence[ProbeSuite] = (),
    threshold: float = NEAR_THRESHOLD,
    num_perm: int = NUM_PERM,
    shingle: int = SHINGLE,
) -> list[Finding]:
    """Finds evaluation rows and probe items that also appear in the training data.

    A prompt appears in training when it equals a training prompt after
    :func:`normalize_text`, or when their shingle sets have Jaccard >= ``threshold``.
    Probe items are matched as :func:`probe_matches` says.

    Args:
        train: The training rows.
        eval_examples: The evaluation rows, if any.
        probes: Probe suites whose items must not be trained on.
        threshold: Jaccard similarity at or above which texts count as the same.
        num_perm: MinHash permutations.
        shingle: Characters per shingle.

    Returns:
        A ``train_eval_overlap`` finding (a blocker above 1% of the evaluation rows)
        and a ``probe_contamination`` warning, each only when something overlaps;
        an empty list when nothing does.
    """
    findings: list[Finding] = []
    if eval_examples:
        prompts = _Corpus([normalize_text(example.prompt) for example in train], threshold, num_perm, shingle)
        leaked = prompts.matches([normalize_text(example.prompt) for example in eval_examples])
        if leaked:
            findings.append(_eval_overlap(train, eval_examples, leaked, threshold))
    items = [(suite, item) for suite in probes for item in suite.items]
    if items:
        seen = probe_matches([_row_text(example) for example in train], [item for _, item in items],
                             raw=[f"{example.prompt}\n{example.response}" for example in train],
                             prompts=[example.prompt for example in train], threshold=threshold,
                             num_perm=num_perm, shingle=shingle)
        if seen:
            lines = [example.line for example in train]
            findings.append(_probe_contamination(lines, items, seen, threshold, where="the training data"))
    return findings


def blended_contamination(
    texts: Sequence[str],
    probes: Sequence[ProbeSuite],
    source: str,
    threshold: float = NEAR_THRESHOLD,
) -> Finding | None:
    """Finds probe items in the rows a method blends into training (replay's general
    texts, self-augmentation's prompts and answers), as :func:`probe_matches` says.

    Args:
        texts: The blended rows (or the source they are drawn from) as text, in order;
            a row's ``line`` is its 1-based position.
        probes: The probe suites the run is judged by.
        source: What the rows are, for the message (``replay rows from general.txt``).
        threshold: Jaccard similarity at or above which texts count as the same.

    Returns:
        A ``probe_contamination`` warning naming ``source``, or None when no item is there.
    """
    items = [(suite, item) for suite in probes for item in suite.items]
    seen = probe_matches([normalize_text(text) for text in texts], [item for _, item in items],
                         raw=texts, threshold=threshold) if items and texts else {}
    if not seen:
        return None
    return _probe_contamination(list(range(1, len(texts) + 1)), items, seen, threshold, where=source)


def probe_matches(
    texts: Sequence[str],
    items: Sequence[ProbeItem],
    *,
    raw: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    threshold: float = NEAR_THRESHOLD,
    num_perm: int = NUM_PERM,
    shingle: int = SHINGLE,
) -> dict[int, int]:
    """Returns item index -> index of a row that rehearses the item.

    A row rehearses an item when its text (normalised) equals or nearly equals (shingle
    Jaccard >= ``threshold``) the item's prompt followed by its answer, or one of the
    item's ``statements`` (other wordings of its fact); when one of its sentences is a
    statement (a fact stated inside a longer row); or, given ``prompts``, when the row's
    prompt equals or nearly equals the item's prompt.

    Args:
        texts: Each row's whole text, already normalised (:func:`normalize_text`).
        items: The probe items.
        raw: Each row's text before normalisation, where its sentences are looked for
            (split at ``.``, ``?`` or ``!`` before a space, and at line ends); ``texts``
            when None.
        prompts: Each row's prompt (not normalised), for rows that have one.
        threshold: Jaccard similarity at or above which texts count as the same.
        num_perm: MinHash permutations.
        shingle: Characters per shingle.
    """
    full = _Corpus(list(texts), threshold, num_perm, shingle)
    queries: list[str] = []
    owners: list[int] = []
    for index, item in enumerate(items):
        # The question and answer as a prompt/response row reads (each part normalised) and
        # as one text reads ("Q: ...?\nA: 42" keeps the colon the first form strips).
        wordings = {f"{normalize_text(item.prompt)} {normalize_text(item.answer)}",
                    normalize_text(f"{item.prompt} {item.answer}"), *map(normalize_text, item.statements)}
        queries += sorted(wordings)
        owners += [index] * len(wordings)
    seen: dict[int, int] = {}
    for query, row in full.matches(queries).items():
        seen.setdefault(owners[query], row)
    sentences: dict[str, int] = {}
    for row, text in enumerate(texts if raw is None else raw):
        for sentence in _sentences(text):
            sentences.setdefault(sentence, row)
    for index, item in enumerate(items):
        rows = [sentences[sentence] for text in item.statements for sentence in [normalize_text(text)]
                if sentence in sentences]
        if rows:
            seen[index] = min(rows + ([seen[index]] if index in seen else []))
    if prompts is not None:
        prompt_corpus = _Corpus([normalize_text(prompt) for prompt in prompts], threshold, num_perm, shingle)
        for index, row in prompt_corpus.matches([normalize_text(item.prompt) for item in items]).items():
            seen.setdefault(index, row)
    return dict(sorted(seen.items()))


def _sentences(text: str) -> list[str]:
    """Returns the sentences of a text, each normalised (end punctuation off)."""
    return [normalize_text(part) for part in _SENTENCE_END.split(text) if part]


def rehearsed_ids(finding: Finding | None) -> dict[str, list[str]]:
    """Returns the ids of the probe items a ``probe_contamination`` finding holds, by suite."""
    return dict(finding.details.get("items", {})) if finding is not None else {}


def _eval_overlap(
    train: Sequence[Example], eval_examples: Sequence[Example], leaked: dict[int, int],
    threshold: float,
) -> Finding:
    """Returns the ``train_eval_overlap`` finding for ``leaked`` (eval index -> train index)."""
    share = len(leaked) / len(eval_examples)
    return Finding(
        code="train_eval_overlap",
        severity="blocker" if share > BLOCKER_SHARE else "warning",
        title=f"{len(leaked)} of {len(eval_examples)} evaluation row(s) ({share:.1%}) "
        "also appear in the training data",
        count=len(leaked),
        fix="remove these rows from the training data (or from the evaluation set): "
        "a score on rows the model trained on measures memory, not skill",
        examples=tuple(
            {"line": eval_examples[e].line, "text": excerpt(eval_examples[e].prompt),
             "train_line": train[t].line}
            for e, t in list(leaked.items())[:MAX_EXAMPLES]
        ),
        details={"share": share, "threshold": threshold, "eval_rows": len(eval_examples)},
    )


def _probe_contamination(
    lines: Sequence[int], items: Sequence[tuple[ProbeSuite, ProbeItem]],
    seen: dict[int, int], threshold: float, where: str,
) -> Finding:
    """Returns the ``probe_contamination`` finding for ``seen`` (item index -> row index),
    ``where`` naming the rows (``the training data``, or the rows a method blends in).

    Each example's ``line`` is the line of the row where the probe item appears;
    ``details["items"]`` lists every item found, by suite.
    """
    found: dict[str, list[str]] = {}
    for index in seen:
        suite, item = items[index]
        found.setdefault(suite.name, []).append(item.id)
    return Finding(
        code="probe_contamination",
        severity="warning",
        title=f"{len(seen)} probe item(s) appear in {where}: "
        "a probe seen in training measures nothing",
        count=len(seen),
        fix="remove the rows holding these probe questions (or another wording of their facts) from "
        f"{where}, or use a probe suite they do not contain; forgetting is reported apart on these items",
        examples=tuple(
            {"line": lines[t], "text": excerpt(items[i][1].prompt),
             "suite": items[i][0].name, "item": items[i][1].id}
            for i, t in list(seen.items())[:MAX_EXAMPLES]
        ),
        details={"threshold": threshold, "suites": sorted({suite.name for suite, _ in items}),
                 "where": where, "items": found},
    )


class _Corpus:
    """Training texts to look other texts up in, exactly or by shingle Jaccard."""

    def __init__(self, texts: Sequence[str], threshold: float, num_perm: int, shingle: int) -> None:
        self.first: dict[str, int] = {}
        for index, text in enumerate(texts):
            self.first.setdefault(text, index)
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle

    def matches(self, queries: Sequence[str]) -> dict[int, int]:
        """Returns query index -> index of a training text it equals or nearly equals."""
        found = {i: self.first[query] for i, query in enumerate(queries) if query in self.first}
        rest = [i for i in range(len(queries)) if i not in found]
        if not rest or not self.first:
            return dict(sorted(found.items()))
        distinct = list(self.first)
        shingles = Shingles.of(distinct + [queries[i] for i in rest], self.shingle)
        for a, b in _similar_pairs(shingles, self.threshold, self.num_perm, split=len(distinct)):
            found.setdefault(rest[b - len(distinct)], self.first[distinct[a]])
        return dict(sorted(found.items()))


# --- MinHash machinery -----------------------------------------------------------------


@dataclass(frozen=True)
class Shingles:
    """The character-shingle hashes of many texts, flat, with row offsets.

    Attributes:
        values: 32-bit shingle hashes (as uint64) of all rows, row after row.
        offsets: Where each row's hashes start in ``values``; one entry per row.
    """

    values: np.ndarray
    offsets: np.ndarray
    _sets: dict[int, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, texts: Sequence[str], shingle: int = SHINGLE) -> Shingles:
        """Returns the shingles of ``texts``; a text shorter than ``shingle`` is one shingle.

        Hashes are computed with numpy over chunks of texts, not per shingle in Python
        (see :func:`_shingle_hashes`).
        """
        parts = [
            _shingle_hashes(texts[first : first + _TEXTS_PER_CHUNK], shingle)
            for first in range(0, len(texts), _TEXTS_PER_CHUNK)
        ]
        values = np.concatenate([part for part, _ in parts]) if parts else np.zeros(0, np.uint64)
        counts = np.concatenate([part for _, part in parts]) if parts else np.zeros(0, np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        return cls(values=values, offsets=offsets[: len(texts)])

    def __len__(self) -> int:
        return len(self.offsets)

    def set(self, row: int) -> np.ndarray:
        """Returns the sorted distinct shingle hashes of ``row`` (computed once)."""
        if row not in self._sets:
            self._sets[row] = self._distinct(row)
        return self._sets[row]

    def _distinct(self, row: int) -> np.ndarray:
        end = self.offsets[row + 1] if row + 1 < len(self.offsets) else self.values.size
        return np.unique(self.values[self.offsets[row] : end])

    def signatures(self, num_perm: int = NUM_PERM, seed: int = _SEED) -> np.ndarray:
        """Returns the MinHash signatures, shape (rows, num_perm), dtype uint32.

        Computed with numpy over blocks of rows rather than with datasketch's
        ``MinHash.bulk``, which hashes every shingle with SHA-1 in Python. Permutation k
        is ``(x XOR b_k) * a_k mod 2^32`` with a_k odd: a bijection of the 32-bit shingle
        hashes, cheap enough for 128 of them per shingle. Its minima are not exactly
        min-wise independent; that only moves recall a little, since every candidate
        pair is verified by exact Jaccard (the benchmark measures the recall).
        """
        rng = np.random.default_rng(seed)
        multipliers = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32) | np.uint32(1)
        masks = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32)
        result = np.empty((num_perm, len(self)), dtype=np.uint32)  # (perms, rows)
        bounds = np.append(self.offsets, self.values.size)
        # One permutation at a time over a chunk of rows whose shingles fit in the CPU
        # cache: long passes, no (shingles, perms) temporary, the same speed at any size.
        first = 0
        while first < len(self):
            last = int(np.searchsorted(bounds, bounds[first] + _SHINGLES_PER_CHUNK, side="right"))
            last = min(max(last - 1, first + 1), len(self))
            chunk = self.values[bounds[first] : bounds[last]].astype(np.uint32)
            starts = self.offsets[first:last] - bounds[first]
            permuted = np.empty_like(chunk)
            for k in range(num_perm):
                np.bitwise_xor(chunk, masks[k], out=permuted)
                np.multiply(permuted, multipliers[k], out=permuted)  # wraps mod 2^32
                result[k, first:last] = np.minimum.reduceat(permuted, starts)
            first = last
        return np.ascontiguousarray(result.T)  # (rows, perms)


def lsh_params(threshold: float, num_perm: int, recall: float = _LSH_RECALL) -> tuple[int, int]:
    """Returns (bands, rows per band) so a pair at ``threshold`` is found with ``recall``.

    datasketch's default weighs misses and false candidates equally, which finds a pair
    exactly at the threshold only 40% of the time; candidates are verified exactly here,
    so we trade extra candidates for recall: the most rows per band that still reach it.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def _shingle_hashes(texts: Sequence[str], shingle: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns the shingle hashes of ``texts`` (flat, 32-bit in uint64) and their counts.

    A polynomial rolling hash of the code points, mod 2^64, mixed to 32 bits; texts
    shorter than ``shingle`` are padded, so each has at least one shingle.
    """
    padded = [text.ljust(shingle, "\0") for text in texts]
    lengths = np.fromiter((len(text) for text in padded), dtype=np.int64, count=len(padded))
    points = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    rolling = np.zeros(points.size - shingle + 1, dtype=np.uint64)
    for k in range(shingle):  # rolling[i] = sum_k points[i + k] * P^(shingle-1-k)
        rolling = rolling * np.uint64(1_000_003) + points[k : k + rolling.size]
    counts = lengths - shingle + 1  # shingles per text; the last ones would cross texts
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(offsets, counts)
    values = rolling[np.repeat(starts, counts) + within]
    return (values * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32), counts  # Fibonacci mixing


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Returns one key per band and row, shape (bands, rows of data): equal bands, equal keys."""
    count = signatures.shape[0]
    banded = signatures[:, : bands * rows].astype(np.uint64).reshape(count, bands, rows)
    keys = np.zeros((count, bands), dtype=np.uint64)
    for column in range(rows):  # polynomial hash of the band's values, mod 2^64
        keys = keys * np.uint64(0x100000001B3) + banded[:, :, column]
    return np.ascontiguousarray(keys.T)  # (bands, rows of data)


def _candidate_pairs(keys: np.ndarray, split: int | None = None) -> set[tuple[int, int]]:
    """Returns the row pairs (a < b) that share a key in some band.

    With ``split``, only pairs with ``a < split <= b`` (an index row and a query row).
    Rows are sorted by key per band, so the cost is O(n log n) per band, not O(n^2).
    """
    pairs: set[tuple[int, int]] = set()
    for band_keys in keys:  # (rows,)
        order = np.argsort(band_keys, kind="stable")
        ordered = band_keys[order]
        edges = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1, [order.size]))
        for start, end in zip(edges[:-1], edges[1:]):
            if end - start < 2:
                continue
            members = sorted(order[start:end].tolist())
            for a, b in itertools.combinations(members, 2):
                if split is None or a < split <= b:
                    pairs.add((a, b))
    return pairs


def _similar_pairs(
    shingles: Shingles, threshold: float, num_perm: int, split: int | None = None
) -> list[tuple[int, int]]:
    """Returns the row pairs (a < b) whose exact shingle Jaccard is >= ``threshold``.

    Candidates come from banded MinHash signatures (:func:`lsh_params`); with ``split``,
    only pairs of an index row (< split) and a query row (>= split) are considered.
    """
    if len(shingles) < 2:
        return []
    keys = _band_keys(shingles.signatures(num_perm), *lsh_params(threshold, num_perm))
    candidates = sorted(_candidate_pairs(keys, split))
    return [(a, b) for a, b in candidates if _jaccard(shingles.set(a), shingles.set(b)) >= threshold]


def _jaccard(first: np.ndarray, second: np.ndarray) -> float:
    """Returns the Jaccard similarity of two sorted sets of distinct hashes."""
    shared = np.intersect1d(first, second, assume_unique=True).size
    union = first.size + second.size - shared
    return shared / union if union else 1.0


def _jaccard_of_texts(first: str, second: str, shingle: int) -> float:
    """Returns the exact shingle Jaccard similarity of two texts."""
    pair = Shingles.of([first, second], shingle)
    return _jaccard(pair.set(0), pair.set(1))


def _clusters(pairs: Iterable[tuple[int, int]], singletons: int = 0) -> list[list[int]]:
    """Returns the connected components of ``pairs`` (union-find), sorted members.

    With ``singletons`` > 0, rows 0..singletons-1 without a pair are their own cluster;
    otherwise only clusters of two or more are returned.
    """
    parent: dict[int, int] = {row: row for row in range(singletons)}

    def root(row: int) -> int:
        parent.setdefault(row, row)
        while parent[row] != row:
            parent[row] = parent[parent[row]]  # path halving
            row = parent[row]
        return row

    for first, second in pairs:
        a, b = root(first), root(second)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = defaultdict(list)
    for row in list(parent):
        members[root(row)].append(row)
    return sorted((sorted(group) for group in members.values()), key=lambda group: group[0])


# --- small helpers ---------------------------------------------------------------------


def _row_key(example: Example) -> tuple[str, str]:
    """Returns the normalised (prompt, response) of a row."""
    return normalize_text(example.prompt), normalize_text(example.response)


def _row_text(example: Example) -> str:
    """Returns the normalised prompt and response of a row as one text."""
    prompt, response = _row_key(example)
    return f"{prompt} {response}"

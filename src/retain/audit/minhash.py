"""MinHash with locality-sensitive hashing over bands, in numpy: character-shingle sets,
signatures, candidate pairs, and every candidate verified by its exact Jaccard similarity
(Broder, 1997; Leskovec, Rajaraman & Ullman, Mining of Massive Datasets, ch. 3)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

SHINGLE = 5  # characters per shingle
NUM_PERM = 128  # MinHash permutations
_SEED = 1

_TEXTS_PER_CHUNK = 2_000  # texts hashed together: keeps the arrays in cache

_SHINGLES_PER_CHUNK = 250_000  # about 1 MB of uint32: stays in cache

_LSH_RECALL = 0.98  # chance that a pair exactly at the threshold becomes a candidate


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


def similar_pairs(
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


def jaccard_of_texts(first: str, second: str, shingle: int) -> float:
    """Returns the exact shingle Jaccard similarity of two texts."""
    pair = Shingles.of([first, second], shingle)
    return _jaccard(pair.set(0), pair.set(1))


def clusters(pairs: Iterable[tuple[int, int]], singletons: int = 0) -> list[list[int]]:
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

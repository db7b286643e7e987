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

import string
from collections import Counter, defaultdict
from collections.abc import Sequence

from retain.audit.findings import MAX_EXAMPLES, Finding, excerpt
from retain.audit.minhash import NUM_PERM, SHINGLE, Shingles, clusters, jaccard_of_texts, similar_pairs
from retain.data.rows import Example

NEAR_THRESHOLD = 0.8
CONFLICT_THRESHOLD = 0.9
BLOCKER_SHARE = 0.01
_STRIP = string.punctuation + string.whitespace


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
        (a, b) for a, b in similar_pairs(shingles, threshold, num_perm)
        if not _is_conflict(keys[unique[a]], keys[unique[b]], shingle)
    ]
    return [[unique[member] for member in cluster] for cluster in clusters(pairs)]


def _is_conflict(first: tuple[str, str], second: tuple[str, str], shingle: int) -> bool:
    """Returns whether two rows ask the same prompt with different answers."""
    if first[1] == second[1]:
        return False
    return first[0] == second[0] or jaccard_of_texts(first[0], second[0], shingle) >= CONFLICT_THRESHOLD


# --- reversed preference pairs ------------------------------------------------------


def reversed_pairs(examples: Sequence[Example]) -> Finding | None:
    """Finds preference pairs that another pair contradicts: the same prompt (after
    :func:`normalize_text`) with the chosen and rejected answers swapped. DPO pushes the two
    rows' margins in opposite directions, so together they teach nothing.

    Returns:
        A ``reversed_pairs`` finding (a blocker above 1% of rows, else a warning), or None.
    """
    seen: dict[tuple[str, str, str], int] = {}
    reversed_rows: list[tuple[int, int]] = []
    for index, example in enumerate(examples):
        if example.rejected is None:
            continue
        prompt, chosen, rejected = (normalize_text(text) for text in (example.prompt, example.response,
                                                                      example.rejected))
        if (prompt, rejected, chosen) in seen:
            reversed_rows.append((seen[(prompt, rejected, chosen)], index))
        seen.setdefault((prompt, chosen, rejected), index)
    if not reversed_rows:
        return None
    share = len(reversed_rows) / len(examples)
    return Finding(
        code="reversed_pairs",
        severity="blocker" if share > BLOCKER_SHARE else "warning",
        title=f"{len(reversed_rows)} preference pair(s) ({share:.1%}) reverse an earlier pair: the same prompt with "
        "chosen and rejected swapped",
        count=len(reversed_rows),
        fix="decide which answer is preferred for each prompt and drop or correct the other pair: DPO is "
        "trained both ways",
        examples=tuple({"line": examples[later].line, "text": examples[later].prompt[-120:],
                        "reverses_line": examples[earlier].line} for earlier, later in reversed_rows[:MAX_EXAMPLES]),
        details={"share": share},
    )


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
    pairs = similar_pairs(shingles, threshold, num_perm)
    merged = clusters(pairs, singletons=len(distinct))
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


def _row_key(example: Example) -> tuple[str, str]:
    """Returns the normalised (prompt, response) of a row; a preference pair's response is
    its chosen answer then its rejected one, so that two pairs are one row only when both
    answers are the same (and a probe item stated in either is found)."""
    if example.rejected is not None:
        return normalize_text(example.prompt), normalize_text(f"{example.response} {example.rejected}")
    return normalize_text(example.prompt), normalize_text(example.response)


def row_text(example: Example) -> str:
    """Returns the normalised prompt and response of a row as one text (for a preference
    pair, both answers)."""
    prompt, response = _row_key(example)
    return f"{prompt} {response}"

"""Contamination: evaluation rows and probe items that training has already seen.

A prompt appears in training when it equals a training prompt after
:func:`~retain.audit.overlap.normalize_text`, or when their shingle sets have Jaccard at
or above the threshold (MinHash, :mod:`retain.audit.minhash`). A probe item has been
rehearsed when a training row, or a row a method blends in, holds its question with its
answer, its question as a prompt, or another wording of its fact (:func:`probe_matches`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from retain.audit.findings import MAX_EXAMPLES, Finding, excerpt
from retain.audit.minhash import NUM_PERM, SHINGLE, Shingles, similar_pairs
from retain.audit.overlap import BLOCKER_SHARE, NEAR_THRESHOLD, normalize_text, row_text
from retain.data.rows import Example
from retain.evaluation.probes import ProbeItem, ProbeSuite

_SENTENCE_END = re.compile(r"(?<=[.?!])\s+|\n")


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
        seen = probe_matches([row_text(example) for example in train], [item for _, item in items],
                             raw=[_raw_text(example) for example in train],
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


def _raw_text(example: Example) -> str:
    """Returns a row's text as written, where stated facts are looked for: the prompt and
    the answer, and a preference pair's rejected answer too (a probe fact a training row
    holds is seen, whichever side of the pair it is on)."""
    text = f"{example.prompt}\n{example.response}"
    return text if example.rejected is None else f"{text}\n{example.rejected}"


def _sentences(text: str) -> list[str]:
    """Returns the sentences of a text, each normalised (end punctuation off)."""
    return [normalize_text(part) for part in _SENTENCE_END.split(text) if part]


def rehearsed_ids(finding: Finding | None) -> dict[str, list[str]]:
    """Returns the ids of the probe items a ``probe_contamination`` finding holds, by suite."""
    return dict(finding.details.get("items", {})) if finding is not None else {}


def contamination_by_source(
    texts: Mapping[str, Sequence[str]], probes: Sequence[ProbeSuite], threshold: float
) -> tuple[dict[str, Finding], dict[str, list[str]]]:
    """Runs :func:`blended_contamination` on the rows each source blended in.

    Args:
        texts: The blended rows' texts by source (``replay``, ``self_augment``, ...).
        probes: The probe suites.
        threshold: Jaccard similarity at which a row counts as stating an item.

    Returns:
        The finding of each source that stated a probe item, and every such item's id by
        suite (all sources together), sorted.
    """
    findings: dict[str, Finding] = {}
    items: dict[str, set[str]] = {}
    for source, blended in texts.items():
        finding = blended_contamination(blended, probes, f"the {len(blended):,} rows {source} blended in", threshold)
        if finding is not None:
            findings[source] = finding
            for suite, ids in rehearsed_ids(finding).items():
                items.setdefault(suite, set()).update(ids)
    return findings, {suite: sorted(ids) for suite, ids in items.items()}


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
        for a, b in similar_pairs(shingles, self.threshold, self.num_perm, split=len(distinct)):
            found.setdefault(rest[b - len(distinct)], self.first[distinct[a]])
        return dict(sorted(found.items()))

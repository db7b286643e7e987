"""Single-file data checks: size, degenerate answers, format consistency, token lengths.

Each check takes the examples of one file and returns a :class:`Finding` (or None, or a
list of findings). None of them raises on odd data (empty files, hand-made rows with
missing turns, chat templates that reject a conversation): an audit that crashes on the
very data it should describe is no audit. Only a wrong *argument* (an unknown task or
domain name) raises, because that is the user's mistake, not the data's.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from retain.audit.findings import MAX_EXAMPLES, Finding, excerpt
from retain.config.schema import DOMAIN_MULTIPLIERS, TASK_MULTIPLIERS
from retain.data.rows import Example, describe_schemas
from retain.evaluation.labels import infer_label_set, normalize_label

SIZE_SOURCE = (
    "rule of thumb from the fine-tuning articles retain grew from (5,000 base examples x "
    "task x domain multipliers); not a law: measure on your data with a data-size sweep "
    "(retain sweep)"
)
# A response that is one word at least this many times ("yes yes yes") is a loop.
MIN_REPEATS = 3
# Label balance: a warning when the rarest label is below or the most common above these.
RARE_LABEL_SHARE = 0.10
DOMINANT_LABEL_SHARE = 0.70
_WORD_EDGES = re.compile(r"^\W+|\W+$")
# The roles each chat role may follow (None: the first turn after any system turn).
_ALLOWED_BEFORE: dict[str, set[str | None]] = {
    "system": set(), "user": {None, "assistant"}, "assistant": {"user", "tool"},
    "tool": {"assistant", "tool"},
}


# --- size -----------------------------------------------------------------------------


def dataset_size(
    n_rows: int,
    *,
    task: str = "qa",
    domain: str = "general",
    base: int = 5000,
    multipliers: Mapping[str, Mapping[str, float]] | None = None,
    allow_small: bool = False,
) -> Finding | None:
    """Checks the number of training rows against a rule of thumb.

    The minimum is ``base x task multiplier x domain multiplier``, with the multipliers
    of :data:`TASK_MULTIPLIERS` and :data:`DOMAIN_MULTIPLIERS` (``medical`` ``qa``:
    5,000 x 1.5 x 1.5 = 11,250 rows).

    Args:
        n_rows: Rows of training data.
        task: A key of the task table (``classification``, ``qa``, ``generation``, ``chat``).
        domain: A key of the domain table (``general``, ``medical``, ``legal``, ...).
        base: Rows for a general-domain classification task.
        multipliers: Optional ``{"task": {...}, "domain": {...}}`` entries that add to or
            override the default tables.
        allow_small: Too few rows is a warning instead of a blocker.

    Returns:
        A ``dataset_size`` finding when ``n_rows`` is below the minimum, else None.

    Raises:
        ValueError: If ``task`` or ``domain`` is not in its table (the message names the
            valid ones), or ``multipliers`` has keys other than ``task`` and ``domain``.
    """
    tasks, domains = _multiplier_tables(multipliers)
    task_factor = _lookup(tasks, task, "task")
    domain_factor = _lookup(domains, domain, "domain")
    # Rounded first so that 5,000 x 1.3 x 1.5 is 9,750, not 9,751 by float error.
    minimum = math.ceil(round(base * task_factor * domain_factor, 6))
    if n_rows >= minimum:
        return None
    arithmetic = f"{base:,} x {_factor(task_factor)} x {_factor(domain_factor)}"
    return Finding(
        code="dataset_size",
        severity="warning" if allow_small else "blocker",
        title=f"{n_rows:,} training rows; the rule of thumb for {domain} {task} is "
        f"{minimum:,} ({arithmetic})",
        count=n_rows,
        fix="collect more data, use replay/LoRA to limit forgetting, or pass --allow-small-data",
        details={
            "rows": n_rows, "minimum": minimum, "base": base, "task": task, "domain": domain,
            "task_multiplier": task_factor, "domain_multiplier": domain_factor,
            "allow_small": allow_small, "source": SIZE_SOURCE,
        },
    )


def _multiplier_tables(
    overrides: Mapping[str, Mapping[str, float]] | None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Returns the task and domain tables with ``overrides`` applied."""
    overrides = overrides or {}
    unknown = set(overrides) - {"task", "domain"}
    if unknown:
        raise ValueError(
            f"multipliers takes the keys 'task' and 'domain', got {', '.join(sorted(unknown))}"
        )
    return (
        {**TASK_MULTIPLIERS, **overrides.get("task", {})},
        {**DOMAIN_MULTIPLIERS, **overrides.get("domain", {})},
    )


def _lookup(table: Mapping[str, float], name: str, kind: str) -> float:
    """Returns ``table[name]``; raises ValueError naming the valid keys."""
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; use one of {', '.join(table)}")
    return table[name]


def _factor(value: float) -> str:
    """Returns a multiplier as written in the tables: 1.0, 1.5, 1.25."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


# --- degenerate responses -------------------------------------------------------------


def degenerate_responses(examples: Sequence[Example]) -> Finding | None:
    """Finds answers that teach nothing or the wrong thing.

    Three kinds: empty or whitespace-only responses, responses equal to their prompt
    (after case and whitespace normalisation; for chat rows, the last user turn), and
    responses that are one word repeated at least :data:`MIN_REPEATS` times
    (``yes yes yes yes``).

    Returns:
        A ``degenerate_responses`` finding (a blocker if any response is empty, else a
        warning) whose examples give the line and the reason, or None if all is well.
    """
    flagged = [(example, reason) for example in examples
               if (reason := _degenerate_reason(example)) is not None]
    if not flagged:
        return None
    reasons = Counter(reason.split(" (")[0] for _, reason in flagged)
    summary = ", ".join(f"{count:,} {reason}" for reason, count in reasons.most_common())
    return Finding(
        code="degenerate_responses",
        severity="blocker" if reasons["empty response"] else "warning",
        title=f"{len(flagged):,} of {len(examples):,} responses are degenerate ({summary})",
        count=len(flagged),
        fix="drop these rows or write real answers; the model learns to reproduce them",
        examples=tuple(
            {"line": example.line, "text": excerpt(example.response), "reason": reason}
            for example, reason in flagged[:MAX_EXAMPLES]
        ),
        details={"reasons": dict(reasons), "share": len(flagged) / len(examples)},
    )


def _degenerate_reason(example: Example) -> str | None:
    """Returns why ``example``'s response is degenerate, or None."""
    response = _as_text(example.response)
    if not response.strip():
        return "empty response"
    if _squash(response) == _squash(_question(example)):
        return "response repeats the prompt"
    words = [_WORD_EDGES.sub("", word).casefold() for word in response.split()]
    if len(words) >= MIN_REPEATS and len(set(words)) == 1 and words[0]:
        return f"one word repeated ({words[0]!r} x {len(words)})"
    return None


def _question(example: Example) -> str:
    """Returns the text a response should not echo: the prompt, or the last user turn."""
    users = [turn.get("content") for turn in _turns(example) if turn.get("role") == "user"]
    return _as_text(users[-1]) if users else _as_text(example.prompt)


def _squash(text: str) -> str:
    return " ".join(text.split()).casefold()


# --- format consistency ---------------------------------------------------------------


def format_consistency(examples: Sequence[Example]) -> list[Finding]:
    """Checks that rows share one schema, chat turns a usual order, labels one spelling.

    Returns:
        Any of: ``mixed_formats`` (warning: chat and prompt/response rows in one file),
        ``chat_role_order`` (warning: turns not ``[system] user assistant ... assistant``),
        and, for classification-like data (see
        :func:`~retain.evaluation.labels.infer_label_set`), ``label_variants`` (warning:
        one label written several ways) and ``label_balance`` (info, or a warning when
        the rarest label is under 10% of rows or the most common over 70%).
    """
    findings = [_mixed_formats(examples), _chat_role_order(examples)]
    findings += _label_findings(examples)
    return [finding for finding in findings if finding is not None]


def row_formats(examples: Sequence[Example]) -> Finding | None:
    """Returns which formats the rows were recognised in (info): Alpaca, ShareGPT, ..., so
    a file read in another format than its author meant is seen before training."""
    if not examples:
        return None
    counts = Counter(str(example.schema) for example in examples)
    return Finding(
        code="row_formats", severity="info",
        title=f"{len(examples):,} rows, {describe_schemas(examples)}",
        count=len(examples), fix="none needed; set data.prompt_field, data.response_field or "
        "data.messages_field if a row was read in another format than you meant",
        details={"formats": dict(counts)},
    )


def _mixed_formats(examples: Sequence[Example]) -> Finding | None:
    """Returns a warning when chat and prompt/response rows are mixed."""
    chat = [example for example in examples if example.is_chat]
    plain = [example for example in examples if not example.is_chat]
    if not chat or not plain:
        return None
    minority, kind = (chat, "chat") if len(chat) <= len(plain) else (plain, "prompt/response")
    return Finding(
        code="mixed_formats",
        severity="warning",
        title=f"mixed schemas: {len(chat):,} chat rows and {len(plain):,} prompt/response rows",
        count=len(minority),
        fix="convert every row to one schema; chat rows go through the chat template and "
        "prompt/response rows do not, so the model sees two formats",
        examples=tuple({"line": example.line, "text": excerpt(example.response), "kind": kind}
                       for example in minority[:MAX_EXAMPLES]),
        details={"chat_rows": len(chat), "prompt_response_rows": len(plain)},
    )


def _chat_role_order(examples: Sequence[Example]) -> Finding | None:
    """Returns a warning listing chat rows whose roles are in an unusual order."""
    unusual = [(example, problem) for example in examples if example.is_chat
               if (problem := role_order_problem([turn.get("role") for turn in _turns(example)]))]
    if not unusual:
        return None
    return Finding(
        code="chat_role_order",
        severity="warning",
        title=f"{len(unusual):,} chat rows have turns in an unusual order",
        count=len(unusual),
        fix="order turns as an optional system turn, then user and assistant alternating, "
        "ending with the assistant; many chat templates reject anything else",
        examples=tuple(
            {"line": example.line, "text": problem,
             "roles": [turn.get("role") for turn in _turns(example)]}
            for example, problem in unusual[:MAX_EXAMPLES]
        ),
    )


def role_order_problem(roles: Sequence[Any]) -> str | None:
    """Returns what is unusual about a chat's role order, or None if nothing is.

    Usual is an optional first ``system`` turn, then ``user`` and ``assistant``
    alternating, ending with ``assistant``. ``tool`` turns may follow an assistant turn
    (a tool call) and must be answered by the assistant.
    """
    roles = list(roles)
    if roles[:1] == ["system"]:
        roles = roles[1:]
    if not roles:
        return "no user or assistant turn"
    previous = None
    for index, role in enumerate(roles):
        if not isinstance(role, str) or role not in _ALLOWED_BEFORE:
            return f"unknown role {role!r} (turn {index + 1})"
        if role == "system":
            return f"a system turn after the first turn (turn {index + 1})"
        if previous not in _ALLOWED_BEFORE[role]:
            after = f"after {previous}" if previous else "first"
            return f"{role} turn {after}"
        previous = role
    if previous != "assistant":
        return f"ends with a {previous} turn, not the assistant's"
    return None


def _label_findings(examples: Sequence[Example]) -> list[Finding | None]:
    """Returns the label-spelling and label-balance findings of classification-like data."""
    responses = [_as_text(example.response) for example in examples]
    if infer_label_set(responses) is None:
        return []
    forms: dict[str, Counter[str]] = defaultdict(Counter)
    for response in responses:
        # Whitespace around a label is layout (CSV cells, a leading continuation space).
        forms[normalize_label(response)][response.strip()] += 1
    return [_label_variants(forms), _label_balance(forms, len(responses))]


def _label_variants(forms: Mapping[str, Counter[str]]) -> Finding | None:
    """Returns a warning when one label is written in several raw forms."""
    varied = {label: counts for label, counts in forms.items() if len(counts) > 1}
    if not varied:
        return None
    described = "; ".join(
        f"{label!r} as "
        + ", ".join(f"{form!r} ({count:,})" for form, count in counts.most_common())
        for label, counts in sorted(varied.items())
    )
    off_form = sum(sum(counts.values()) - counts.most_common(1)[0][1] for counts in varied.values())
    return Finding(
        code="label_variants",
        severity="warning",
        title=f"{len(varied)} label(s) written in several forms: {described}",
        count=off_form,
        fix="write each label one way; the model learns the spellings as different answers "
        "and exact-match scoring counts them wrong",
        details={"forms": {label: dict(counts) for label, counts in sorted(varied.items())}},
    )


def _label_balance(forms: Mapping[str, Counter[str]], n_rows: int) -> Finding:
    """Returns the share of each label; a warning when one is rare or one dominates."""
    counts = {label: sum(spellings.values()) for label, spellings in forms.items()}
    shares = {label: count / n_rows for label, count in sorted(counts.items(), key=lambda i: -i[1])}
    rarest, commonest = min(shares.values()), max(shares.values())
    skewed = rarest < RARE_LABEL_SHARE or commonest > DOMINANT_LABEL_SHARE
    listed = ", ".join(f"{label} {share:.0%}" for label, share in shares.items())
    return Finding(
        code="label_balance",
        severity="warning" if skewed else "info",
        title=f"label shares: {listed}",
        count=n_rows,
        fix="rebalance (collect or upsample the rare labels) and report per-label accuracy; "
        "a model can score well by always giving the common label" if skewed else
        "none needed; compare with the label mix the model will meet in use",
        details={"shares": shares, "counts": counts, "rare_below": RARE_LABEL_SHARE,
                 "dominant_above": DOMINANT_LABEL_SHARE},
    )


def _turns(example: Example) -> list[dict[str, Any]]:
    """Returns the chat turns that are objects (hand-made rows may hold anything)."""
    return [turn for turn in example.messages or () if isinstance(turn, Mapping)]


def _as_text(value: object) -> str:
    """Returns ``value`` as text; None is empty."""
    return value if isinstance(value, str) else "" if value is None else str(value)



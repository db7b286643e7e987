"""``retain audit``: every data check in one report, with an exit code that says go or stop.

Exit codes: 0 go; 1 warnings, with ``--strict`` only; 2 blockers (or input that cannot
be read at all, which the CLI reports as an error before any check runs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from retain.audit.checks import (
    dataset_size,
    degenerate_responses,
    format_consistency,
    row_formats,
)
from retain.audit.contamination import blended_contamination, contamination
from retain.audit.findings import SEVERITIES, Finding, Verdict
from retain.audit.lengths import token_lengths
from retain.audit.overlap import (
    conflicting_labels,
    exact_duplicates,
    near_duplicates,
    reversed_pairs,
)
from retain.config import RetainConfig
from retain.config.loading import ConfigSource, resolve_config
from retain.data.rows import Problem, read_examples_for
from retain.errors import ConfigError, RetainError
from retain.evaluation.commands import config_suites
from retain.evaluation.probes import ProbeSuite
from retain.methods.general import general_source, load_general_texts
from retain.models import load_model_parts
from retain.sources import model_family

logger = logging.getLogger("retain.audit")

# More malformed rows than this share of a file is a blocker: training would silently
# learn from a different dataset than the one the user believes they gave.
MALFORMED_BLOCKER_SHARE = 0.01
REHEARSAL_METHODS = ("replay", "self_augment")  # the methods that blend general rows in


@dataclass
class AuditReport(Verdict):
    """What the audit found in one training file (and its eval file).

    Attributes:
        data: The training file.
        rows: Rows read successfully.
        malformed: Rows that could not be read, with line numbers.
        findings: Every finding, blockers first.
        eval_data: The eval file, if one was audited against the training data.
    """

    data: str
    rows: int
    malformed: list[Problem] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    eval_data: str | None = None

    def to_dict(self) -> dict:
        """Returns the report as JSON-ready data."""
        return {
            "data": self.data,
            "eval_data": self.eval_data,
            "rows": self.rows,
            "malformed": [vars(problem) for problem in self.malformed],
            "counts": self.counts(),
            "findings": [finding.to_dict() for finding in self.findings],
        }


def run_audit(
    config: RetainConfig,
    data: str | Path,
    *,
    eval_data: str | Path | None = None,
    task: str | None = None,
    domain: str | None = None,
    allow_small: bool = False,
    probes: Sequence[ProbeSuite] = (),
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> AuditReport:
    """Audits ``data`` (and its overlap with ``eval_data`` and ``probes``).

    Args:
        config: Supplies the data format, field names, ``data.max_length``, the model
            whose tokenizer measures lengths, and the ``audit`` settings.
        data: The training file.
        eval_data: The evaluation file, checked for overlap with training.
        task: Task kind for the size rule (see :func:`retain.audit.checks.dataset_size`);
            None uses ``audit.task``.
        domain: Domain for the size rule; None uses ``audit.domain``.
        allow_small: Too little data is a warning instead of a blocker (so is
            ``audit.allow_small_data``).
        probes: Probe suites that must not appear in training, nor in the general texts
            the config's rehearsal methods (replay, self_augment) blend rows from.
        tokenizer: The tokenizer for length checks; loaded from ``config.model`` if None.

    Raises:
        DataError: If a file cannot be read at all (missing, unknown format, no valid row).
        ValueError: For an unknown task or domain.
    """
    examples, problems = read_examples_for(config.data, data)
    report = AuditReport(data=str(data), rows=len(examples), malformed=problems,
                         eval_data=str(eval_data) if eval_data else None)
    findings: list[Finding | None] = [_malformed(problems, len(examples) + len(problems)), row_formats(examples)]
    settings = config.audit
    findings.append(dataset_size(
        len(examples), task=task or settings.task, domain=domain or settings.domain,
        base=settings.min_rows, allow_small=allow_small or settings.allow_small_data,
        multipliers={"task": settings.task_multipliers, "domain": settings.domain_multipliers},
    ))
    findings += [degenerate_responses(examples), exact_duplicates(examples),
                 near_duplicates(examples, settings.near_duplicate_threshold)]
    # Preference pairs share prompts by design (several pairs per prompt): what contradicts
    # is a pair reversed, not a second answer.
    findings.append(reversed_pairs(examples) if any(example.is_preference for example in examples)
                    else conflicting_labels(examples, settings.conflict_threshold))
    findings += format_consistency(examples)
    window = None
    if tokenizer is None:
        tokenizer, window = _tokenizer(config)
        findings.append(_whose_tokenizer(config, measured=tokenizer is not None))
    if tokenizer is not None:
        findings += token_lengths(examples, tokenizer, config.data.max_length, window,
                                  chat_template=config.model.chat_template)
    eval_examples = None
    if eval_data:
        eval_examples, eval_problems = read_examples_for(config.data, eval_data)
        findings.append(_malformed(eval_problems, len(eval_examples) + len(eval_problems), "eval "))
    findings += contamination(examples, eval_examples, probes, settings.near_duplicate_threshold)
    findings.append(_general_source_contamination(config, probes))
    report.findings = sorted((f for f in findings if f is not None), key=lambda f: SEVERITIES.index(f.severity))
    return report


def _whose_tokenizer(config: RetainConfig, *, measured: bool) -> Finding:
    """Says which model's tokenizer counted the tokens; a count made with the default model's
    because no config named one is not the user's model's, and is a warning saying so."""
    name = config.model.name_or_path
    default = "name_or_path" not in config.model.model_fields_set  # no config, or one naming no model
    if not measured:
        return Finding(code="tokenizer", severity="warning", count=0,
                       title=f"token lengths not checked: the tokenizer of '{name}' could not be loaded",
                       fix="name a model whose tokenizer loads in model.name_or_path (-c CONFIG)")
    if default:
        return Finding(code="tokenizer", severity="warning", count=0,
                       title=f"token lengths counted with the tokenizer of '{name}', retain's default model, "
                       "not of the model you will train",
                       fix="pass -c CONFIG naming your model in model.name_or_path; lengths in another "
                       "tokenizer's tokens can differ two-fold",
                       details={"model": name, "default": True})
    return Finding(code="tokenizer", severity="info", count=0,
                   title=f"token lengths counted with the tokenizer of '{name}'",
                   fix="none needed", details={"model": name, "default": False})


def _general_source_contamination(config: RetainConfig, probes: Sequence[ProbeSuite]) -> Finding | None:
    """Returns the ``probe_contamination`` finding of the general texts that replay and
    self-augmentation draw their rows from (their rows are a sample of these texts, or
    the base model's answers to prompts cut from them), or None.

    Raises:
        RetainError: If the config names no general source where one is needed, or it
            cannot be read (as ``retain train`` would).
    """
    users = [name for name in REHEARSAL_METHODS if name in config.method.use]
    if not users or not probes:
        return None
    source = general_source(config) or "none"
    return blended_contamination(
        load_general_texts(config), probes,
        f"the general texts {' and '.join(users)} draw from (method.general.source: {source})",
        config.audit.near_duplicate_threshold,
    )


def _malformed(problems: list[Problem], total: int, which: str = "") -> Finding | None:
    if not problems:
        return None
    share = len(problems) / max(1, total)
    return Finding(
        code=f"{which.strip() + '_' if which else ''}malformed_rows",
        severity="blocker" if share > MALFORMED_BLOCKER_SHARE else "warning",
        title=f"{len(problems):,} {which}rows cannot be read ({share:.1%} of {total:,})",
        count=len(problems),
        fix="fix or remove these rows; training would silently use a different dataset",
        examples=tuple({"line": p.line, "text": p.message, "field": p.field, "fix": p.fix} for p in problems[:5]),
        details={"share": share},
    )


def _tokenizer(config: RetainConfig) -> tuple[PreTrainedTokenizerBase | None, int | None]:
    """Returns the configured model's tokenizer and context window.

    None for the tokenizer (with a warning) if it cannot be loaded: the other checks
    still run.
    """
    name = config.model.name_or_path
    family = model_family(name)
    try:
        if family is not None and family.tokenizer is not None:  # no model is built to count tokens
            tokenizer = family.tokenizer()
            return tokenizer, tokenizer.model_max_length
        parts = load_model_parts(name, revision=config.model.revision,
                                 trust_remote_code=config.model.trust_remote_code, progress=False)
        return parts.tokenizer, parts.context_window
    except (OSError, ValueError, RetainError) as error:
        logger.warning("token lengths not checked: cannot load the tokenizer of %s (%s)", name, error)
        return None, None


def audit(data: str | Path, config: ConfigSource = None, *, eval_data: str | Path | None = None,
          task: str | None = None, domain: str | None = None, allow_small: bool = False,
          overrides: Sequence[str] = ()) -> AuditReport:
    """Audits training data before training (``retain audit``).

    Args:
        data: The training file.
        config: Data format and fields, ``data.max_length``, the model whose tokenizer
            counts tokens, the probe suites checked for contamination, the ``audit`` settings.
        eval_data: An evaluation file, checked for overlap with training.
        task: Task kind for the size rule (``classification``, ``qa``, ``generation``,
            ``chat``); None uses ``audit.task``.
        domain: Domain for the size rule; None uses ``audit.domain``.
        allow_small: Too little data is a warning, not a blocker.
        overrides: ``section.key=value`` settings applied on top of ``config``.

    Returns:
        The report; ``report.count("blocker")`` says whether to train.

    Raises:
        ConfigError: An invalid config, task or domain.
        DataError: A file that cannot be read at all.
    """
    resolved = resolve_config(config, overrides)
    try:
        return run_audit(resolved, data, eval_data=eval_data, task=task, domain=domain, allow_small=allow_small,
                         probes=config_suites(resolved, whole=True))
    except ValueError as error:
        raise ConfigError(str(error), fix="see retain audit --help for the valid names") from None

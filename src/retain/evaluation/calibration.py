"""Probes calibrated to the base model: forgetting measured on what the base knew.

A general suite asks things a small model never could. Its wrong answers before training
cannot be forgotten, and a run that makes it luckier or unluckier on them moves the
accuracy without anything learned or lost. Calibration keeps, per category, the items
the base model answers right by generation, also when the prompt is paraphrased
(:data:`PARAPHRASES`: the same question laid out differently; greedy decoding makes a
second seed pointless), so that what a check later finds wrong was known before. A
category with fewer than ``min_items`` such items is *not measurable*: it is left out of
the checks and reported as such, never as forgetting.

The calibrated suite keeps its name; its version gains ``+known-<digest of the kept
ids>``, so its results are compared, and cached, only with the same calibration.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from retain.data.perturb import perturb
from retain.data.prompting import PromptFormat
from retain.errors import ConfigError
from retain.evaluation.engine import EvalSettings
from retain.evaluation.generation import score_probes_by_generation
from retain.evaluation.probes import ProbeSuite
from retain.io import read_cached_json, write_cached_json

logger = logging.getLogger("retain.evaluation")

CALIBRATION_FILE = "calibration.json"
"""Where a run records the calibration it was trained with."""

PARAPHRASES = ("extra_whitespace", "lowercase")
"""The perturbations (:mod:`retain.data.perturb`) a known item must also survive."""


@dataclass(frozen=True)
class Calibration:
    """One suite calibrated to a model.

    Attributes:
        suite: The calibrated suite (the known items of the measurable categories).
        total: Items per category before calibration.
        known: Known items per category (right by generation, also when paraphrased).
        not_measurable: Categories with fewer than ``min_items`` known items, left out.
        min_items: Known items a category needs to be measured.
    """

    suite: ProbeSuite
    total: dict[str, int]
    known: dict[str, int]
    not_measurable: tuple[str, ...]
    min_items: int

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite.name, "version": self.suite.version, "min_items": self.min_items,
                "total": self.total, "known": self.known, "not_measurable": list(self.not_measurable),
                "kept_ids": [item.id for item in self.suite.items]}

    def summary(self) -> str:
        """One line: how much of the suite is kept, and what cannot be measured."""
        kept = len(self.suite.items)
        line = (f"probes calibrated to the base ({self.suite.name}): {kept} of {sum(self.total.values())} items "
                f"known in {len(self.total) - len(self.not_measurable)} of {len(self.total)} categories")
        if self.not_measurable:
            line += (f"; not measurable (under {self.min_items} known items): "
                     + ", ".join(f"{name} {self.known[name]}/{self.total[name]}" for name in self.not_measurable))
        return line


def known_ids(result: dict[str, Any], suite: ProbeSuite) -> set[str]:
    """Returns the ids of ``suite``'s items a result (``EvalResult.to_dict()``) has right
    by generation."""
    scores = (result.get("probes") or {}).get(suite.name) or {}
    score = scores.get("generation")
    if score is None or score.get("version") != suite.version:
        raise ValueError(f"the base result has no generation score of suite {suite.name!r} version "
                         f"{suite.version!r} to calibrate on")
    return {entry["id"] for entry in score.get("items", []) if entry["correct"]}


def stable_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, suite: ProbeSuite, ids: set[str],
               prompt_format: PromptFormat, settings: EvalSettings) -> set[str]:
    """Returns the ids among ``ids`` still answered right under every paraphrase that
    changes their prompt."""
    stable = set(ids)
    for name in PARAPHRASES:
        changed = []
        for item in suite.items:
            if item.id in stable:
                prompt = perturb(item.prompt, name)
                if prompt is not None:
                    changed.append(replace(item, prompt=prompt))
        if not changed:
            continue
        score = score_probes_by_generation(model, tokenizer, replace(suite, items=tuple(changed)), prompt_format,
                                           max_new_tokens=settings.probe_max_new_tokens,
                                           batch_size=settings.generation_batch_size)
        stable -= {item_id for item_id, correct in zip(score.ids, score.correct) if not correct}
    return stable


def calibrate(suite: ProbeSuite, known: set[str], min_items: int, limit: int | None = None) -> Calibration:
    """Returns ``suite`` cut to the ``known`` items of each category that has at least
    ``min_items`` of them (the first ``limit`` of them, ``probes.per_category``)."""
    groups = suite.by_category()
    counts = {name: sum(item.id in known for item in items) for name, items in groups.items()}
    not_measurable = tuple(name for name, count in counts.items() if count < min_items)
    kept = tuple(item for name, items in groups.items() if name not in not_measurable
                 for item in [item for item in items if item.id in known][:limit])
    digest = hashlib.sha256("\n".join(item.id for item in kept).encode()).hexdigest()[:10]
    return Calibration(
        suite=replace(suite, version=f"{suite.version}+known-{digest}", items=kept),
        total={name: len(items) for name, items in groups.items()}, known=counts,
        not_measurable=not_measurable, min_items=min_items)


def calibrate_suites(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, suites: list[ProbeSuite],
                     result: dict[str, Any], *, chat_template: str, settings: EvalSettings, min_items: int,
                     limit: int | None = None, cache: Path | None = None) -> list[Calibration]:
    """Calibrates each suite to ``model``, whose evaluation ``result`` (by generation, every
    item) is given; the paraphrases are scored here.

    ``cache``: a file keeping the stable ids per suite (the caller keys it by the model's
    weights, the suites and the settings), so the paraphrase pass runs once per base; the
    cut (``min_items``, ``limit``) is made afresh each time.
    """
    calibrations = cached_calibrations(cache, suites, min_items, limit)
    if calibrations is not None:
        return calibrations
    stable = {}
    for suite in suites:
        prompt_format = PromptFormat.for_tokenizer(tokenizer, chat_template, suite.delimiter)
        stable[suite.name] = stable_ids(model, tokenizer, suite, known_ids(result, suite), prompt_format, settings)
    write_cached_json(cache, {name: sorted(ids) for name, ids in stable.items()})
    return [calibrate(suite, stable[suite.name], min_items, limit) for suite in suites]


def cached_calibrations(cache: Path | None, suites: list[ProbeSuite], min_items: int,
                        limit: int | None = None) -> list[Calibration] | None:
    """Returns the calibrations of ``suites`` from the stable ids :func:`calibrate_suites`
    cached, or None when there are none, or they are damaged or of other items."""
    stored = read_cached_json(cache)
    if stored is None:
        return None
    try:
        stable = {suite.name: set(stored[suite.name]) for suite in suites}
    except (KeyError, TypeError):
        stable = None
    if stable is None or any(not stable[suite.name] <= {item.id for item in suite.items} for suite in suites):
        logger.warning("ignoring unusable cached calibration %s: not of these suites' items", cache)
        return None
    return [calibrate(suite, stable[suite.name], min_items, limit) for suite in suites]


def restored(data: dict[str, Any], suite: ProbeSuite) -> Calibration:
    """Returns a calibration read back (``Calibration.to_dict``) for the full ``suite``.

    Raises:
        ValueError: If it does not belong to this suite or its items.
    """
    kept = set(data["kept_ids"])
    items = tuple(item for item in suite.items if item.id in kept)
    if data["suite"] != suite.name or len(items) != len(kept) or not data["version"].startswith(f"{suite.version}+"):
        raise ValueError(f"the calibration of suite {data['suite']!r} does not match suite {suite.name!r} "
                         f"version {suite.version!r}")
    return Calibration(suite=replace(suite, version=data["version"], items=items), total=dict(data["total"]),
                       known=dict(data["known"]), not_measurable=tuple(data["not_measurable"]),
                       min_items=int(data["min_items"]))


def read_calibrations(path: Path, suites: list[ProbeSuite]) -> list[Calibration]:
    """Returns the calibrations a run recorded (``CALIBRATION_FILE``) of those of
    ``suites`` it names, in their order.

    Raises:
        ValueError: If the file is damaged or of other suites or items.
    """
    try:
        entries = {entry["suite"]: entry for entry in json.loads(path.read_text())}
        return [restored(entries[suite.name], suite) for suite in suites if suite.name in entries]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path.name} is damaged or of other suites: {error}") from None


def measurable(calibrations: list[Calibration]) -> list[ProbeSuite]:
    """Returns the calibrated suites that kept any item.

    Raises:
        ConfigError: If none did: there is nothing to measure forgetting on.
    """
    suites = [calibration.suite for calibration in calibrations if calibration.suite.items]
    if not suites:
        raise ConfigError(
            f"the base model knows fewer than {calibrations[0].min_items} items of every category of the probe "
            "suites: there is nothing to measure forgetting on", field="probes.calibrate",
            fix="lower probes.calibrate_min_items, name suites the model can answer (probes.suites, --suite), "
            "or leave calibration out")
    return suites


def calibrated_result(result: dict[str, Any], calibrations: list[Calibration]) -> dict[str, Any]:
    """Returns a result (``EvalResult.to_dict()``) with its probe scores cut to the
    calibrated suites' items, accuracies and counts recomputed, versions renamed, and a
    suite that kept no item left out; the rest (task, drift, smoke) as it was."""
    probes = dict(result.get("probes") or {})
    for calibration in calibrations:
        name = calibration.suite.name
        if not calibration.suite.items:
            probes.pop(name, None)
            continue
        kept = {item.id for item in calibration.suite.items}
        probes[name] = {method: _cut(score, kept, calibration.suite.version)
                        for method, score in probes[name].items()}
    return {**result, "probes": probes}


def _cut(score: dict[str, Any], kept: set[str], version: str) -> dict[str, Any]:
    items = [entry for entry in score.get("items", []) if entry["id"] in kept]
    counts: dict[str, int] = {}
    right: dict[str, int] = {}
    for entry in items:
        counts[entry["category"]] = counts.get(entry["category"], 0) + 1
        right[entry["category"]] = right.get(entry["category"], 0) + bool(entry["correct"])
    accuracy = {name: right[name] / counts[name] for name in counts}
    accuracy["overall"] = sum(right.values()) / len(items) if items else 0.0  # as accuracy_by_category
    return {**score, "version": version, "accuracy": accuracy, "counts": counts, "items": items}

"""Forgetting metrics: how much accuracy a model lost between two probe runs.

:func:`compare` is the one place where a "drop" is defined; guards, sweeps and reports
all call it. A drop is positive when the model forgot: ``before - after``.

The confidence intervals come from a paired bootstrap over items (Efron & Tibshirani,
*An Introduction to the Bootstrap*, 1993): the same resampled items are scored before and
after, so the interval reflects the items that actually changed, not two independent
sampling noises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from retain.summary import OVERALL


class _Item(Protocol):
    """Anything with an id and a category, like :class:`~retain.evaluation.probes.ProbeItem`."""

    @property
    def id(self) -> str: ...

    @property
    def category(self) -> str: ...


@dataclass(frozen=True)
class ItemResults:
    """Per-item correctness of one model on one probe suite, in suite order.

    Attributes:
        suite: Suite name.
        version: Suite version: only equal versions are comparable.
        ids: Item ids, unique.
        categories: Category of each item.
        correct: Whether the model got each item right.

    Raises:
        ValueError: If the three tuples differ in length or an id repeats.
    """

    suite: str
    version: str
    ids: tuple[str, ...]
    categories: tuple[str, ...]
    correct: tuple[bool, ...]

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.categories) == len(self.correct):
            raise ValueError(
                f"{self.suite}: got {len(self.ids)} ids, {len(self.categories)} categories "
                f"and {len(self.correct)} results; they must be one per item"
            )
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"{self.suite}: item ids must be unique")

    def subset(self, keep: Callable[[str], bool]) -> ItemResults:
        """Returns the results of the items whose id ``keep`` accepts, in order."""
        chosen = [index for index, item_id in enumerate(self.ids) if keep(item_id)]
        return ItemResults(suite=self.suite, version=self.version,
                           ids=tuple(self.ids[index] for index in chosen),
                           categories=tuple(self.categories[index] for index in chosen),
                           correct=tuple(self.correct[index] for index in chosen))

    @classmethod
    def from_flags(
        cls, suite: str, version: str, items: Sequence[_Item], correct: Sequence[bool]
    ) -> ItemResults:
        """Builds results from items (with ``.id`` and ``.category``) and their flags.

        Raises:
            ValueError: As the constructor does.
        """
        return cls(
            suite=suite,
            version=version,
            ids=tuple(item.id for item in items),
            categories=tuple(item.category for item in items),
            correct=tuple(bool(flag) for flag in correct),
        )


@dataclass(frozen=True)
class CategoryForgetting:
    """Accuracy before and after on one category (or all items), and the drops.

    Attributes:
        items: Items in the category.
        accuracy_before: Share right before.
        accuracy_after: Share right after.
        absolute_drop: ``accuracy_before - accuracy_after``; positive means forgotten.
        relative_drop: ``absolute_drop / accuracy_before``; None when nothing was right
            before (nothing could be forgotten).
        absolute_drop_ci: Bootstrap percentile interval ``(low, high)`` of the absolute drop.
        relative_drop_ci: The same for the relative drop; None when no resample had a
            right answer before.
        newly_wrong: Items right before and wrong after.
        newly_right: Items wrong before and right after.
    """

    items: int
    accuracy_before: float
    accuracy_after: float
    absolute_drop: float
    relative_drop: float | None
    absolute_drop_ci: tuple[float, float]
    relative_drop_ci: tuple[float, float] | None
    newly_wrong: int
    newly_right: int


@dataclass(frozen=True)
class ForgettingReport:
    """What changed between two runs of one probe suite.

    Attributes:
        suite: Suite name.
        version: Suite version.
        confidence: Coverage of the intervals, e.g. 0.95.
        n_bootstrap: Bootstrap resamples behind each interval.
        seed: Seed of the resampling.
        categories: Figures per category in suite order, then :data:`OVERALL`.
    """

    suite: str
    version: str
    confidence: float
    n_bootstrap: int
    seed: int
    categories: dict[str, CategoryForgetting]

    @property
    def overall(self) -> CategoryForgetting:
        """Returns the figures over all items."""
        return self.categories[OVERALL]

    def exceeds(self, threshold: float) -> bool:
        """Returns whether the overall relative drop is above ``threshold`` (0.05 = 5 %).

        An undefined relative drop (nothing right before) never exceeds.
        """
        return _above(self.overall.relative_drop, threshold)

    def categories_exceeding(self, threshold: float) -> list[str]:
        """Returns the categories whose relative drop is above ``threshold``.

        :data:`OVERALL` is not a category here; ask :meth:`exceeds` for it.
        """
        return [
            name
            for name, figures in self.categories.items()
            if name != OVERALL and _above(figures.relative_drop, threshold)
        ]

    def to_dict(self) -> dict[str, object]:
        """Returns the report as plain JSON-ready data."""
        return asdict(self)


def _above(relative_drop: float | None, threshold: float) -> bool:
    """Returns whether a relative drop is defined and above ``threshold``."""
    return relative_drop is not None and relative_drop > threshold


def compare(
    before: ItemResults,
    after: ItemResults,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ForgettingReport:
    """Returns the accuracy drop from ``before`` to ``after``, per category and overall.

    Items are matched by id, so ``after`` may list them in another order.

    Args:
        before: Results of the reference model (usually the base).
        after: Results of the tuned model on the same suite and version.
        n_bootstrap: Resamples for the confidence intervals.
        confidence: Coverage of the percentile intervals, in (0, 1).
        seed: Seed of the resampling: equal seeds give equal intervals.

    Returns:
        A :class:`ForgettingReport`.

    Raises:
        ValueError: If the suites, versions, ids or categories of the two results
            differ, there are no items, or ``n_bootstrap`` or ``confidence`` is out of
            range.
    """
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not before.ids:
        raise ValueError(f"suite {before.suite!r} has no items: there is nothing to compare")
    after_correct = _aligned(before, after)
    before_correct = np.asarray(before.correct, dtype=bool)
    categories = np.asarray(before.categories, dtype=object)
    rng = np.random.default_rng(seed)
    groups = {name: categories == name for name in dict.fromkeys(before.categories)}
    groups[OVERALL] = np.ones(len(before.ids), dtype=bool)
    figures = {
        name: _category_forgetting(
            before_correct[mask], after_correct[mask], n_bootstrap, confidence, rng
        )
        for name, mask in groups.items()
    }
    return ForgettingReport(
        suite=before.suite,
        version=before.version,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        seed=seed,
        categories=figures,
    )


def _aligned(before: ItemResults, after: ItemResults) -> np.ndarray:
    """Returns ``after.correct`` reordered to ``before``'s item order, as bools.

    Raises:
        ValueError: If the two results are not of the same suite, version, items and
            categories.
    """
    if (before.suite, before.version) != (after.suite, after.version):
        raise ValueError(
            f"cannot compare suite {before.suite!r} version {before.version!r} with suite "
            f"{after.suite!r} version {after.version!r}: score both models on the same "
            "suite version"
        )
    missing = sorted(set(before.ids) - set(after.ids))
    extra = sorted(set(after.ids) - set(before.ids))
    if missing or extra:
        raise ValueError(
            f"suite {before.suite!r}: the item ids differ ({len(missing)} only before, "
            f"e.g. {missing[:3]}; {len(extra)} only after, e.g. {extra[:3]}); score both "
            "models on the same items"
        )
    position = {item_id: index for index, item_id in enumerate(after.ids)}
    order = [position[item_id] for item_id in before.ids]
    changed = [
        item_id
        for item_id, category, index in zip(before.ids, before.categories, order)
        if after.categories[index] != category
    ]
    if changed:
        raise ValueError(
            f"suite {before.suite!r}: {len(changed)} items changed category, e.g. "
            f"{changed[:3]}; the suite files differ although their versions match"
        )
    return np.asarray(after.correct, dtype=bool)[order]


def _category_forgetting(
    before: np.ndarray,
    after: np.ndarray,
    n_bootstrap: int,
    confidence: float,
    rng: np.random.Generator,
) -> CategoryForgetting:
    """Returns the figures of one group of items, given its paired correctness flags."""
    items = len(before)
    accuracy_before = float(before.mean())
    accuracy_after = float(after.mean())
    absolute = accuracy_before - accuracy_after
    boot_before, boot_after = _paired_bootstrap(before, after, n_bootstrap, rng)
    return CategoryForgetting(
        items=items,
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
        absolute_drop=absolute,
        relative_drop=absolute / accuracy_before if accuracy_before > 0 else None,
        absolute_drop_ci=_percentile_interval(boot_before - boot_after, confidence),
        relative_drop_ci=_relative_interval(boot_before, boot_after, confidence),
        newly_wrong=int((before & ~after).sum()),
        newly_right=int((~before & after).sum()),
    )


def _paired_bootstrap(
    before: np.ndarray, after: np.ndarray, n_bootstrap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Returns bootstrap accuracies before and after, each of shape (n_bootstrap,).

    Resampling ``n`` items with replacement and reading both flags of each drawn item is
    the same, in distribution, as drawing how many of the ``n`` fall in each of the four
    (before, after) outcomes from a multinomial with the observed outcome shares. The
    multinomial draw is exact and costs O(n_bootstrap), whatever the number of items.
    """
    items = len(before)
    outcome_counts = np.array(
        [(before & after).sum(), (before & ~after).sum(), (~before & after).sum(),
         (~before & ~after).sum()],
        dtype=np.int64,
    )
    draws = rng.multinomial(items, outcome_counts / items, size=n_bootstrap)  # (n_bootstrap, 4)
    right_before = draws[:, 0] + draws[:, 1]
    right_after = draws[:, 0] + draws[:, 2]
    return right_before / items, right_after / items


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Returns the central ``confidence`` percentile interval of ``samples``."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


def _relative_interval(
    boot_before: np.ndarray, boot_after: np.ndarray, confidence: float
) -> tuple[float, float] | None:
    """Returns the interval of the relative drop over resamples where it is defined."""
    defined = boot_before > 0
    if not defined.any():
        return None
    relative = (boot_before[defined] - boot_after[defined]) / boot_before[defined]
    return _percentile_interval(relative, confidence)

"""How rows of several sources are interleaved so that every stretch of the order holds
each source in its share: one function, used by ``retain train``'s sampler of blended rows
(:class:`retain.training.sampling.MixedSourceSampler`) and by :func:`retain.replay`, the
blend handed to a trainer of your own (:mod:`retain.dropin.rows`).
"""

from __future__ import annotations

from collections.abc import Sequence


def spread_evenly(orders: Sequence[Sequence[int]]) -> list[int]:
    """Returns the items of every source in one order, each source spread evenly over it.

    The k-th of a source's n items goes to the position ``(k + 1/2) / n`` of the whole;
    ties go to the source listed first. So any ``B`` consecutive items of ``N`` hold about
    ``B x n / N`` of a source of ``n``: to within one item per source, never a block of one
    source while another waits.

    Args:
        orders: Per source, its items (indices into one shared list of rows), each source
            already in the order its own items should keep.

    Returns:
        Every item once.
    """
    keyed: list[tuple[float, int, int]] = []
    for rank, items in enumerate(orders):
        keyed += [((position + 0.5) / len(items), rank, item) for position, item in enumerate(items)]
    keyed.sort()
    return [item for _, _, item in keyed]

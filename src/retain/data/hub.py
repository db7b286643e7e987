"""Datasets of the local Hugging Face cache, named ``hf:NAME[:SPLIT]`` wherever retain takes
data (``data.train``, ``data.eval``, ``data.validation``, ``data.ood``,
``method.general.source``).

They are read by ``datasets.load_dataset`` from the datasets cache only (``HF_DATASETS_CACHE``,
``~/.cache/huggingface/datasets`` by default), never downloaded: a run reads the data it was
given, the same on every machine the cache is copied to, and an unreachable Hub costs no
time-outs. A dataset that is not cached is one line naming the setting, the dataset and
the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from retain.data.formats import Fields, check_columns
from retain.errors import DataError

HF_PREFIX = "hf:"


def is_hub_source(source: object) -> bool:
    """Returns whether ``source`` names a dataset of the cache (``hf:NAME[:SPLIT]``)."""
    return isinstance(source, str) and source.startswith(HF_PREFIX)


def load_hub_dataset(source: str, *, setting: str | None = None, limit: int | None = None) -> Any:
    """Returns the ``datasets.Dataset`` that ``source`` names, read from the local cache.

    Args:
        source: ``hf:NAME`` (split ``train``) or ``hf:NAME:SPLIT``.
        setting: The config setting that names it (``data.train``), for errors.
        limit: Read only the first rows, if set.

    Raises:
        DataError: If the name is empty, the dataset is not in the cache, or the split
            does not exist; one line with the setting, the dataset and the fix.
    """
    import datasets  # imported late, it is slow

    name, _, split = source[len(HF_PREFIX):].partition(":")
    split = split or "train"
    if not name:
        raise DataError("hf: names no dataset", file=source, field=setting,
                        fix="write hf:NAME or hf:NAME:SPLIT, e.g. hf:tatsu-lab/alpaca:train")
    try:
        with _cache_only():
            return datasets.load_dataset(name, split=f"{split}[:{limit}]" if limit else split)
    except ConnectionError:  # datasets' way of saying: offline, and not in the cache
        raise DataError(
            f"the dataset '{name}' is not in the local datasets cache ({datasets.config.HF_DATASETS_CACHE}); "
            "retain reads hf: data from the cache only, it never downloads",
            file=source, field=setting,
            fix=f"download it once where the Hub is reachable (datasets.load_dataset('{name}')) into this "
            "cache, or point HF_DATASETS_CACHE at a cache that has it, or give a data file instead",
        ) from None
    # datasets raises many kinds for a bad split or a damaged cache (ValueError, KeyError, OSError).
    except Exception as error:  # noqa: BLE001
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise DataError(
            f"cannot read the dataset '{name}' (split '{split}') from the local cache: {first}",
            file=source, field=setting,
            fix="check the name and the split (hf:NAME:SPLIT), or give a data file instead",
        ) from None


def hub_rows(source: str, fields: Fields, setting: str | None = None) -> Iterator[tuple[int, object]]:
    """Yields (row number, row) per row of the cached dataset ``source`` names.

    Raises:
        DataError: As :func:`load_hub_dataset` does, and if no column holds rows of a
            format retain reads.
    """
    dataset = load_hub_dataset(source, setting=setting)
    check_columns(dataset.column_names, fields, source)
    yield from enumerate(dataset, start=1)


@contextmanager
def _cache_only() -> Iterator[None]:
    """Runs ``datasets`` offline for the block: it then looks in its cache and nowhere else,
    without its warning that it does (retain says so in its own errors).

    ``HF_DATASETS_OFFLINE`` is read once, when datasets is imported; its value lives on as
    ``datasets.config.HF_HUB_OFFLINE``, which ``load_dataset`` consults at each call.
    """
    import datasets.config
    from datasets.utils import logging as datasets_logging

    saved, verbosity = datasets.config.HF_HUB_OFFLINE, datasets_logging.get_verbosity()
    datasets.config.HF_HUB_OFFLINE = True
    datasets_logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved
        datasets_logging.set_verbosity(verbosity)

"""Names that stand for something retain can build or find: model families (``lab``),
probe suites and their reference texts. Providers register here; the core asks here and
never names a provider.

The lab registers itself from :mod:`retain.lab.plugin`, which the ``retain.sources`` entry
point group (``pyproject.toml``) names; every module of that group is imported the first
time a name is looked up, so another package can add its own model family or suite the
same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

logger = logging.getLogger("retain")

ENTRY_POINTS = "retain.sources"
ADAPTER_CONFIG = "adapter_config.json"
BASE_KEY = "base_model_name_or_path"


@dataclass(frozen=True)
class ModelFamily:
    """Models retain can build by name, and recognise by their directory.

    Attributes:
        name: The name that stands for the family's default model (``lab``).
        build: Returns the default model's directory, building it first if it is not
            cached (its argument: show progress).
        find: Returns the default model's directory if it is built, else None.
        owns: Whether a model directory is one of the family's.
        suites: The probe suites its models are judged by when a config names none.
        general_texts: The general texts rehearsal reads for one of its models (the
            family's name or a directory it owns; what ``method.general.source`` defaults
            to), or None.
        tokenizer: Its tokenizer without building a model (the audit counts tokens with
            it), or None.
    """

    name: str
    build: Callable[[bool], Path]
    find: Callable[[], Path | None]
    owns: Callable[[Path], bool]
    suites: tuple[str, ...] = ()
    general_texts: Callable[[str], list[str]] | None = None
    tokenizer: Callable[[], Any] | None = None


@dataclass(frozen=True)
class SuiteSource:
    """A probe suite known by name.

    Attributes:
        name: The suite's name.
        load: Returns the suite (a :class:`retain.evaluation.probes.ProbeSuite`; not
            imported here, so that this registry stays below everything that asks it).
        reference: Returns the held-out text drift is measured on beside this suite, or None
            for the built-in reference text.
    """

    name: str
    load: Callable[[], Any]
    reference: Callable[[], str] | None = None


@dataclass
class _Registry:
    models: dict[str, ModelFamily] = field(default_factory=dict)
    suites: dict[str, SuiteSource] = field(default_factory=dict)
    loaded: bool = False


_REGISTRY = _Registry()


def register_model(family: ModelFamily) -> None:
    """Makes ``family.name`` stand for the family's default model."""
    _REGISTRY.models[family.name] = family


def register_suite(source: SuiteSource) -> None:
    """Makes ``source.name`` stand for a probe suite."""
    _REGISTRY.suites[source.name] = source


def model_family(name: str) -> ModelFamily | None:
    """Returns the model family registered as ``name``, or None."""
    return _registry().models.get(name)


def suite_source(name: str) -> SuiteSource | None:
    """Returns the probe suite registered as ``name``, or None."""
    return _registry().suites.get(name)


def suite_names() -> list[str]:
    """Returns the registered suite names."""
    return list(_registry().suites)


def family_of(name_or_path: str | Path) -> ModelFamily | None:
    """Returns the family of a model: one named by its family's name, a model directory
    the family owns, or adapters (a run directory's ``model/`` included) trained on one of
    those; None for any other model (a hub id, a directory of no family)."""
    base = base_of(name_or_path)
    family = model_family(base)
    if family is not None:
        return family
    path = Path(base)
    return next((family for family in _registry().models.values() if path.is_dir() and family.owns(path)), None)


def base_of(name_or_path: str | Path) -> str:
    """Returns the model that adapters were trained on (following a run directory's
    ``model/`` and adapters of adapters), or ``name_or_path`` itself when it holds no
    adapters or its ``adapter_config.json`` cannot be read."""
    seen = {str(name_or_path)}
    current = str(name_or_path)
    while True:
        path = Path(current)
        folder = next((candidate for candidate in (path, path / "model")
                       if (candidate / ADAPTER_CONFIG).is_file()), None)
        if folder is None:
            return str(folder_of_model(path)) if path.is_dir() else current
        try:
            base = json.loads((folder / ADAPTER_CONFIG).read_text()).get(BASE_KEY) or ""
        except (OSError, ValueError, AttributeError):
            return current
        if not isinstance(base, str) or not base or base in seen:
            return current
        seen.add(base)
        current = base


def folder_of_model(path: Path) -> Path:
    """Returns the folder holding a model's weights: ``path``, or a run directory's ``model/``."""
    run_model = path / "model"
    if not (path / "config.json").is_file() and (run_model / "config.json").is_file():
        return run_model
    return path


def _registry() -> _Registry:
    """Returns the registry, after importing every module of the entry point group once."""
    if not _REGISTRY.loaded:
        _REGISTRY.loaded = True
        for point in entry_points(group=ENTRY_POINTS):
            try:
                point.load()
            except Exception as error:  # noqa: BLE001 - a broken plugin must not break retain
                logger.warning("the %s plugin %r failed to load: %s", ENTRY_POINTS, point.name, error)
    return _REGISTRY

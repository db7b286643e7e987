"""One registry of methods: ``method.use`` names map to :class:`~retain.methods.base.Method`
classes here, and nowhere else."""

from __future__ import annotations

from retain.config import RetainConfig
from retain.config.schema import METHODS
from retain.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: makes ``cls`` available as ``method.use: [cls.name]``."""
    if cls.name not in METHODS:
        raise ValueError(f"method {cls.name!r} is not in retain.config.schema.METHODS")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Method]]:
    """Returns every registered method by name, in hook order."""
    _load_builtins()
    return {name: _REGISTRY[name] for name in METHODS if name in _REGISTRY}


def methods_for(config: RetainConfig) -> list[Method]:
    """Returns the methods ``config.method.use`` names, in hook order (the base method
    that picks the trainable weights first; lora when none is named)."""
    table = registered()
    names = {config.method.base, *config.method.use}
    return [table[name](config) for name in METHODS if name in names]


def _load_builtins() -> None:
    # Importing the modules runs their @register decorators.
    from retain.methods import (  # noqa: F401
        adapters,
        layers,
        pruning,
        regularizers,
        rehearsal,
        token_forget,
    )

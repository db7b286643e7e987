"""One registry of methods: ``method.use`` names map to :class:`~retain.methods.base.Method`
classes here, and nowhere else. The registry imports no method: each registers itself
with :func:`register` (as PEFT's ``register_peft_method``), and :mod:`retain.methods`
imports the built-in ones."""

from __future__ import annotations

from retain.config import RetainConfig
from retain.config.methods import METHODS
from retain.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: makes ``cls`` available as ``method.use: [cls.name]``."""
    if cls.name not in METHODS:
        raise ValueError(f"method {cls.name!r} is not in retain.config.methods.METHODS")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Method]]:
    """Returns every registered method by name, in hook order (the built-in ones register
    when :mod:`retain.methods` is imported, which importing this module does first)."""
    return {name: _REGISTRY[name] for name in METHODS if name in _REGISTRY}


def methods_for(config: RetainConfig) -> list[Method]:
    """Returns the methods ``config.method.use`` names, in hook order (the base method
    that picks the trainable weights first; lora when none is named)."""
    table = registered()
    names = {config.method.base, *config.method.use}
    return [table[name](config) for name in METHODS if name in names]


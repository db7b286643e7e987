"""One registry of methods: ``method.use`` names map to :class:`~retain.methods.base.Method`
classes here, and nowhere else. The registry imports no method: each registers itself
with :func:`register` (as PEFT's ``register_peft_method``), and :mod:`retain.methods`
imports every file of the package."""

from __future__ import annotations

from retain.config import RetainConfig
from retain.config.methods import method_names
from retain.config.registry import declare_method, forget_method
from retain.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: makes ``cls`` available as ``method.use: [cls.name]``.

    A built-in method's name, place in the hook order and settings are in
    :mod:`retain.config.methods`; any other method brings them as class attributes
    (``settings``, ``after``, ``chooses_weights``) and the config learns them here.

    Raises:
        ValueError: If another class already registered under ``cls.name``.
    """
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is registered twice: {_REGISTRY[cls.name].__qualname__} "
                         f"and {cls.__qualname__}")
    if cls.name not in method_names():
        declare_method(cls.name, cls.settings_class, description=(cls.__doc__ or cls.name).splitlines()[0],
                       after=cls.after, chooses_weights=cls.chooses_weights)
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Undoes :func:`register` for a method the config did not know before (a test's toy)."""
    _REGISTRY.pop(name)
    forget_method(name)


def registered() -> dict[str, type[Method]]:
    """Returns every registered method by name, in hook order (the built-in ones register
    when :mod:`retain.methods` is imported, which importing this module does first)."""
    return {name: _REGISTRY[name] for name in method_names() if name in _REGISTRY}


def methods_for(config: RetainConfig) -> list[Method]:
    """Returns the methods ``config.method.use`` names, in hook order (the base method
    that picks the trainable weights first; lora when none is named)."""
    table = registered()
    names = {config.method.base, *config.method.use}
    return [table[name](config) for name in method_names() if name in names]

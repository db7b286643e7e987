"""Forgetting mitigations as plugins: one interface (:class:`Method`), one registry.

``method: [lora, replay, ewc]`` in a config composes LoRA adapters, replay of general data
and an EWC penalty in one run; see :mod:`retain.methods.base` for the hooks.

Every module of this package is imported here, and each registers the methods it defines
(:func:`register`), so a new method is one new file: its settings, its class, its place in
the hook order.
"""

import importlib
import pkgutil

from retain.methods.base import Method, MethodContext, ParamGroup
from retain.methods.registry import methods_for, register, registered

# The package's own files, found rather than listed (as pytest finds tests): a module that
# defines no method registers nothing.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "MethodContext", "ParamGroup", "methods_for", "register", "registered"]

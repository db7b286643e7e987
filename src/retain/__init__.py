"""retain: fine-tune LLMs without silently forgetting.

The Python API (docs/API.md): :func:`audit`, :func:`doctor`, :func:`evaluate` and
:func:`train` (:mod:`retain.api`), and :class:`RetainCallback`, the guards in your own
``transformers`` or TRL trainer (:mod:`retain.guards.dropin`). They are imported on first
use, so ``import retain`` stays fast (no torch).
"""

import importlib
import sys
import types

__version__ = "0.1.0"

_API = {
    "audit": "retain.api", "doctor": "retain.api", "evaluate": "retain.api", "train": "retain.api",
    "RetainCallback": "retain.guards.dropin", "GuardSummary": "retain.guards.dropin",
}
__all__ = ["GuardSummary", "RetainCallback", "__version__", "audit", "doctor", "evaluate", "train"]


def __getattr__(name: str) -> object:
    if name not in _API:
        raise AttributeError(f"module 'retain' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """The ``retain`` module itself. ``retain.audit`` is the function: when the subpackage
    ``retain/audit/`` is first imported, the import system sets it as the attribute of its
    parent, and here it is not let to. ``from retain.audit.runner import run_audit`` reads
    the subpackage from ``sys.modules`` and works; ``import retain.audit.runner as runner``
    walks the attributes and finds the function: write the ``from`` form."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

"""retain: fine-tune LLMs without silently forgetting.

The Python API (docs/API.md): ``audit``, :func:`doctor`, :func:`evaluate` and
:func:`train` (:mod:`retain.api`; ``retain.audit`` is the subpackage, called as the function), and :class:`RetainCallback`, the guards in your own
``transformers`` or TRL trainer (:mod:`retain.guards.dropin`); for that trainer too,
rehearsal as data, :func:`replay`, :func:`self_rehearsal` and :func:`check_rehearsal`
(:mod:`retain.dropin.rows`), and EWC and L2-SP as callbacks, :func:`ewc` and
:func:`l2sp` (:mod:`retain.dropin.penalties`). They are imported on first use, so
``import retain`` stays fast (no torch).
"""

import importlib

__version__ = "0.1.0"

# name -> the module it is read from; retain.audit is the subpackage itself, which is
# callable (retain/audit/__init__.py): the import system sets that name to the package.
_API = {
    "audit": "retain.audit", "doctor": "retain.api", "evaluate": "retain.api", "train": "retain.api",
    "RetainCallback": "retain.guards.dropin", "GuardSummary": "retain.guards.dropin",
    "replay": "retain.dropin.rows", "self_rehearsal": "retain.dropin.rows",
    "check_rehearsal": "retain.dropin.rows", "RehearsalCheck": "retain.dropin.rows",
    "ewc": "retain.dropin.penalties", "l2sp": "retain.dropin.penalties",
    "PenaltyCallback": "retain.dropin.penalties",
}
__all__ = ["GuardSummary", "PenaltyCallback", "RehearsalCheck", "RetainCallback", "__version__", "audit",
           "check_rehearsal", "doctor", "evaluate", "ewc", "l2sp", "replay", "self_rehearsal", "train"]


def __getattr__(name: str) -> object:
    if name not in _API:
        raise AttributeError(f"module 'retain' has no attribute {name!r}")
    module = importlib.import_module(_API[name])
    value = module if module.__name__ == f"retain.{name}" else getattr(module, name)
    globals()[name] = value
    return value

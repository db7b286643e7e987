"""Forgetting mitigations as plugins: one interface (:class:`Method`), one registry.

``method: [lora, replay, ewc]`` in a config composes LoRA adapters, replay of general data
and an EWC penalty in one run; see :mod:`retain.methods.base` for the hooks.
"""

# The built-in methods register themselves as their modules are imported.
from retain.methods import adapters, layers, pruning, regularizers, rehearsal, token_forget  # noqa: F401
from retain.methods.base import Method, MethodContext, ParamGroup
from retain.methods.registry import methods_for, register, registered

__all__ = ["Method", "MethodContext", "ParamGroup", "methods_for", "register", "registered"]

"""Pre-flight data audit: what is wrong with the training data before a GPU hour is spent.

This package is also the function of the Python API: ``retain.audit(data, config, ...)``
calls :func:`retain.audit.runner.audit`. One name cannot be a package and a separate function (the
import system sets ``retain.audit`` to the package whenever a module under it is
imported), so the package itself is callable.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    """The ``retain.audit`` package, which runs :func:`retain.audit.runner.audit` when called."""

    def __call__(self, *args, **kwargs):
        from retain.audit.runner import audit

        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

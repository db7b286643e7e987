"""Methods that bring their own settings: a method added in a file of its own under
``retain/methods/`` declares its name, its place in the hook order and its settings class
here (through :func:`retain.methods.register`), and the config gains a ``method.<name>``
section, checked, documented by ``retain config show`` and settable with ``--set``.

The built-in methods' settings are fields of :class:`~retain.config.methods.MethodConfig`
itself, so that reading a config never imports a method (torch and peft cost seconds).
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from pydantic import Field, create_model

from retain.config.methods import MethodConfig, add_method_name, method_names, remove_method_name
from retain.config.schema import RetainConfig
from retain.config.section import Section

logger = logging.getLogger("retain")

# The entry point group of modules whose import registers methods: retain's own package
# (pyproject.toml) and any other package's methods.
ENTRY_POINTS = "retain.methods"

# Settings sections of the methods declared here, by name, in declaration order.
_SETTINGS: dict[str, tuple[type[Section], str]] = {}


def declare_method(name: str, settings: type[Section] | None = None, *, description: str = "",
                   after: str | None = None, chooses_weights: bool = False) -> None:
    """Makes ``name`` a method ``method.use`` may list, its hooks run right after those of
    ``after`` (last when None), with ``method.<name>`` holding ``settings``.

    Raises:
        ValueError: If the name is taken (by a method or a setting of ``method``) or
            ``after`` is not a known method.
    """
    if name in MethodConfig.model_fields:
        raise ValueError(f"method {name!r} would shadow the setting method.{name}")
    add_method_name(name, after=after, chooses_weights=chooses_weights)
    if settings is not None:
        _SETTINGS[name] = (settings, description or (settings.__doc__ or name).splitlines()[0])
        _assemble()


def forget_method(name: str) -> None:
    """Undoes :func:`declare_method` (a test's toy method, once the test is done)."""
    remove_method_name(name)
    if _SETTINGS.pop(name, None) is not None:
        _assemble()


def _assemble() -> None:
    # pydantic fixes a model's fields when its class is built, so the method section is
    # rebuilt as a subclass of MethodConfig with one field per declared settings class, and
    # RetainConfig's `method` field is pointed at it (pydantic documents model_rebuild(force=True)
    # for fields changed after the class was built). Configs validated earlier keep their class.
    fields = {name: (settings, Field(default_factory=settings, description=description))
              for name, (settings, description) in _SETTINGS.items()}
    section = (create_model("MethodConfig", __base__=MethodConfig, __doc__=MethodConfig.__doc__, **fields)
               if fields else MethodConfig)
    field = RetainConfig.model_fields["method"]
    field.annotation = section
    field.default_factory = section
    RetainConfig.model_rebuild(force=True)


def discover_methods() -> bool:
    """Imports every module of the ``retain.methods`` entry point group (retain's own
    methods package, and any other package's), whose files register the methods they
    define; returns True if that made a method known that was not before.

    The config layer does not import the methods (they import torch and peft, seconds that
    reading or showing a config should not pay): :func:`load_config` calls this only when a
    config's ``method`` section names something it does not know yet.
    """
    before = method_names()
    for point in entry_points(group=ENTRY_POINTS):
        try:
            point.load()
        except Exception as error:  # noqa: BLE001 - a broken plugin must not break retain
            logger.warning("the %s plugin %r failed to load: %s", ENTRY_POINTS, point.name, error)
    return method_names() != before

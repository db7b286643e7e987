"""Walking the config models by dotted name: every field, its type, bounds, choices and
default (for --set, error messages and the reference)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from retain.config.schema import RetainConfig


def plain_type(annotation: Any) -> Any:
    """Returns ``annotation`` without ``Annotated[...]``'s validators (``PathText`` is str)."""
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def section_model(annotation: Any) -> type[BaseModel] | None:
    """Returns the model class if ``annotation`` is a config section, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def walk(model: type[BaseModel] = RetainConfig, prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """Returns ``(dotted_name, field)`` for every field, sections before their fields."""
    found: list[tuple[str, FieldInfo]] = []
    for name, field in model.model_fields.items():
        dotted = prefix + name
        found.append((dotted, field))
        sub = section_model(field.annotation)
        if sub is not None:
            found.extend(walk(sub, dotted + "."))
    return found


def dotted_fields() -> list[str]:
    """Returns every valid leaf setting as a dotted name, e.g. ``train.lr``, in file order."""
    return [name for name, field in walk() if section_model(field.annotation) is None]


def valid_paths() -> list[str]:
    """Returns every name an override may set: sections and leaves."""
    return [name for name, _ in walk()]


def aliases() -> dict[str, str]:
    """Returns every other name a setting is read under, dotted, with the setting's own:
    ``{"train.learning_rate": "train.lr", ...}`` (Hugging Face's names, :func:`retain.config.section.also`)."""
    found = {}
    for dotted, field in walk():
        choices = getattr(field.validation_alias, "choices", ())
        section = dotted.rpartition(".")[0]
        found |= {f"{section}.{name}" if section else name: dotted for name in choices
                  if isinstance(name, str) and name != dotted.rpartition(".")[2]}
    return found


def section_aliases(section: Sequence[str]) -> dict[str, str]:
    """Returns the other names of the settings of one section: ``{"learning_rate": "lr"}``."""
    prefix = ".".join(section) + "." if section else ""
    return {alias[len(prefix):]: name[len(prefix):] for alias, name in aliases().items()
            if alias.startswith(prefix) and "." not in alias[len(prefix):]}


def model_at(parts: Sequence[str]) -> type[BaseModel] | None:
    """Returns the section model at ``parts`` (``()`` is the top level), or None."""
    model: type[BaseModel] | None = RetainConfig
    for part in parts:
        field = model.model_fields.get(part) if model else None
        model = section_model(field.annotation) if field else None
    return model


def field_at(parts: Sequence[str]) -> FieldInfo | None:
    """Returns the field at dotted ``parts``, or None if there is no such field."""
    if not parts:
        return None
    model = model_at(parts[:-1])
    return model.model_fields.get(parts[-1]) if model else None


# Numeric constraints as pydantic names them: (words for errors, symbol for the reference).
BOUNDS = {
    "gt": ("greater than", ">"),
    "ge": ("at least", ">="),
    "lt": ("less than", "<"),
    "le": ("at most", "<="),
}


def bounds(field: FieldInfo) -> list[tuple[str, Any]]:
    """Returns the field's numeric bounds as ``(attr, value)``, e.g. ``[("gt", 0)]``."""
    found = []
    for item in field.metadata:
        for attr in BOUNDS:
            if getattr(item, attr, None) is not None:
                found.append((attr, getattr(item, attr)))
    return found


def choices(field: FieldInfo) -> list[str]:
    """Returns the allowed values of a Literal field, as text."""
    return [str(arg) for arg in get_args(field.annotation)]


def default(field: FieldInfo) -> Any:
    """Returns the field's default value, calling its factory if it has one."""
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default

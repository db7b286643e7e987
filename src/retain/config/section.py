"""The base of every config section: unknown keys and bad assignments are errors, and a
validation error carries its own fix."""

from __future__ import annotations

import os
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError


def invalid(message: str, fix: str, field: str | None = None) -> PydanticCustomError:
    """Returns a validation error that :func:`load_config` shows with its own fix.

    ``field`` names the setting within the section a model validator checks (pydantic
    places such errors on the section), so the error points at its line.
    """
    context = {"message": message, "fix": fix}
    if field is not None:
        context["field"] = field
    return PydanticCustomError("retain", "{message}", context)


def expand_home(value: str) -> str:
    """Returns ``value`` with a leading ``~`` or ``~/`` spelled out as the home folder, as a
    shell would have (a YAML value or a quoted --set reaches retain unexpanded)."""
    return os.path.expanduser(value) if value == "~" or value.startswith("~/") else value


def also(name: str, *others: str) -> AliasChoices:
    """Returns the names a setting is read under: its own, then ``others`` (the name
    Hugging Face's ``TrainingArguments``, peft or TRL give it), for ``validation_alias``.
    A file that sets both names is refused (pydantic: the second is an unknown key)."""
    return AliasChoices(name, *others)


PathText = Annotated[str, AfterValidator(expand_home)]
"""Text that names a file or folder (or a name such as `lab`): ``~/`` is the home folder."""


class Section(BaseModel):
    """Base of every config section: unknown keys and bad assignments are errors."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        # A revision like 1234567 or a run name like 2024 is text, not a number.
        coerce_numbers_to_str=True,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        # "train:" with nothing under it parses as None; read it as "all defaults".
        return {} if data is None else data



    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads True as 1 and 1.0 in a number field; `lr: true` is a mistake, not 1.0.
        if isinstance(value, bool) and info.field_name and _numbers_only(cls.model_fields[info.field_name].annotation):
            raise invalid(f"{str(value).lower()} is a yes/no value, not a number", "write a number")
        return value


def _numbers_only(annotation: Any) -> bool:
    """True for ``int``, ``float`` and their optional forms (``float | None``)."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    kinds = {member for member in members if member is not type(None)}
    return bool(kinds) and kinds <= {int, float}

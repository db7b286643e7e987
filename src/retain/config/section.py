"""The base of every config section: unknown keys and bad assignments are errors, and a
validation error carries its own fix."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
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



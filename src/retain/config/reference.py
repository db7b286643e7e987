"""The configuration reference: one Markdown table per config section."""

from __future__ import annotations

from typing import Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from retain.config.messages import inline
from retain.config.schema import RetainConfig
from retain.config.walk import BOUNDS, bounds, default, plain_type, section_model, walk


def config_reference_markdown() -> str:
    """Returns one Markdown table per section: field, type, default, description."""
    blocks = []
    for section, field in RetainConfig.model_fields.items():
        rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
        model = section_model(field.annotation)
        assert model is not None  # every top-level field is a section
        for dotted, leaf in walk(model, section + "."):
            if section_model(leaf.annotation) is None:
                default_text = inline(default(leaf))
                description = (leaf.description or "").replace("|", "\\|")
                others = [name for name in getattr(leaf.validation_alias, "choices", ()) if name != dotted.rsplit(".", 1)[-1]]
                if others:  # Hugging Face's, peft's or TRL's name for it
                    description += " Also read as " + ", ".join(f"`{name}`" for name in others) + "."
                rows.append(
                    f"| `{dotted}` | {_type_text(leaf)} | `{default_text}` | {description} |"
                )
        blocks.append(f"### `{section}`\n\n{field.description}\n\n" + "\n".join(rows))
    return "\n\n".join(blocks) + "\n"


def _type_text(field: FieldInfo) -> str:
    """Returns a reader-friendly type such as ``float > 0 or null`` or ``one of: a, b``."""
    annotation = field.annotation
    optional = type(None) in get_args(annotation)
    if optional:
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    annotation = plain_type(annotation)
    if get_origin(annotation) is Literal:
        text = "one of: " + ", ".join(str(arg) for arg in get_args(annotation))
    elif get_origin(annotation) is list:
        non_empty = any(getattr(item, "min_length", None) for item in field.metadata)
        text = f"list of {plain_type(get_args(annotation)[0]).__name__}" + (", non-empty" if non_empty else "")
    else:
        text = getattr(annotation, "__name__", str(annotation))
    limits = ", ".join(f"{BOUNDS[attr][1]} {value}" for attr, value in bounds(field))
    if limits:
        text += f" ({limits})"
    return text + (" or null" if optional else "")


REFERENCE_DOC = "docs/CONFIG.md"


def config_reference_document() -> str:
    """Returns ``docs/CONFIG.md``: a title, how it is made, and :func:`config_reference_markdown`."""
    return ("# Configuration reference\n\n"
            "Every setting of a retain config, generated from the pydantic models by\n"
            "`retain config reference --write docs/CONFIG.md` (a test fails when this file is out of\n"
            "date). Any setting can be given on the command line as `--set section.key=value`, and a\n"
            "setting that Hugging Face's `TrainingArguments`, peft or TRL name otherwise is also read\n"
            "under that name (`train.learning_rate` sets `train.lr`; both at once are refused).\n\n"
            + config_reference_markdown())


"""General data: what replay blends in, what EWC's Fisher is measured on, and where
self-augmentation finds its prompts (``method.general``).

Sources:

- none set: the general texts of the model's family, for a model of a registered family
  that has them (:mod:`retain.sources`; the lab's rehearsal corpus, which states no probed
  fact); for any other model, the shipped instructions when ``self_augment`` is the only
  method that reads general data, else an error;
- ``instructions``: the general instructions retain ships (``methods/instructions.txt``,
  329 requests written for this purpose: explain, list, rewrite, describe, advise, word
  problems, short messages). They are prompts with no answers: ``self_augment`` has the
  base model answer them (self-synthesized rehearsal); ``replay`` refuses them. None states
  a probe item of the general suite (the audit's probe check, and a test, prove it);
- a registered family's name: that family's general texts, for a model of that family;
- a file: ``.txt`` with one text per line (``\\n`` inside a text written as a literal
  backslash-n, as ``retain lab data`` writes ``general.txt``), or a table (``.jsonl``,
  ``.csv``, ``.parquet``) with a text column or prompt/response columns;
- ``hf:NAME[:SPLIT]``: a dataset of the local Hugging Face datasets cache, read as every
  ``hf:`` source is (:mod:`retain.data.hub`: from the cache only, never downloaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from retain.config import RetainConfig
from retain.data.hub import HF_PREFIX, load_hub_dataset
from retain.data.prompting import PromptFormat, render_example
from retain.data.rows import load_examples_for, read_text
from retain.errors import ConfigError, DataError
from retain.sources import base_of, family_of, model_family

INSTRUCTIONS = "instructions"
READERS = ("replay", "self_augment", "ewc")  # the methods that read method.general


def load_general_texts(config: RetainConfig) -> list[str]:
    """Returns the general texts ``config.method.general`` names (at most ``limit``).

    Raises:
        ConfigError: If no source is set and the model's family has no general texts, or
            a family's name is set for a model of another family.
        DataError: If the source cannot be read or holds no text.
    """
    settings = config.method.general
    name = config.model.name_or_path
    family = family_of(name)
    source = general_source(config)
    if source is None:
        raise ConfigError(
            "this method needs general data and method.general.source is not set",
            field="method.general.source",
            fix="name a text/JSONL file of general text, or hf:NAME[:SPLIT] for a datasets dataset (or use "
            "self_augment, which defaults to the shipped instructions)",
        )
    if source == INSTRUCTIONS:
        if "replay" in config.method.use:
            raise ConfigError("method.general.source is instructions, which are prompts with no answers to replay",
                              field="method.general.source",
                              fix="use method self_augment (the base model answers them), or give replay a "
                              "general-text file")
        texts = instructions()
    elif model_family(source) is not None:
        if family is None or family.name != source or family.general_texts is None:
            raise ConfigError(f"method.general.source is {source} but {name} is not a {source} model",
                              field="method.general.source", fix="name a general-text file instead")
        texts = family.general_texts(base_of(name))
    elif source.startswith(HF_PREFIX):
        texts = _dataset_texts(source, settings.text_field, settings.limit)
    else:
        texts = _file_texts(Path(source), settings.text_field, config)
    return usable_texts(texts, settings.limit, source)


def usable_texts(texts: Sequence[str], limit: int, source: str) -> list[str]:
    """Returns the first ``limit`` texts that are not blank.

    Raises:
        DataError: If none is left (``source`` names where they came from).
    """
    usable = [text for text in texts if text.strip()][:limit]
    if not usable:
        raise DataError("no general text found", file=source,
                        fix="give a source with at least one non-empty text")
    return usable


def general_source(config: RetainConfig) -> str | None:
    """Returns the general source ``config`` reads: ``method.general.source``, else the
    model family's texts, else the shipped instructions when ``self_augment`` is the only
    method of the run that reads general data; None when there is none."""
    if config.method.general.source:
        return config.method.general.source
    family = family_of(config.model.name_or_path)
    if family is not None and family.general_texts:
        return family.name
    readers = [name for name in READERS if name in config.method.use]
    return INSTRUCTIONS if readers == ["self_augment"] else None


def instructions() -> list[str]:
    """Returns the shipped general instructions, one request per line."""
    text = resources.files("retain.methods").joinpath("instructions.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _file_texts(path: Path, text_field: str, config: RetainConfig) -> list[str]:
    if not path.exists():
        raise DataError("no such file", file=path, field="method.general.source",
                        fix="give the path of a general-text file, or hf:NAME")
    if path.suffix == ".txt":
        return [line.replace("\\n", "\n") for line in read_text(path, "general text").splitlines()]
    try:
        examples = load_examples_for(config.data, path)
        # Rendered as raw text, as training renders rows without a chat template: chat
        # rows as ``User: ...\nAssistant: answer`` (the space before the answer included).
        rendered = [render_example(example, PromptFormat.raw()) for example in examples]
        return [item.prompt + item.response for item in rendered]
    except DataError:
        pass  # not prompt/response rows: a text column, read below
    return _table_texts(path, text_field)


def _table_texts(path: Path, text_field: str) -> list[str]:
    import datasets

    kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
    if kind is None:
        raise DataError(f"unknown general-data format {path.suffix!r}", file=path,
                        fix="use .txt, .jsonl, .csv or .parquet")
    try:
        table = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds for a malformed file
        raise DataError(f"cannot read the file as a table: {str(error).splitlines()[0]}", file=path,
                        fix="give one JSON object per line (or a valid CSV/Parquet file) with a text column") from None
    if text_field not in table.column_names:
        raise DataError(f"no column {text_field!r} (columns: {', '.join(table.column_names)})",
                        file=path, field="method.general.text_field",
                        fix="set method.general.text_field to the column holding the text")
    return [str(text) for text in table[text_field]]


def _dataset_texts(source: str, text_field: str, limit: int) -> list[str]:
    table = load_hub_dataset(source, setting="method.general.source", limit=limit)
    if text_field not in table.column_names:
        raise ConfigError(f"dataset {source!r} has no column {text_field!r}", field="method.general.text_field",
                          fix=f"use one of: {', '.join(table.column_names)}")
    return [str(text) for text in table[text_field]]

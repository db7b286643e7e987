"""Rehearsal as data for a trainer of your own (``transformers.Trainer``, TRL's
``SFTTrainer``): :func:`replay` blends general rows into a training set, in the rows'
own format; :func:`self_rehearsal` has the base model answer general prompts and returns
the answers as rows; :func:`check_rehearsal` looks for probe items in the blended rows.

They are ``retain train``'s replay and self-augmentation, not copies of them: the same
general sources (:func:`retain.methods.general.load_general_texts`), the same count and
draw (:func:`retain.methods.rehearsal.replay_texts`), the same prompts, generation, health
filter and answer cache (:class:`retain.methods.rehearsal.SelfAugment`), the same even
interleaving as the sampler of blended rows (:func:`retain.methods.mixing.spread_evenly`),
and the audit's probe check (:func:`retain.audit.contamination.contamination_by_source`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from retain.audit.contamination import contamination_by_source
from retain.audit.findings import Finding
from retain.config import RetainConfig
from retain.config.loading import resolve_config
from retain.data.prompting import PromptFormat
from retain.errors import ConfigError, DataError
from retain.evaluation.commands import config_suites
from retain.methods.base import MethodContext
from retain.methods.general import load_general_texts, usable_texts
from retain.methods.mixing import spread_evenly
from retain.methods.rehearsal import SelfAugment, rehearsal_prompts, replay_texts
from retain.paths import cache_dir

SOURCE_COLUMN = "source"
"""The column :func:`replay` adds: ``task`` for the given rows, else the general rows' source."""
TASK = "task"

Rows = Any  # a datasets.Dataset, or a list of dict rows
General = str | Path | Sequence[str] | Sequence[Mapping[str, Any]] | None


@dataclass(frozen=True)
class RowFormat:
    """The shape of a trainer's rows, as TRL names them.

    Attributes:
        kind: ``text`` (``{"text"}``), ``prompt_completion`` or ``messages``.
        conversational: Whether prompt and completion are lists of chat messages.
    """

    kind: str
    conversational: bool = False

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> RowFormat:
        """Returns the format of ``row`` (the first row of a dataset).

        Raises:
            DataError: For preference rows (``chosen``/``rejected``), or columns that are
                none of the formats.
        """
        columns = set(row)
        if {"chosen", "rejected"} <= columns:
            raise DataError("replay blends supervised rows; these are preference rows (chosen/rejected)",
                            fix="for DPOTrainer keep the general data out of the preference set and hold the "
                            "weights with retain.ewc or retain.l2sp, or train SFT on retain.replay rows first")
        if "messages" in columns:
            return cls("messages", conversational=True)
        if {"prompt", "completion"} <= columns:
            return cls("prompt_completion", conversational=isinstance(row["prompt"], list))
        if "text" in columns:
            return cls("text")
        raise DataError(f"rows with columns {sorted(columns)} are not a format replay knows",
                        fix="give rows with a text column, prompt/completion columns, or messages "
                        "(TRL's dataset formats)")

    def row(self, text: str) -> dict[str, Any]:
        """Returns a general text as a row of this format, trained on every token: an empty
        prompt (an empty user turn in chat formats), the text as the completion."""
        if self.kind == "text":
            return {"text": text}
        user, assistant = {"role": "user", "content": ""}, {"role": "assistant", "content": text}
        if self.kind == "messages":
            return {"messages": [user, assistant]}
        if self.conversational:
            return {"prompt": [user], "completion": [assistant]}
        return {"prompt": "", "completion": text}


def row_text(row: Mapping[str, Any]) -> str:
    """Returns what a row of any :class:`RowFormat` states, as one text (chat contents
    joined by spaces), for the probe check."""
    if "text" in row and isinstance(row["text"], str):
        return row["text"]
    parts = [row.get(key) for key in ("messages", "prompt", "completion")]
    contents = [item.get("content") or "" for part in parts if isinstance(part, list) for item in part] + \
        [part for part in parts if isinstance(part, str)]
    return " ".join(content for content in contents if content)


def general_config(general: General, *, method: str, model: str | None = None,
                   settings: Mapping[str, Any] | None = None, text_field: str = "text",
                   limit: int | None = None, seed: int = 0) -> RetainConfig:
    """Returns the config ``retain train`` would read for ``method`` with this general
    source and these settings (``method.<method>``), validated as a config file is.

    Raises:
        ConfigError: A setting out of range (the message names ``method.<method>.<key>``).
    """
    general_settings: dict[str, Any] = {"text_field": text_field}
    if isinstance(general, (str, Path)):
        general_settings["source"] = str(general)
    if limit is not None:
        general_settings["limit"] = limit
    sections: dict[str, Any] = {"train": {"seed": seed}, "method": {"use": [method], "general": general_settings,
                                           method: {key: value for key, value in (settings or {}).items()
                                                    if value is not None}}}
    if model is not None:
        sections["model"] = {"name_or_path": model}
    return resolve_config(sections)


def general_texts(general: General, config: RetainConfig) -> list[str] | list[Mapping[str, Any]]:
    """Returns the general data: ``general`` itself when it is texts or rows, else what
    ``method.general`` reads (a file, ``hf:NAME``, a model family's texts, the shipped
    instructions)."""
    if general is None or isinstance(general, (str, Path)):
        return load_general_texts(config)
    items = list(general)
    if items and all(isinstance(item, Mapping) for item in items):
        return items
    return usable_texts([str(item) for item in items], config.method.general.limit, "the general texts given")


def replay(train_dataset: Rows, general: General = None, *, ratio: float | None = None, seed: int = 0,
           model: str | Path | None = None, text_field: str = "text", limit: int | None = None,
           source_column: str | None = SOURCE_COLUMN, echo: Callable[[str], None] | None = print) -> Rows:
    """Returns ``train_dataset`` with general rows blended in, as ``method: [replay]`` does
    in ``retain train``: ``round(ratio / (1 - ratio) x rows)`` of them, drawn without
    replacement by ``seed`` (cycled, with a warning, when too few), each a row of the
    dataset's own format trained on every token (:meth:`RowFormat.row`).

    The rows come back interleaved: the task rows in their order, the general rows spread
    evenly among them (:func:`spread_evenly`), so any ``B`` consecutive rows hold the ratio
    to within a row. A trainer that shuffles (the default) still mixes every batch in the
    ratio on average; ``train_sampling_strategy="group_by_length"`` sorts rows by length
    and would train general rows in blocks.

    Args:
        train_dataset: A ``datasets.Dataset`` or a list of dict rows: ``{"text"}``,
            ``{"prompt", "completion"}`` (strings or chat messages) or ``{"messages"}``.
        general: What ``method.general.source`` takes (a ``.txt``/``.jsonl``/``.csv``/
            ``.parquet`` file, ``hf:NAME[:SPLIT]``, a model family's name such as ``lab``),
            a list of texts, or rows already in the dataset's format (:func:`self_rehearsal`'s);
            None: the model family's general texts (needs ``model``).
        ratio: ``method.replay.ratio``, the share of the blend that is general (None: its
            default).
        seed: Draws the general rows (``train.seed``).
        model: The model's name or path, for a family's texts (``general="lab"`` or None).
        text_field: ``method.general.text_field``, the text column of a table.
        limit: ``method.general.limit``, general texts read at most (None: its default).
        source_column: A column saying where each row comes from (``task``, ``replay``, or
            the general rows' own), which :func:`check_rehearsal` reads; None adds none.
        echo: Prints one line of what was blended (None: silent).

    Returns:
        The blend, of the type given (a ``Dataset`` keeps its features; a general row
        leaves any other column empty).

    Raises:
        ConfigError: ``ratio`` out of (0, 1), no general data named, or a general source
            ``method.general`` refuses.
        DataError: Rows of no known format, preference rows, general rows of another
            format than the dataset's, or a source that cannot be read.
    """
    rows = list(train_dataset)
    if not rows:
        raise DataError("the training dataset has no rows", fix="give replay the rows you train on")
    row_format = RowFormat.of(rows[0])
    if general is None and model is None:  # the config's default model would read the lab's texts
        raise ConfigError("replay needs general data, and neither general= nor model= names any",
                          fix="pass general= (a text file, hf:NAME, a list of texts) or model= (a model whose "
                          "family has general texts)")
    config = general_config(general, method="replay", model=None if model is None else str(model),
                            settings={"ratio": ratio}, text_field=text_field, limit=limit)
    available = general_texts(general, config)
    if isinstance(available[0], Mapping) and RowFormat.of(available[0]) != row_format:
        raise DataError(f"the general rows are {RowFormat.of(available[0]).kind} rows, the dataset's are "
                        f"{row_format.kind} rows", fix="give general rows in the dataset's format, or texts")
    picked = replay_texts(available, len(rows), config.method.replay.ratio, seed)
    general_rows = [_general_row(item, row_format, source_column) for item in picked]
    columns = list(rows[0])
    task_rows = [dict(row) | ({source_column: TASK} if source_column else {}) for row in rows]
    general_rows = [{column: row.get(column) for column in columns} | row for row in general_rows]
    order = spread_evenly([range(len(task_rows)), range(len(task_rows), len(task_rows) + len(general_rows))])
    blended = [(task_rows + general_rows)[index] for index in order]
    if echo is not None:
        echo(f"replay: blended {len(general_rows)} general rows into {len(rows)} task rows "
             f"(method.replay.ratio {config.method.replay.ratio:g})")
    return _like(train_dataset, blended, source_column)


def _general_row(item: str | Mapping[str, Any], row_format: RowFormat, source_column: str | None) -> dict[str, Any]:
    """Returns one general text as a row of ``row_format`` (a row as it is), with its source."""
    if isinstance(item, Mapping):
        row = dict(item)
        if source_column:
            row.setdefault(source_column, "replay")
        return row
    return row_format.row(item) | ({source_column: "replay"} if source_column else {})


def _like(original: Rows, rows: list[dict[str, Any]], source_column: str | None) -> Rows:
    """Returns ``rows`` as the type of ``original``: a ``Dataset`` with its features (and
    the source column), else a list."""
    import datasets

    if not isinstance(original, datasets.Dataset):
        return rows
    features = original.features.copy()
    if source_column and source_column not in features:
        features[source_column] = datasets.Value("string")
    return datasets.Dataset.from_list(rows, features=features)


@dataclass(frozen=True)
class RehearsalCheck:
    """The audit's probe check on the rows rehearsal blended in.

    Attributes:
        rows: The blended rows checked, by source.
        findings: The ``probe_contamination`` warning of each source whose rows state a
            probe item, by source.
        items: ``{suite: [ids]}``, the probe items some blended row states (forgetting on
            them measures memory of the rehearsal, not retention).
    """

    rows: dict[str, int]
    findings: dict[str, Finding] = field(default_factory=dict)
    items: dict[str, list[str]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """Whether no blended row states a probe item."""
        return not self.findings

    def lines(self) -> list[str]:
        """Returns one line per source, as ``retain train`` prints them."""
        return [f"warning: {self.findings[source].title}" if source in self.findings
                else f"{source}: no probe item in the {count:,} rows it blended in"
                for source, count in self.rows.items()]


def check_rehearsal(rows: Rows, probes: str | Path | Sequence[str | Path] = "general", *,
                    source_column: str = SOURCE_COLUMN, threshold: float | None = None) -> RehearsalCheck:
    """Looks for probe items in the rows rehearsal blended in (those whose
    ``source_column`` is not ``task``), with the audit's probe-contamination check, as
    ``retain train`` does on what it blends.

    Args:
        rows: :func:`replay`'s blend (a ``Dataset`` or a list of rows), or general rows alone.
        probes: The probe suites (``general``, ``lab``, a suite file, or a list).
        source_column: The column :func:`replay` wrote; rows without it count as blended.
        threshold: Jaccard similarity at which texts count as the same
            (``audit.near_duplicate_threshold`` when None).

    Returns:
        What was checked and found; ``check.clean`` is True when no row states an item.

    Raises:
        DataError: If a probe suite cannot be found or read.
    """
    names = [str(probes)] if isinstance(probes, (str, Path)) else [str(name) for name in probes]
    config = resolve_config({"probes": {"suites": names}})
    suites = config_suites(config, whole=True)
    limit = config.audit.near_duplicate_threshold if threshold is None else threshold
    texts: dict[str, list[str]] = {}
    for row in rows:
        source = row.get(source_column) or "rehearsal"
        if source != TASK:
            texts.setdefault(source, []).append(row_text(row))
    findings, items = contamination_by_source(texts, suites, limit)
    return RehearsalCheck(rows={source: len(blended) for source, blended in texts.items()},
                          findings=findings, items=items)


def self_rehearsal(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n: int, *,
                   general: General = None, seed: int = 0, max_new_tokens: int | None = None,
                   chat_template: str = "auto", echo: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """Returns the base model's own answers to ``n`` general prompts as prompt/completion
    rows, as ``method: [self_augment]`` makes them (greedy; broken answers dropped: empty,
    blank, an echo, a loop; cached per base model in retain's cache). Blend them with
    ``retain.replay(train, general=rows, ...)``.

    Args:
        model: The base model, before training.
        tokenizer: Its tokenizer.
        n: Healthy answers wanted (fewer come back, with a warning, when the prompts run
            out, and fewer when some were cut by ``max_new_tokens``: those are left out).
        general: Where the prompts come from (as :func:`replay`); None: the 329 shipped
            ``instructions``.
        seed: Shuffles the prompts (``train.seed``).
        max_new_tokens: ``method.self_augment.max_new_tokens`` (None: its default).
        chat_template: ``auto`` (the tokenizer's, if any: rows are chat messages), ``none``,
            or a Jinja file.
        echo: Prints what was generated (None: silent).

    Returns:
        ``{"prompt", "completion", "source": "self_augment"}`` rows: strings, or one user
        and one assistant message under a chat template.
    """
    name = getattr(model, "name_or_path", None) or "model"
    source = "instructions" if general is None else general
    config = general_config(source, method="self_augment", model=str(name),
                            settings={"max_new_tokens": max_new_tokens}, seed=seed)
    prompt_format = PromptFormat.for_tokenizer(tokenizer, chat_template)
    context = MethodContext(config=config, tokenizer=tokenizer, prompt_format=prompt_format,
                            cache_dir=cache_dir() / "methods", echo=echo or (lambda line: None))
    method = SelfAugment(config)
    prompts = rehearsal_prompts(general_texts(source, config), config)
    answers, generated = method.healthy_answers(model, context, prompts, n)
    # A trainer appends EOS to every completion, so an answer cut by max_new_tokens would
    # teach stopping mid-sentence; retain train trains such answers without EOS, which a row
    # cannot say: here they are left out.
    complete = [(prompt, answer) for prompt, answer in answers if answer.stopped]
    context.echo(f"self_augment: generated {generated}, kept {len(complete)} healthy, complete answers"
                 + (f" ({len(answers) - len(complete)} cut by max_new_tokens left out)" if len(complete) < len(answers)
                    else ""))
    answers = complete
    chat = prompt_format.is_chat
    return [({"prompt": [{"role": "user", "content": prompt}],
              "completion": [{"role": "assistant", "content": answer.text}]} if chat
             else {"prompt": prompt, "completion": answer.text}) | {SOURCE_COLUMN: "self_augment"}
            for prompt, answer in answers]


__all__ = ["RehearsalCheck", "RowFormat", "check_rehearsal", "replay", "self_rehearsal"]

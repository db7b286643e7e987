"""``retain doctor``: the training pipeline checked on real batches before training starts.

The doctor builds what training builds from the config (the tokenizer with its pad token,
the prompt format, the encoding and the collator of :mod:`retain.data.encoding`),
collates every training row in batches of ``train.batch_size``, and reads the batches
back the way the loss will: which tokens carry a loss, whether the EOS that ends each
answer is among them, whether padding or the prompt is trained on, whether the prompt is
token for token the one evaluation asks. Then it reads the generation config the saved
model will ship with. Each failure it knows is one that shipped models in public threads:
pad = EOS masking the EOS (trl#1623, unsloth#416), labels all -100 after truncation
(axolotl#3754), a chat template at inference that training never used (LLaMA-Factory#1272,
unsloth#2364), generation settings that leave no room for an answer (LLaMA-Factory#5593).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from retain.audit.batches import (
    early_eos,
    eos_checks,
    inspect_batches,
    loss_sample,
    masked_labels,
    padding_trained,
    prompt_masking,
    untrained_turns,
)
from retain.audit.findings import MAX_EXAMPLES, SEVERITIES, Finding, Verdict
from retain.audit.lengths import context_window_exceeded, too_long
from retain.audit.prompts import generation_checks, prompt_separator, template_checks
from retain.config import RetainConfig
from retain.data.encoding import (
    IGNORE_INDEX,
    encode_examples,
    prepare_tokenizer,
)
from retain.data.pairs import encode_pairs
from retain.data.prompting import PromptFormat
from retain.data.rows import Example, read_examples_for
from retain.errors import ConfigError
from retain.models import ModelParts, load_model_parts


@dataclass
class DoctorReport(Verdict):
    """What the doctor found in the pipeline a config builds.

    Attributes:
        data: The training file.
        model: The model whose tokenizer and generation config were read.
        rows: Rows inspected.
        findings: Every finding, blockers first.
        sample: The first row as training sees it: ``(text, trained)`` pieces.
    """

    data: str
    model: str
    rows: int
    findings: list[Finding] = field(default_factory=list)
    sample: list[tuple[str, bool]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Returns the report as JSON-ready data."""
        return {
            "data": self.data, "model": self.model, "rows": self.rows,
            "counts": self.counts(),
            "findings": [finding.to_dict() for finding in self.findings],
            "sample": [{"text": text, "trained": trained} for text, trained in self.sample],
        }


def run_doctor(config: RetainConfig, *, parts: ModelParts | None = None) -> DoctorReport:
    """Builds the training pipeline of ``config`` and checks it on every training row.

    Args:
        config: The run's config; ``data.train`` must be set.
        parts: The model's tokenizer and configs; loaded from ``config.model`` if None.

    Raises:
        ConfigError: If ``data.train`` is not set or ``model.pad_token`` is unknown.
        DataError: If the training data cannot be read at all.
        ModelLoadError: If the model cannot be found.
    """
    if not config.data.train:
        raise ConfigError("the doctor needs training data and data.train is not set",
                          field="data.train", fix="set data.train to your JSONL/CSV/Parquet file")
    if parts is None:
        parts = load_model_parts(config.model.name_or_path, revision=config.model.revision,
                                 trust_remote_code=config.model.trust_remote_code)
    tokenizer = parts.tokenizer
    prepare_tokenizer(tokenizer, config.model.pad_token)
    prompt_format = PromptFormat.for_tokenizer(tokenizer, config.model.chat_template)
    examples, _ = read_examples_for(config.data, config.data.train, "data.train")  # bad rows: `retain audit`
    examples = examples[: config.data.size] if config.data.size else examples
    if config.train.objective == "dpo":
        return _preference_doctor(config, parts, examples, prompt_format)
    encoded, unrenderable = encode_examples(
        examples, tokenizer, prompt_format, max_length=config.data.max_length,
        loss_on=config.train.loss_on, train_turns=config.data.train_turns,
    )
    rejected = {problem.line for problem in unrenderable}
    kept = [example for example in examples if example.line not in rejected]
    rows = inspect_batches(encoded, tokenizer, collator=config.train.collator,
                           batch_size=config.train.batch_size)
    findings: list[Finding | None] = [
        _unrenderable(unrenderable, len(examples)),
        masked_labels(rows),
        eos_checks(rows, tokenizer, config),
        prompt_masking(rows, config.train.loss_on),
        untrained_turns(encoded),
        padding_trained(rows),
        early_eos(rows, tokenizer),
        template_checks(rows, encoded, examples, tokenizer, prompt_format, config.model.chat_template),
        prompt_separator(examples),
        too_long(kept, [row.prompt_tokens for row in encoded],
                 [row.full_tokens for row in encoded], config.data.max_length),
        context_window_exceeded([row.full_tokens for row in encoded], config.data.max_length,
                                parts.context_window),
    ]
    findings += generation_checks(parts.generation, tokenizer, encoded, config, parts.generation_error)
    report = DoctorReport(data=str(config.data.train), model=config.model.name_or_path,
                          rows=len(encoded))
    report.findings = sorted((f for f in findings if f is not None),
                             key=lambda f: SEVERITIES.index(f.severity))
    if encoded:
        report.sample = loss_sample(encoded[0], tokenizer, config.train.collator)
    return report


def _preference_doctor(config: RetainConfig, parts: ModelParts, examples: Sequence[Example],
                       prompt_format: PromptFormat) -> DoctorReport:
    """The doctor under ``train.objective: dpo``: every pair's chosen and rejected rows,
    encoded as DPO trains them (:mod:`retain.data.pairs`), collated by TRL's
    ``DataCollatorForPreference`` in training batches, and read back as DPO's loss reads
    them (the ids with all but the answer masked). What does not apply to DPO is said in
    the ``dpo_pipeline`` finding instead of checked: ``train.collator``, ``train.loss_on``
    and ``data.train_turns`` (DPO trains each pair's final answer, masked by position)."""
    tokenizer = parts.tokenizer
    pairs_read = [example for example in examples if example.is_preference]
    pairs, unrenderable = encode_pairs(pairs_read, tokenizer, prompt_format, max_length=config.data.max_length)
    encoded = [row for pair in pairs for row in (pair.chosen, pair.rejected)]
    by_line = {example.line: example for example in pairs_read}
    kept = [example for pair in pairs for example in (by_line[pair.line], by_line[pair.line].rejected_example())]
    rows = inspect_batches(encoded, tokenizer, collator="completion", batch_size=config.train.batch_size,
                           collate=_preference_collate(tokenizer))
    chosen_rows = rows[::2]
    findings: list[Finding | None] = [
        Finding(code="dpo_pipeline", severity="info", count=len(pairs),
                title=f"train.objective dpo: {len(pairs):,} pairs checked as TRL's DataCollatorForPreference batches "
                "them; train.collator, train.loss_on and data.train_turns do not apply (DPO trains each answer "
                "after its prompt, padding masked by position)", fix="none needed"),
        _unrenderable(unrenderable, len(pairs_read)),
        masked_labels(rows),
        eos_checks(rows, tokenizer, config),
        prompt_masking(rows, "response"),
        padding_trained(rows),
        early_eos(rows, tokenizer),
        template_checks(chosen_rows, encoded[::2], kept[::2], tokenizer, prompt_format, config.model.chat_template),
        prompt_separator(pairs_read),
        too_long(kept, [row.prompt_tokens for row in encoded], [row.full_tokens for row in encoded],
                 config.data.max_length),
        context_window_exceeded([row.full_tokens for row in encoded], config.data.max_length, parts.context_window),
    ]
    findings += generation_checks(parts.generation, tokenizer, encoded, config, parts.generation_error)
    report = DoctorReport(data=str(config.data.train), model=config.model.name_or_path, rows=len(encoded))
    report.findings = sorted((f for f in findings if f is not None), key=lambda f: SEVERITIES.index(f.severity))
    if encoded:
        report.sample = loss_sample(encoded[0], tokenizer, "completion")
    return report


def _preference_collate(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Returns a collator of encoded rows through TRL's ``DataCollatorForPreference`` (each
    row as a pair of itself): its ids and attention mask, and as labels the ids with every
    position outside the completion masked, which is what DPO's loss reads.

    Raises:
        ConfigError: If TRL is not installed.
    """
    try:
        from trl.trainer.dpo_trainer import (
            DataCollatorForPreference,  # optional: only dpo runs need TRL
        )
    except ImportError as error:
        raise ConfigError(f"train.objective dpo batches with TRL, which cannot be imported ({error})",
                          field="train.objective", fix="pip install 'trl>=1.16,<2', or set train.objective: sft") from None
    collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = []
        for feature in features:
            labels = feature["labels"]
            start = next((index for index, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
            answer = feature["input_ids"][start:]
            pairs.append({"prompt_ids": feature["input_ids"][:start], "chosen_ids": answer, "rejected_ids": answer})
        batch = collator(pairs)
        half = len(features)  # the chosen half; the rejected half is the same rows again
        ids, completion = batch["input_ids"][:half], batch["completion_mask"][:half]
        return {"input_ids": ids, "attention_mask": batch["attention_mask"][:half],
                "labels": ids.masked_fill(completion == 0, IGNORE_INDEX)}

    return collate


def _unrenderable(problems: Sequence[Any], total: int) -> Finding | None:
    if not problems:
        return None
    return Finding(
        code="template_rejects_rows", severity="warning",
        title=f"the chat template cannot render {len(problems):,} of {total:,} rows; training "
        "drops them",
        count=len(problems), fix=problems[0].fix,
        examples=tuple({"line": p.line, "text": p.message} for p in problems[:MAX_EXAMPLES]),
    )


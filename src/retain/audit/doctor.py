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

from retain.audit.checks import context_window_exceeded, too_long
from retain.audit.findings import MAX_EXAMPLES, SEVERITIES, Finding, Verdict, excerpt
from retain.config import RetainConfig
from retain.data.encoding import (
    IGNORE_INDEX,
    Encoded,
    build_collator,
    encode_examples,
    prepare_tokenizer,
)
from retain.data.prompting import PromptFormat
from retain.data.rows import Example, read_examples_for
from retain.errors import ConfigError
from retain.models import ModelParts, load_model_parts

# Markup that chat templates write; found in a prompt, the data was rendered for a
# template already (the name says which family).
TEMPLATE_MARKERS = {
    "<|im_start|>": "ChatML", "[INST]": "Llama 2 / Mistral", "<|start_header_id|>": "Llama 3",
    "<start_of_turn>": "Gemma", "<|user|>": "Zephyr / Phi", "### Instruction:": "Alpaca",
    "<|begin_of_text|>": "Llama 3",
}


@dataclass
class RowCheck:
    """What one collated row says about the pipeline (see :func:`inspect_batches`).

    Attributes:
        line: The row's line in the training file.
        supervised: Tokens carrying a loss.
        eos_masked: The row ends with EOS, and EOS carries no loss.
        no_eos: The row, not truncated, does not end with EOS.
        prompt_trained: Prompt tokens (after the first) that carry a loss.
        padding_trained: Padding positions that carry a loss.
        prompt_differs: The batch's prompt ids differ from the ids evaluation uses.
        early_eos: EOS tokens before the row's end that carry a loss: the model learns to
            stop there.
    """

    line: int
    supervised: int
    eos_masked: bool
    no_eos: bool
    prompt_trained: int
    padding_trained: int
    prompt_differs: bool
    early_eos: int = 0


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
    examples, _ = read_examples_for(config.data, config.data.train)  # bad rows: `retain audit`
    examples = examples[: config.data.size] if config.data.size else examples
    encoded, unrenderable = encode_examples(
        examples, tokenizer, prompt_format, max_length=config.data.max_length,
        loss_on=config.train.loss_on,
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
        padding_trained(rows),
        early_eos(rows, tokenizer),
        template_checks(rows, encoded, examples, tokenizer, prompt_format, config.model.chat_template),
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
        report.sample = _sample(encoded[0], tokenizer, config.train.collator)
    return report


# --- reading the batches --------------------------------------------------------------


def inspect_batches(
    encoded: Sequence[Encoded],
    tokenizer: PreTrainedTokenizerBase,
    *,
    collator: str,
    batch_size: int,
) -> list[RowCheck]:
    """Collates ``encoded`` in training batches and checks each row of each batch.

    The encoded prompt ids are the ids evaluation gives the model (they are tokenised by
    the call generation makes, see :func:`retain.data.encoding.encode_examples`),
    so a batch whose prompt ids differ from them was changed by the collator.
    """
    collate = build_collator(tokenizer, collator)
    eos = tokenizer.eos_token_id
    checks = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        batch = collate([row.feature() for row in rows])
        for index, row in enumerate(rows):
            ids, labels = batch["input_ids"][index], batch["labels"][index]
            real = batch["attention_mask"][index].bool()
            length = int(real.sum())
            ends_with_eos = eos is not None and length > 0 and int(ids[length - 1]) == eos
            prompt_end = min(row.prompt_tokens, length)
            checks.append(RowCheck(
                line=row.line,
                supervised=int((labels[real] != IGNORE_INDEX).sum()),
                eos_masked=ends_with_eos and int(labels[length - 1]) == IGNORE_INDEX,
                no_eos=not ends_with_eos and not row.truncated,
                # Position 0 is never a target (labels shift by one), so it is not counted.
                prompt_trained=int((labels[1:prompt_end] != IGNORE_INDEX).sum()),
                padding_trained=int((labels[~real] != IGNORE_INDEX).sum()),
                prompt_differs=ids[:prompt_end].tolist() != row.input_ids[:prompt_end],
                early_eos=0 if eos is None else int(((ids[: length - 1] == eos)
                                                     & (labels[: length - 1] != IGNORE_INDEX)).sum()),
            ))
    return checks


# --- findings -------------------------------------------------------------------------


def masked_labels(rows: Sequence[RowCheck]) -> Finding | None:
    """Rows with no supervised token train on nothing; all of them, and training is void."""
    if not rows:
        return None
    empty = [row for row in rows if row.supervised == 0]
    counts = sorted(row.supervised for row in rows)
    if not empty:
        return Finding(
            code="supervised_tokens", severity="info",
            title=f"supervised tokens per row: min {counts[0]:,}, median "
            f"{counts[len(counts) // 2]:,}, max {counts[-1]:,}",
            count=len(rows), fix="none needed",
            details={"min": counts[0], "median": counts[len(counts) // 2], "max": counts[-1],
                     "total": sum(counts)},
        )
    every = len(empty) == len(rows)
    return Finding(
        code="labels_all_masked",
        severity="blocker" if every else "warning",
        title=f"{len(empty):,} of {len(rows):,} rows have every label masked (-100): "
        + ("training would learn nothing" if every else "they train on nothing"),
        count=len(empty),
        fix="raise data.max_length so the answers survive truncation, shorten the prompts, "
        "or drop rows with empty answers; check that the collator keeps retain's labels",
        examples=_lines(empty, "0 supervised tokens"),
        details={"share": len(empty) / len(rows)},
    )


def eos_checks(
    rows: Sequence[RowCheck], tokenizer: PreTrainedTokenizerBase, config: RetainConfig
) -> Finding | None:
    """The EOS ending each answer must be in the batch and carry a loss, or no model stops."""
    if tokenizer.eos_token_id is None:
        return Finding(
            code="no_eos_token", severity="blocker",
            title="the tokenizer has no EOS token: answers cannot end, so generation never stops",
            count=len(rows), fix="use a tokenizer with an eos_token (set tokenizer.eos_token and "
            "the model's eos_token_id)",
        )
    masked = [row for row in rows if row.eos_masked]
    if masked:
        trap = tokenizer.pad_token_id == tokenizer.eos_token_id
        cause = (f"pad token = EOS ('{tokenizer.eos_token}') and the {config.train.collator} "
                 "collator masks every pad-id token" if trap else "the collator masks it")
        return Finding(
            code="eos_masked", severity="blocker",
            title=f"EOS carries no loss in {len(masked):,} of {len(rows):,} rows: {cause}; the "
            "model never learns to stop and will ramble or emit nothing useful",
            count=len(masked),
            fix="use train.collator: completion (masks padding by position), or a pad token "
            "distinct from EOS (model.pad_token: auto keeps the tokenizer's own)",
            examples=_lines(masked, "EOS label = -100"),
            details={"pad_is_eos": trap, "collator": config.train.collator},
        )
    missing = [row for row in rows if row.no_eos]
    if missing:
        return Finding(
            code="eos_missing", severity="blocker",
            title=f"{len(missing):,} of {len(rows):,} rows do not end with EOS "
            f"('{tokenizer.eos_token}'): the model never sees an answer end",
            count=len(missing),
            fix="let retain append EOS (do not strip it in a custom collator)",
            examples=_lines(missing, "no EOS"),
        )
    return None


def prompt_masking(rows: Sequence[RowCheck], loss_on: str) -> Finding | None:
    """With ``loss_on: response`` the prompt must carry no loss."""
    trained = [row for row in rows if row.prompt_trained]
    if loss_on != "response" or not trained:
        return None
    return Finding(
        code="prompt_trained", severity="blocker",
        title=f"train.loss_on is response but prompt tokens carry a loss in {len(trained):,} of "
        f"{len(rows):,} rows: the collator rebuilt the labels",
        count=len(trained),
        fix="use train.collator: completion, or set train.loss_on: all if that is what you want",
        examples=_lines(trained, lambda row: f"{row.prompt_trained} prompt tokens trained"),
    )


def padding_trained(rows: Sequence[RowCheck]) -> Finding | None:
    """Padding that carries a loss teaches the model to emit padding."""
    trained = [row for row in rows if row.padding_trained]
    if not trained:
        return None
    return Finding(
        code="padding_trained", severity="blocker",
        title=f"padding carries a loss in {len(trained):,} of {len(rows):,} rows: the model "
        "learns to emit pad tokens",
        count=len(trained),
        fix="use train.collator: completion (pads labels with -100)",
        examples=_lines(trained, lambda row: f"{row.padding_trained} pad tokens trained"),
    )


def early_eos(rows: Sequence[RowCheck], tokenizer: PreTrainedTokenizerBase) -> Finding | None:
    """An EOS trained before the end of a row teaches the model to stop there, e.g. at once."""
    early = [row for row in rows if row.early_eos]
    if not early:
        return None
    return Finding(
        code="early_eos", severity="blocker",
        title=f"{len(early):,} of {len(rows):,} rows train an EOS ('{tokenizer.eos_token}') before "
        "their end, e.g. a prompt that ends with its own EOS under loss_on: all: the model learns "
        "to stop early, and answers nothing",
        count=len(early),
        fix=f"remove '{tokenizer.eos_token}' from prompts and answers (retain appends the one EOS "
        "each row needs), or train with loss_on: response",
        examples=_lines(early, lambda row: f"{row.early_eos} early EOS"),
    )


def template_checks(
    rows: Sequence[RowCheck],
    encoded: Sequence[Encoded],
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    chat_template: str,
) -> Finding | None:
    """The prompt trained on must be the prompt asked at evaluation and at serving.

    Checked, worst first: batch prompts that differ from evaluation's tokens; prompts
    already holding chat markup (wrapped twice, or written for another model's
    template); a tokenizer template that training does not use; prompts whose tokens
    merge with the answer's at the seam.
    """
    differs = [row for row in rows if row.prompt_differs]
    if differs:
        return Finding(
            code="template_mismatch", severity="blocker",
            title=f"the prompt tokens of {len(differs):,} of {len(rows):,} training rows differ "
            "from the tokens evaluation gives the model",
            count=len(differs),
            fix="do not re-tokenise or re-pad prompts in a custom collator; padding goes on the right",
            examples=_lines(differs, "prompt ids differ"),
        )
    own = getattr(tokenizer, "chat_template", None) or ""
    marked = [(example, marker) for example in examples
              if (marker := _marker(_prompt_text(example), own)) is not None]
    if marked:
        example, marker = marked[0]
        # Markup is only a mismatch against a template: a base model trained and asked
        # with Alpaca-style text sees the same text both times.
        twice = prompt_format.is_chat and example.is_chat
        foreign = bool(own) and marker not in own
        if twice or foreign:
            return Finding(
                code="template_mismatch", severity="blocker",
                title=f"{len(marked):,} prompts already hold {TEMPLATE_MARKERS[marker]} chat markup "
                f"('{marker}'), "
                + ("and the chat template wraps them again" if twice
                   else "which is not this model's template"),
                count=len(marked),
                fix="give raw prompt/response or messages rows and let retain apply the model's "
                "template, or set model.chat_template to the template the data was written for",
                examples=tuple({"line": ex.line, "text": excerpt(_prompt_text(ex))}
                               for ex, _ in marked[:MAX_EXAMPLES]),
            )
    own_markers = [marker for marker in TEMPLATE_MARKERS if marker in own]
    raw_rows = [ex for ex in examples if (not ex.is_chat or not prompt_format.is_chat)
                and not any(marker in ex.prompt for marker in own_markers)]  # pre-rendered
    if own and raw_rows:
        reason = ("model.chat_template is none" if chat_template == "none"
                  else "prompt/response rows are trained as plain text")
        return Finding(
            code="template_mismatch", severity="warning",
            title=f"the tokenizer has a chat template but {len(raw_rows):,} rows train without "
            f"it ({reason}); chat clients and apply_chat_template will wrap prompts in markup "
            "the fine-tune never saw",
            count=len(raw_rows),
            fix="give rows as chat messages (they go through the template), or serve the model "
            "with raw prompts exactly as trained",
            examples=tuple({"line": ex.line, "text": excerpt(ex.prompt)} for ex in raw_rows[:MAX_EXAMPLES]),
        )
    split = [row for row in encoded if row.split_seam]
    if split:
        return Finding(
            code="prompt_seam", severity="warning",
            title=f"{len(split):,} prompts end where their tokens merge with the answer's (e.g. a "
            "trailing space); their answers were tokenised alone, as the model must produce them",
            count=len(split),
            fix="end prompts without trailing whitespace and start answers with a space",
            examples=_lines(split, "prompt/answer seam"),
        )
    return None


def _marker(text: str, own: str) -> str | None:
    """Returns the chat markup in ``text``: one foreign to the template ``own`` first."""
    found = [marker for marker in TEMPLATE_MARKERS if marker in text]
    return next((marker for marker in found if marker not in own), found[0] if found else None)


def _lines(rows: Sequence[Any], text: str | Callable[[Any], str]) -> tuple[dict[str, Any], ...]:
    """Returns a finding's examples: the first rows' lines, each with ``text`` (or ``text(row)``)."""
    return tuple({"line": row.line, "text": text(row) if callable(text) else text}
                 for row in rows[:MAX_EXAMPLES])


def _prompt_text(example: Example) -> str:
    """Returns the text a row's author wrote before the answer, chat turns included."""
    if example.messages is None:
        return example.prompt
    return "\n".join(str(turn.get("content", "")) for turn in example.messages)


def generation_checks(
    generation: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    encoded: Sequence[Encoded],
    config: RetainConfig,
    error: str | None = None,
) -> list[Finding]:
    """The saved model must be able to answer: room for new tokens, and an EOS it stops at.

    retain's evaluation passes its own caps and EOS, so a broken ``generation_config.json``
    could pass every retain metric and still ship a model whose ``generate()`` says
    nothing; these checks read the settings the user's serving code will use.

    Args:
        generation: The model's generation settings (``generation_config.json``).
        tokenizer: The tokenizer training appends EOS with.
        encoded: The encoded training rows, for answer lengths.
        config: The run's config, for retain's own generation caps.
        error: Why transformers refuses these settings, if it does.
    """
    findings = []
    if error:
        findings.append(Finding(
            code="generation_config_invalid", severity="blocker",
            title=f"transformers refuses the model's generation config: {error}",
            count=1, fix="fix generation_config.json in the model directory",
        ))
    eos = tokenizer.eos_token_id
    stops = generation.get("eos_token_id")
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    if eos is not None and stops and eos not in stops:
        findings.append(Finding(
            code="eos_mismatch", severity="blocker",
            title=f"training ends answers with '{tokenizer.eos_token}' (id {eos}) but the model's "
            f"generation config stops at ids {stops}: generate() will not stop after an answer",
            count=1, fix=f"set generation_config.eos_token_id to include {eos}",
        ))
    max_new = generation.get("max_new_tokens")
    if max_new is not None and max_new <= 0:
        findings.append(Finding(
            code="max_new_tokens_zero", severity="blocker",
            title=f"the model's generation config sets max_new_tokens = {max_new}: generate() "
            "leaves no room for an answer, while scores that rank options still look fine",
            count=1, fix="set generation_config.max_new_tokens to the answer length you need "
            "(retain's own caps are eval.max_new_tokens and probes.max_new_tokens)",
        ))
    answers = sorted(row.full_tokens - row.prompt_tokens for row in encoded)
    max_length = generation.get("max_length")
    if max_new is None and max_length is not None and encoded:
        cut = sum(row.full_tokens > max_length for row in encoded)
        if cut:
            findings.append(Finding(
                code="max_length_short", severity="warning",
                title=f"generate() without max_new_tokens stops at max_length {max_length} tokens, "
                f"prompt included: {cut:,} of {len(encoded):,} training rows are longer",
                count=cut, fix="set generation_config.max_new_tokens instead of max_length",
            ))
    blocked = {tuple(ids) for ids in generation.get("bad_words_ids") or []}
    if eos is not None and (eos in (generation.get("suppress_tokens") or []) or (eos,) in blocked):
        findings.append(Finding(
            code="eos_suppressed", severity="blocker",
            title="the generation config suppresses EOS: every answer runs to the token cap",
            count=1, fix="remove the EOS id from suppress_tokens / bad_words_ids",
        ))
    if eos is not None and generation.get("forced_bos_token_id") == eos:
        findings.append(Finding(
            code="forced_eos", severity="blocker",
            title="the generation config forces EOS as the first new token: every answer is empty",
            count=1, fix="unset generation_config.forced_bos_token_id",
        ))
    minimum = generation.get("min_new_tokens") or 0
    if answers and minimum > answers[len(answers) // 2]:
        findings.append(Finding(
            code="min_new_tokens", severity="warning",
            title=f"generation_config.min_new_tokens {minimum} is longer than the median answer "
            f"({answers[len(answers) // 2]} tokens): EOS is blocked until then",
            count=1, fix="lower or unset min_new_tokens",
        ))
    cap = config.eval.max_new_tokens
    longer = sum(length > cap for length in answers)
    if longer:
        findings.append(Finding(
            code="eval_cap_short", severity="warning",
            title=f"eval.max_new_tokens {cap} is shorter than {longer:,} of {len(answers):,} "
            f"training answers (longest {answers[-1]} tokens with EOS): their generations "
            "would be cut and scored wrong",
            count=longer, fix=f"set eval.max_new_tokens to at least {answers[-1]}",
        ))
    return findings


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


def _sample(row: Encoded, tokenizer: PreTrainedTokenizerBase, collator: str) -> list[tuple[str, bool]]:
    """Returns the row as the collator hands it to the loss, as ``(text, trained)`` pieces."""
    batch = build_collator(tokenizer, collator)([row.feature()])
    ids = batch["input_ids"][0].tolist()
    trained = [label != IGNORE_INDEX for label in batch["labels"][0].tolist()]
    pieces: list[tuple[str, bool]] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or trained[end] != trained[start]:
            pieces.append((tokenizer.decode(ids[start:end]), trained[start]))
            start = end
    return pieces

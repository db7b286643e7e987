"""The doctor's checks of what the model is asked and how it answers: prompts that differ
from evaluation's or carry another template's markup, and a generation config that
cannot answer (``max_new_tokens`` 0, EOS suppressed or mismatched)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from retain.audit.batches import (
    RowCheck,
    example_lines,
)
from retain.audit.findings import MAX_EXAMPLES, Finding, excerpt
from retain.config import RetainConfig
from retain.data.encoding import (
    Encoded,
)
from retain.data.prompting import PromptFormat
from retain.data.rows import Example

# Markup that chat templates write; found in a prompt, the data was rendered for a
# template already (the name says which family).
TEMPLATE_MARKERS = {
    "<|im_start|>": "ChatML", "[INST]": "Llama 2 / Mistral", "<|start_header_id|>": "Llama 3",
    "<start_of_turn>": "Gemma", "<|user|>": "Zephyr / Phi", "### Instruction:": "Alpaca",
    "<|begin_of_text|>": "Llama 3",
}


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
            examples=example_lines(differs, "prompt ids differ"),
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
            examples=example_lines(split, "prompt/answer seam"),
        )
    return None


def _marker(text: str, own: str) -> str | None:
    """Returns the chat markup in ``text``: one foreign to the template ``own`` first."""
    found = [marker for marker in TEMPLATE_MARKERS if marker in text]
    return next((marker for marker in found if marker not in own), found[0] if found else None)


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


def prompt_separator(examples: Sequence[Example]) -> Finding | None:
    """Prompt/response rows train as the text ``prompt + response``: with nothing between
    them ("...or maybe.yes") the model learns answers glued to their questions."""
    glued = [ex for ex in examples if ex.messages is None and ex.prompt and ex.response
             and not ex.prompt[-1].isspace() and not ex.response[0].isspace()]
    if not glued:
        return None
    example = glued[0]
    return Finding(
        code="no_separator", severity="warning",
        title=f"{len(glued):,} of {len(examples):,} prompt/response rows join prompt and answer with "
        f"nothing between them ('...{example.prompt[-20:]}{example.response[:12]}...'): the model learns "
        "to answer glued to the question, and a serving prompt ends otherwise",
        count=len(glued),
        fix="end prompts with a newline or 'Answer:' and start answers with a space, as the rows "
        "are trained as plain text prompt + response",
        examples=tuple({"line": ex.line, "text": excerpt(ex.prompt[-40:] + ex.response[:20])}
                       for ex in glued[:MAX_EXAMPLES]),
    )

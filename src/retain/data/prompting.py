"""How a prompt reaches the model: raw for base models, chat-templated for chat models.

A chat model asked a raw prompt answers a question it was never trained to see; a base
model given a chat template sees markup it never learned. Every scorer in retain renders
prompts through one :class:`PromptFormat` so that training, evaluation and guards agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from retain.data.rows import Example
from retain.errors import ConfigError


@dataclass(frozen=True)
class PromptFormat:
    """Renders a user prompt into the text the model is given.

    Attributes:
        template: A Jinja chat template, or None for raw prompts.
        delimiter: Text between the rendered prompt and an answer when an answer is
            scored as a continuation: the suite's delimiter for raw prompts, nothing
            after a chat template (the assistant turn starts right there).
        add_special_tokens: Whether the tokenizer adds BOS itself; False after a chat
            template, which writes its own.
    """

    template: str | None
    delimiter: str
    add_special_tokens: bool
    tokenizer: PreTrainedTokenizerBase | None = None

    @classmethod
    def raw(cls, delimiter: str = " ") -> PromptFormat:
        """Returns the format of a base model: the prompt as written."""
        return cls(template=None, delimiter=delimiter, add_special_tokens=True)

    @classmethod
    def for_tokenizer(
        cls, tokenizer: PreTrainedTokenizerBase, chat_template: str = "auto", delimiter: str = " "
    ) -> PromptFormat:
        """Returns the format for a model, following ``model.chat_template`` of the config.

        Args:
            tokenizer: The model's tokenizer.
            chat_template: ``auto`` (the tokenizer's template if it has one), ``none``, or
                a path to a Jinja file.
            delimiter: The probe suite's delimiter, used for raw prompts.

        Raises:
            ConfigError: If the template file does not exist.
        """
        if chat_template == "none":
            return cls.raw(delimiter)
        if chat_template == "auto":
            template = getattr(tokenizer, "chat_template", None)
        else:
            path = Path(chat_template)
            if not path.is_file():
                raise ConfigError(
                    f"chat template file '{chat_template}' does not exist",
                    field="model.chat_template",
                    fix="give the path of a Jinja file, or use auto or none",
                )
            template = path.read_text(encoding="utf-8")
        if not template:
            return cls.raw(delimiter)
        return cls(template=template, delimiter="", add_special_tokens=False, tokenizer=tokenizer)

    @property
    def is_chat(self) -> bool:
        """True when prompts are wrapped in a chat template."""
        return self.template is not None

    def render(self, prompt: str) -> str:
        """Returns ``prompt`` as the model sees it, ready for its answer to follow."""
        if self.template is None:
            return prompt
        return self.render_messages([{"role": "user", "content": prompt}])

    def render_messages(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """Returns chat turns through the template, ending where the assistant answers.

        Raises:
            ValueError: If this format has no chat template.
        """
        return self._apply(messages, add_generation_prompt=True)

    def render_conversation(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """Returns chat turns through the template as a finished conversation, the last
        turn closed (no cue for the assistant to answer).

        Raises:
            ValueError: If this format has no chat template.
        """
        return self._apply(messages, add_generation_prompt=False)

    def _apply(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool) -> str:
        if self.template is None or self.tokenizer is None:
            raise ValueError("chat turns need a chat template; this prompt format is raw")
        return self.tokenizer.apply_chat_template(
            [dict(message) for message in messages],
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )


@dataclass(frozen=True)
class Rendered:
    """An example as the model sees it.

    Attributes:
        prompt: The text given to the model.
        response: The reference answer as it continues ``prompt`` (leading space and all).
        add_special_tokens: False when a chat template already wrote BOS.
        earlier_answers: Where the assistant turns before the last one are in ``prompt``,
            as (start, end) character offsets: each turn's text and the markup that ends
            it (the template's end-of-turn token; the line break of plain-text chat).
            Training labels them with ``data.train_turns: all``.
        unlocated_answers: Earlier assistant turns not found in ``prompt``: the template
            renders them differently once the conversation goes on (some drop an earlier
            turn's reasoning), so only the last turn of such a row can be trained.
    """

    prompt: str
    response: str
    add_special_tokens: bool
    earlier_answers: tuple[tuple[int, int], ...] = ()
    unlocated_answers: int = 0


def render_example(example: Example, prompt_format: PromptFormat) -> Rendered:
    """Returns ``example`` rendered for the model.

    Prompt/response rows are plain text, ``prompt + response`` (as SFT trainers train
    them); chat rows go through the chat template when the model has one, and fall back
    to ``User: ...\nAssistant:`` text when it does not. Either way the prompt holds every
    turn before the last assistant turn, and :attr:`Rendered.earlier_answers` says where
    its assistant turns are.
    """
    if example.messages is None:
        return Rendered(example.prompt, example.response, True)
    turns = list(example.messages)
    last = max(index for index, turn in enumerate(turns) if turn["role"] == "assistant")
    earlier = [index for index in range(last) if turns[index]["role"] == "assistant"]
    if not prompt_format.is_chat:
        return Rendered(example.prompt, " " + example.response.lstrip(), True, _plain_answers(turns, earlier))
    prompt = prompt_format.render_messages(turns[:last])
    found = [_templated_answer(turns, index, prompt, prompt_format) for index in earlier]
    located = tuple(span for span in found if span is not None)
    return Rendered(prompt, example.response, False, located, len(found) - len(located))


def _plain_answers(turns: Sequence[Mapping[str, Any]], earlier: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Returns where the assistant turns ``earlier`` are in the plain-text chat prompt
    (:func:`~retain.data.schemas.chat_prompt_text`): the text after ``Assistant:``, the
    space before it included, and the line break that ends the turn."""
    starts, offset = [], 0
    lines = [f"{str(turn['role']).capitalize()}: {turn['content']}" for turn in turns]
    for line in lines:
        starts.append(offset)
        offset += len(line) + 1
    cue = len("Assistant:")
    return tuple((starts[index] + cue, starts[index] + len(lines[index]) + 1) for index in earlier)


def _templated_answer(turns: Sequence[Mapping[str, Any]], index: int, prompt: str,
                      prompt_format: PromptFormat) -> tuple[int, int] | None:
    """Returns where assistant turn ``index`` is in the templated ``prompt``: from the end of
    the conversation before it (with the cue to answer) to the end of the conversation
    that closes it, trailing whitespace left out; None when the template renders the turn
    differently once the conversation goes on."""
    try:
        before = prompt_format.render_messages(turns[:index])
        closed = prompt_format.render_conversation(turns[: index + 1])
    except Exception:  # noqa: BLE001 - a template's own errors have no common type
        return None
    if not (closed.startswith(before) and prompt.startswith(closed)):
        return None
    end = len(before) + len(closed[len(before):].rstrip())
    return (len(before), end) if end > len(before) else None

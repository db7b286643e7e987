from __future__ import annotations

from dataclasses import replace

import pytest

from retain.data.perturb import (
    PERTURBATIONS,
    option_order,
    perturb,
    perturb_example,
)
from retain.data.rows import Example, chat_prompt_text
from retain.errors import ConfigError
from retain.lab.domain import DomainSpec, build_domain

_TASK = build_domain(DomainSpec(n_train=4, n_validation=0, n_test=0, n_ood=4))
PROMPTS = [row.prompt for row in (*_TASK.train, *_TASK.ood)]
INSTRUCTED = [
    prompt.replace("\nAnswer:", " Answer yes, no or maybe.\nAnswer:") for prompt in PROMPTS
]


def _words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_every_perturbation_is_deterministic(name: str) -> None:
    for prompt in INSTRUCTED:
        assert perturb(prompt, name) == perturb(prompt, name)


def test_case_perturbations_on_domain_prompts() -> None:
    for prompt in PROMPTS:
        assert perturb(prompt, "lowercase") == prompt.lower()
        assert perturb(prompt, "uppercase") == prompt.upper()
        assert perturb(prompt.lower(), "lowercase") is None  # nothing to change: not counted


def test_extra_whitespace_doubles_spaces_and_adds_a_leading_newline() -> None:
    for prompt in PROMPTS:
        perturbed = perturb(prompt, "extra_whitespace")
        assert perturbed.startswith("\n") and perturbed.endswith("Answer:")
        assert perturbed.count("  ") == prompt.count(" ")
        assert _words(perturbed) == _words(prompt)


def test_strip_newlines_joins_lines_with_one_space() -> None:
    for prompt in PROMPTS:
        perturbed = perturb(prompt, "strip_newlines")
        assert "\n" not in perturbed and "  " not in perturbed
        assert _words(perturbed) == _words(prompt)
        assert perturbed.endswith("? Answer:")
    assert perturb("no newline here", "strip_newlines") is None
    assert perturb("keep the cue\n", "strip_newlines") is None


def test_template_wording_rewords_the_lab_template() -> None:
    for prompt in INSTRUCTED:
        perturbed = perturb(prompt, "template_wording")
        assert perturbed.startswith("Background: ")
        assert "\nQ: " in perturbed and "Question:" not in perturbed
        assert perturbed.endswith(" Respond with yes, no or maybe.\nResponse:")
    assert perturb("Q: 2+2?\nA:", "template_wording") == "Question: 2+2?\nA:"
    assert perturb("no template here", "template_wording") is None


def test_option_order_rotates_yes_no_maybe() -> None:
    for prompt, instructed in zip(PROMPTS, INSTRUCTED):
        assert perturb(instructed, "option_order") == prompt.replace(
            "\nAnswer:", " Answer no, maybe or yes.\nAnswer:"
        )
    assert option_order("Answer with yes or no.") == "Answer with no or yes."
    assert option_order("Choose one of: cat, dog, or bird.") == "Choose one of: dog, bird, or cat."


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (
            "Colour? (A) red (B) green (C) blue\nAnswer:",
            "Colour? (B) green (C) blue (A) red\nAnswer:",
        ),
        (
            "Colour?\nA. red\nB. green\nC. blue\nAnswer:",
            "Colour?\nB. green\nC. blue\nA. red\nAnswer:",
        ),
        (
            "Q: odds?\nOptions: very likely / unlikely / not sure\nA:",
            "Q: odds?\nOptions: unlikely / not sure / very likely\nA:",
        ),
    ],
)
def test_option_order_moves_lettered_and_listed_options(prompt: str, expected: str) -> None:
    assert perturb(prompt, "option_order") == expected


@pytest.mark.parametrize(
    "prompt",
    [
        "Is it better or worse?",
        "Answer the question.",
        "(A) only (C) gaps",
        "Select patients with fever",
    ],
)
def test_option_order_does_not_apply_without_an_option_list(prompt: str) -> None:
    assert perturb(prompt, "option_order") is None


def test_option_order_does_not_apply_to_plain_domain_prompts() -> None:
    assert all(perturb(prompt, "option_order") is None for prompt in PROMPTS)


def test_unknown_perturbation_is_a_user_error() -> None:
    with pytest.raises(ConfigError, match="option_order"):
        perturb("x", "shuffle")


# --- examples -------------------------------------------------------------------------


def test_perturb_example_changes_the_prompt_only() -> None:
    example = Example(INSTRUCTED[0], " yes", line=3, fields={"id": "x"})
    for name in PERTURBATIONS:
        perturbed = perturb_example(example, name)
        assert perturbed == replace(example, prompt=perturb(example.prompt, name))
        assert perturbed.response == " yes"
    assert perturb_example(replace(example, prompt="plain"), "option_order") is None


def test_perturb_example_on_chat_changes_the_last_user_turn_only() -> None:
    turns = (
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Is it safe?\nAnswer yes or no."},
        {"role": "assistant", "content": "Yes"},
    )
    example = Example(chat_prompt_text(turns[:4]), "Yes", turns, 1, {})
    perturbed = perturb_example(example, "uppercase")
    assert [turn["content"] for turn in perturbed.messages] == [
        "Answer briefly.",
        "First question?",
        "First answer.",
        "IS IT SAFE?\nANSWER YES OR NO.",
        "Yes",
    ]
    assert perturbed.prompt == chat_prompt_text(perturbed.messages[:4])
    assert perturbed.response == "Yes" and example.messages[3]["content"].startswith("Is it")
    assert (
        perturb_example(example, "option_order").messages[3]["content"]
        == "Is it safe?\nAnswer no or yes."
    )
    no_user = Example("", "Hi", ({"role": "assistant", "content": "Hi"},), 1, {})
    assert perturb_example(no_user, "uppercase") is None

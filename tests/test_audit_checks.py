"""The single-file audit checks on planted and clean data."""

from __future__ import annotations

import pytest

from retain.audit.checks import SIZE_SOURCE, dataset_size, degenerate_responses, format_consistency, role_order_problem
from retain.audit.findings import Finding
from retain.audit.lengths import token_lengths
from retain.data.rows import Example
from retain.lab.domain import DomainSpec, build_domain
from retain.lab.tokenizer import train_tokenizer

TEXTS = [
    "Context: A randomized trial enrolled 120 adults with Harlow syndrome.",
    "Question: Does Zorvalin reduce pain scores in patients with Marsh fever?",
    "Answer: yes no maybe. The study was small and the results were mixed.",
] * 20


def row(prompt: str, response: str, line: int) -> Example:
    return Example(prompt=prompt, response=response, line=line)


def chat(roles: list[str], line: int, answer: str = "fine") -> Example:
    turns = tuple({"role": role, "content": f"{role} says hi"} for role in roles)
    if roles and roles[-1] == "assistant":
        turns = (*turns[:-1], {"role": "assistant", "content": answer})
    return Example(prompt="User: hi\nAssistant:", response=answer, messages=turns, line=line)


def by_code(findings: list[Finding]) -> dict[str, Finding]:
    return {finding.code: finding for finding in findings}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, 300, 128)


@pytest.fixture(scope="module")
def domain_rows() -> list[Example]:
    task = build_domain(DomainSpec(n_train=300, n_validation=10, n_test=10, n_ood=10))
    return [row(item.prompt, item.response, i + 1) for i, item in enumerate(task.train)]


# --- size -----------------------------------------------------------------------------


def test_size_arithmetic_and_wording() -> None:
    finding = dataset_size(2000, task="qa", domain="medical")
    assert finding is not None and finding.severity == "blocker"
    assert finding.title == (
        "2,000 training rows; the rule of thumb for medical qa is 11,250 (5,000 x 1.5 x 1.5)"
    )
    assert "--allow-small-data" in finding.fix
    assert finding.details["minimum"] == 11250 and finding.details["source"] == SIZE_SOURCE


def test_size_enough_rows_small_allowed_and_float_rounding() -> None:
    assert dataset_size(11250, task="qa", domain="medical") is None
    assert dataset_size(100, allow_small=True).severity == "warning"
    assert dataset_size(9750, task="qa", domain="finance") is None  # 5,000 x 1.5 x 1.3
    assert dataset_size(9749, task="qa", domain="finance").details["minimum"] == 9750
    assert dataset_size(6499, task="classification", domain="code").details["minimum"] == 6500
    assert dataset_size(4999, task="classification").details["minimum"] == 5000


def test_size_overrides() -> None:
    finding = dataset_size(100, task="ranking", multipliers={"task": {"ranking": 1.25}})
    assert finding.details["minimum"] == 6250 and "(5,000 x 1.25 x 1.0)" in finding.title


@pytest.mark.parametrize("kwargs, named", [
    ({"task": "poetry"}, "classification, qa, generation, chat"),
    ({"domain": "space"}, "general, medical, legal, finance, code"),
])
def test_size_unknown_names(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        dataset_size(10, **kwargs)


# --- degenerate -----------------------------------------------------------------------


def test_degenerate_planted() -> None:
    rows = [
        row("What is 2+2?", "4", 1),
        row("What is 3+3?", "   ", 2),
        row("Repeat after me", "repeat after  ME", 3),
        row("Is it safe?", "yes yes yes yes", 4),
        row("Is it safe?", "Yes, yes, YES.", 5),
    ]
    finding = degenerate_responses(rows)
    assert finding is not None and finding.severity == "blocker" and finding.count == 4
    reasons = {example["line"]: example["reason"] for example in finding.examples}
    assert reasons[2] == "empty response"
    assert reasons[3] == "response repeats the prompt"
    assert reasons[4].startswith("one word repeated") and "x 4" in reasons[4]
    assert 1 not in reasons


def test_degenerate_without_empty_is_a_warning_and_clean_is_none() -> None:
    assert degenerate_responses([row("a", "b b b", 1)]).severity == "warning"
    assert degenerate_responses([row("Say yes twice", "yes yes", 1)]) is None
    assert degenerate_responses([]) is None


def test_degenerate_chat_echo_uses_last_user_turn() -> None:
    turns = (
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "hello there"},
    )
    example = Example("User: Hello there\nAssistant:", "hello there", turns, 7)
    assert degenerate_responses([example]).examples[0]["reason"] == "response repeats the prompt"


# --- format consistency ---------------------------------------------------------------


def test_mixed_formats_and_role_order() -> None:
    rows = [
        row("q1", "a long answer one", 1), row("q2", "a long answer two", 2),
        chat(["system", "user", "assistant"], 3),
        chat(["user", "user", "assistant"], 4),
        chat(["user", "assistant", "user"], 5),
    ]
    findings = by_code(format_consistency(rows))
    assert findings["mixed_formats"].severity == "warning"
    assert findings["mixed_formats"].details == {"chat_rows": 3, "prompt_response_rows": 2}
    order = findings["chat_role_order"]
    assert order.count == 2 and [example["line"] for example in order.examples] == [4, 5]


@pytest.mark.parametrize("roles, ok", [
    (["user", "assistant"], True),
    (["system", "user", "assistant", "user", "assistant"], True),
    (["user", "assistant", "tool", "assistant"], True),
    (["assistant"], False),
    (["user", "system", "assistant"], False),
    (["system"], False),
    ([], False),
    (["user", None, "assistant"], False),
    (["user", ["odd"], "assistant"], False),
])
def test_role_order(roles: list, ok: bool) -> None:
    assert (role_order_problem(roles) is None) is ok


def test_label_variants_and_balance() -> None:
    responses = ["Yes"] * 5 + ["yes."] * 3 + ["YES"] + ["no"] * 10 + [" maybe"]
    rows = [row(f"q{i}", text, i + 1) for i, text in enumerate(responses)]
    findings = by_code(format_consistency(rows))
    variants = findings["label_variants"]
    assert variants.details["forms"] == {"yes": {"Yes": 5, "yes.": 3, "YES": 1}}
    assert variants.count == 4 and "'Yes' (5)" in variants.title
    balance = findings["label_balance"]
    assert balance.severity == "warning"  # maybe is 1 of 20 rows
    assert balance.details["shares"]["maybe"] == pytest.approx(0.05)


def test_balanced_labels_are_info_and_free_text_has_no_label_findings() -> None:
    labels = ["yes", "no", "maybe"] * 4
    findings = by_code(format_consistency([row(f"q{i}", t, i) for i, t in enumerate(labels)]))
    assert set(findings) == {"label_balance"} and findings["label_balance"].severity == "info"
    prose = [row(f"q{i}", f"a free text answer number {i}", i) for i in range(5)]
    assert format_consistency(prose) == []
    assert format_consistency([]) == []


def test_odd_chat_rows_do_not_raise() -> None:
    odd = Example("p", "r", ({"role": "user"}, "not a turn", {"content": "x"}), 1)
    findings = by_code(format_consistency([odd]))
    assert findings["chat_role_order"].count == 1


# --- token lengths --------------------------------------------------------------------


def test_token_lengths_planted_truncation(tokenizer) -> None:
    rows = [
        row("Q: 2+2?\nA:", " 4", 1),
        row("Q: yes?\nA:", " yes" * 30, 2),  # loses part
        row("Context: " + "study results " * 40, " maybe", 3),  # loses all
    ]
    findings = by_code(token_lengths(rows, tokenizer, max_length=24))
    too_long = findings["too_long"]
    assert too_long.severity == "blocker" and too_long.count == 2
    assert too_long.details["lose_part"] == 1 and too_long.details["lose_all"] == 1
    assert {example["line"] for example in too_long.examples} == {2, 3}
    summary = findings["token_lengths"].details
    assert summary["p50"] <= summary["p95"] <= summary["max"] and summary["max"] > 24
    assert "context_window" not in findings


def test_token_lengths_partial_only_is_a_warning_and_window(tokenizer) -> None:
    rows = [row("Q: yes?\nA:", " yes" * 40, 1), row("Q: no?\nA:", " no", 2)]
    findings = by_code(token_lengths(rows, tokenizer, max_length=16, context_window=8))
    assert findings["too_long"].severity == "warning"
    assert findings["context_window"].severity == "warning"
    assert findings["context_window"].count == 2


def test_token_lengths_counts_eos_and_handles_chat_without_template(tokenizer) -> None:
    example = row("Q: 2+2?\nA:", " 4", 1)
    expected = len(tokenizer(example.prompt + example.response)["input_ids"]) + 1
    info = by_code(token_lengths([example], tokenizer, max_length=512))
    assert set(info) == {"token_lengths"} and info["token_lengths"].details["max"] == expected
    no_answer = Example("User: hi\nAssistant:", "hello", ({"role": "user", "content": "hi"},), 2)
    findings = token_lengths([chat(["user", "assistant"], 1), no_answer], tokenizer, 512)
    assert [finding.code for finding in findings] == ["token_lengths"]
    assert token_lengths([], tokenizer, 16) == []


def test_token_lengths_with_chat_template(tokenizer) -> None:
    templated = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer,
                                    eos_token="</s>", bos_token="<s>", pad_token="<pad>")
    templated.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    findings = by_code(token_lengths([chat(["user", "assistant"], 1)], templated, 4))
    assert findings["too_long"].count == 1


# --- the lab's clean domain data ------------------------------------------------------


def test_clean_domain_data_has_no_blocker_but_size(domain_rows, tokenizer) -> None:
    findings = [
        dataset_size(len(domain_rows), task="classification", domain="medical"),
        degenerate_responses(domain_rows),
        *format_consistency(domain_rows),
        *token_lengths(domain_rows, tokenizer, max_length=1024),
    ]
    blockers = [f.code for f in findings if f is not None and f.severity == "blocker"]
    assert blockers == ["dataset_size"]
    codes = {f.code for f in findings if f is not None}
    assert "label_balance" in codes and "label_variants" not in codes
    assert "degenerate_responses" not in codes and "too_long" not in codes

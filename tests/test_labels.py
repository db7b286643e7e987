from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from retain.evaluation.labels import infer_label_set, label_settled, normalize_label, parse_label
from retain.lab.domain import LABELS, DomainSpec, build_domain

FEVER = ("supports", "refutes", "not enough info")

CASES = [
    # Plain, cased, punctuated, wrapped.
    ("Yes", LABELS, "yes"),
    ("yes.", LABELS, "yes"),
    ("YES", LABELS, "yes"),
    (" no", LABELS, "no"),
    ("Maybe!", LABELS, "maybe"),
    ("**Yes**", LABELS, "yes"),
    ("`maybe`", LABELS, "maybe"),
    ('"No."', LABELS, "no"),
    ("\n\n  yes", LABELS, "yes"),
    # Answer prefixes and answer statements.
    ("Answer: no", LABELS, "no"),
    ("**Answer:** maybe", LABELS, "maybe"),
    ("The answer is maybe.", LABELS, "maybe"),
    ("Final answer: yes", LABELS, "yes"),
    ("Based on the study, the answer is no.", LABELS, "no"),
    ("Let me think. Answer: yes", LABELS, "yes"),
    # A committed answer followed by more text.
    ("no, because the trial found no difference", LABELS, "no"),
    ("Yes\n\nExplanation: there is no doubt.", LABELS, "yes"),
    ("Yes. It is not a maybe.", LABELS, "yes"),
    ("Yes it does, with no side effects", LABELS, "yes"),
    # Multi-word labels, longest match first.
    ("Not enough info.", FEVER, "not enough info"),
    ("NOT ENOUGH INFO to decide", FEVER, "not enough info"),
    ("Supports the claim", FEVER, "supports"),
    ("no effect at all", ("no", "no effect", "harm"), "no effect"),
    ("No, harm", ("no", "no effect", "harm"), "no"),
    # Nothing committed: None.
    ("", LABELS, None),
    ("   \n", LABELS, None),
    ("nobody knows", LABELS, None),
    ("I think yes", LABELS, None),
    ("Answering that needs more data", LABELS, None),
    ("not enough information", FEVER, None),
    # Hedges between two labels in the first clause: None.
    ("yes or no", LABELS, None),
    ("Yes/No", LABELS, None),
    ("yes and no", LABELS, None),
    ("Maybe yes, maybe no.", LABELS, None),
    ("The answer is yes or no.", LABELS, None),
]


@pytest.mark.parametrize(("output", "labels", "expected"), CASES)
def test_parse_label(output: str, labels: tuple[str, ...], expected: str | None) -> None:
    assert parse_label(output, labels) == expected


def test_labels_given_raw_come_back_normalised() -> None:
    assert parse_label("yes", [" Yes", " No"]) == "yes"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" yes", "yes"),
        ("**No.**", "no"),
        ("'Maybe'", "maybe"),
        ("`Not  Enough Info`", "not enough info"),
    ],
)
def test_normalize_label(text: str, expected: str) -> None:
    assert normalize_label(text) == expected


def test_infer_label_set_on_the_lab_domain() -> None:
    task = build_domain(DomainSpec(n_train=60, n_validation=0, n_test=0, n_ood=0))
    assert infer_label_set(row.response for row in task.train) == tuple(sorted(LABELS))


@pytest.mark.parametrize(
    ("responses", "expected"),
    [
        (["Yes.", "no", "YES", "**No**"], ("no", "yes")),
        (["positive", "negative", "neutral", "positive"], ("negative", "neutral", "positive")),
        (["yes", "yes", "yes"], None),  # one label is not a classification
        (["Paris", "Rome", "Berlin"], None),  # short answers that never repeat
        (["yes", "no", "yes", "it depends on the dose"], None),  # one long answer
        (["yes", "", "no", "no"], None),
        ([], None),
        ([str(i % 12) for i in range(48)], None),  # more labels than max_labels
    ],
)
def test_infer_label_set(responses: list[str], expected: tuple[str, ...] | None) -> None:
    assert infer_label_set(responses) == expected


def test_infer_label_set_max_labels() -> None:
    responses = [str(i % 12) for i in range(48)]
    assert infer_label_set(responses, max_labels=12) == tuple(sorted({str(i) for i in range(12)}))


YNM = ("yes", "no", "maybe")


@pytest.mark.parametrize(("text", "settled"), [
    ("No, the results showed", True),
    ("Yes. Pelpapril", True),
    ("**Maybe**\n", True),
    ("No", False),                      # the clause may go on: "No one knows"
    ("No.", False),                     # "No.5" is still possible
    ("Yes or no, it depends", False),   # a hedge is no answer
    ("The answer is no, because", False),  # an answer prefix: a later word decides
    ("I think yes, but", False),
    ("Answer: yes, since", False),
    ("", False),
])
def test_label_settled(text: str, settled: bool) -> None:
    assert label_settled(text, YNM) is settled


WORDS = st.sampled_from(["yes", "no", "maybe", "or", "and", "answer", "is", "the", "Yes", "No", "one", "5", "**",
                         ".", ",", ":", " ", "\n", "-", "nobody"])


@settings(max_examples=400, deadline=None)
@given(start=st.lists(WORDS, max_size=8).map("".join), rest=st.lists(WORDS, max_size=8).map("".join))
@example(start="no, ", rest="or yes")  # settled: a continuation that hedges cannot undo it
@example(start="**Maybe**\n", rest="no")
def test_a_settled_label_survives_every_continuation(start: str, rest: str) -> None:
    if label_settled(start, YNM):
        assert parse_label(start, YNM) is not None
        assert parse_label(start + rest, YNM) == parse_label(start, YNM)

from __future__ import annotations

import json
from collections import Counter

import pytest

from retain.lab.domain import (
    FINDINGS,
    LABELS,
    OOD_QUESTIONS,
    TRAIN_QUESTIONS,
    DomainSpec,
    build_domain,
    write_jsonl,
)

SMALL = DomainSpec(n_train=300, n_validation=50, n_test=80, n_ood=80)


def test_same_spec_gives_identical_splits() -> None:
    assert build_domain(SMALL) == build_domain(SMALL)
    assert build_domain(SMALL).train != build_domain(DomainSpec(**{**SMALL.__dict__, "seed": 1})).train


def test_split_sizes_and_labels() -> None:
    task = build_domain(SMALL)
    sizes = {name: len(rows) for name, rows in task.splits().items()}
    assert sizes == {"train": 300, "validation": 50, "test": 80, "ood": 80}
    for rows in task.splits().values():
        assert {row.label for row in rows} <= set(LABELS)
        assert all(row.response == " " + row.label for row in rows)
        assert all(row.prompt.endswith("\nAnswer:") for row in rows)


def test_splits_do_not_overlap_in_prompts_or_drugs() -> None:
    task = build_domain(SMALL)
    drugs: dict[str, set[str]] = {}
    for name, rows in task.splits().items():
        drugs[name] = {row.drug for row in rows}
        assert all(row.drug in row.prompt and row.outcome in row.prompt for row in rows)
    names = list(drugs)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not drugs[first] & drugs[second], (first, second)
    prompts = [row.prompt for rows in task.splits().values() for row in rows]
    assert len(prompts) == len(set(prompts))


def test_ood_uses_only_unseen_question_templates() -> None:
    task = build_domain(SMALL)
    train_stems = [template.split("{")[0] for template in TRAIN_QUESTIONS]
    ood_stems = [template.split("{")[0] for template in OOD_QUESTIONS]
    for row in task.ood:
        question = row.prompt.split("Question: ")[1]
        assert any(question.startswith(stem) for stem in ood_stems)
    for split in ("train", "validation", "test"):
        for row in getattr(task, split):
            question = row.prompt.split("Question: ")[1]
            assert any(question.startswith(stem) for stem in train_stems)
            assert not any(question.startswith(stem) for stem in ood_stems)


def test_answer_follows_from_the_finding_about_the_asked_outcome() -> None:
    task = build_domain(SMALL)
    for row in task.train + task.ood:
        context = row.prompt.split("\nQuestion: ")[0].removeprefix("Context: ")
        question = row.prompt.split("\nQuestion: ")[1]
        assert row.outcome in question and row.drug in question and row.condition in question
        matched = [
            label
            for label, templates in FINDINGS.items()
            for template in templates
            if template.format(drug=row.drug, outcome=row.outcome) in context
        ]
        assert matched == [row.label], (row.prompt, matched)


def test_label_mix_follows_weights() -> None:
    counts = Counter(row.label for row in build_domain(DomainSpec(n_train=2000)).train)
    assert counts["yes"] > counts["no"] > counts["maybe"] > 200


def test_clean_by_default() -> None:
    assert all(row.flaw is None for row in build_domain(SMALL).train)


def test_flaws_are_added_and_labelled() -> None:
    spec = DomainSpec(**{**SMALL.__dict__, "duplicates": 0.1, "conflicts": 0.05, "contamination": 0.1})
    task = build_domain(spec)
    flaws = Counter(row.flaw for row in task.train)
    assert flaws == {None: 300, "duplicate": 15, "near_duplicate": 15, "conflict": 15, "contamination": 8}
    by_id = {row.id: row for row in task.train + task.test}
    for row in task.train:
        if row.flaw is None:
            continue
        source = by_id[row.source_id]
        if row.flaw == "duplicate":
            assert (row.prompt, row.response) == (source.prompt, source.response)
        elif row.flaw == "near_duplicate":
            assert row.prompt != source.prompt and row.response == source.response
            assert len(row.prompt) - len(source.prompt) in (0, 1)
        elif row.flaw == "conflict":
            assert row.prompt == source.prompt and row.label != source.label
        elif row.flaw == "contamination":
            assert source in task.test and row.prompt == source.prompt


@pytest.mark.parametrize(
    "bad", [{"n_train": -1}, {"duplicates": 1.5}, {"label_weights": (1.0, 0.0)}, {"contamination": -0.1}]
)
def test_bad_specs_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        DomainSpec(**bad)


def test_write_jsonl_round_trips(tmp_path) -> None:
    task = build_domain(SMALL)
    path = tmp_path / "train.jsonl"
    assert write_jsonl(task.train, path) == len(task.train)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["prompt"] for r in records] == [row.prompt for row in task.train]
    assert set(records[0]) == {"id", "prompt", "response", "label"}

"""retain.replay, retain.check_rehearsal and retain.self_rehearsal: rehearsal as data for a
trainer of your own. The blend's count and share, its interleaving (no block of one
source), each of TRL's row formats, the probe check, and a real SFTTrainer reading it."""

from __future__ import annotations

import itertools

import datasets
import pytest
import torch
from tiny_models import tiny_llama
from trl import SFTConfig, SFTTrainer

import retain
from retain.data.encoding import prepare_tokenizer
from retain.errors import ConfigError, DataError
from retain.evaluation.suites import load_suite
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world
from retain.methods.rehearsal import general_count

GENERAL = [f"General text number {index} about rivers, hills and the weather." for index in range(200)]


def _task(count: int = 40) -> list[dict]:
    return [{"prompt": f"Is {index} even?", "completion": " yes" if index % 2 == 0 else " no"}
            for index in range(count)]


def _longest_run(sources: list[str]) -> int:
    return max(len(list(group)) for _, group in itertools.groupby(sources))


@pytest.mark.parametrize(("task_rows", "ratio"), [(40, 0.2), (40, 0.5), (30, 0.25), (64, 0.75)])
def test_the_blend_holds_the_ratio_in_every_stretch_of_rows(task_rows: int, ratio: float) -> None:
    blended = retain.replay(_task(task_rows), general=GENERAL, ratio=ratio, seed=0, echo=None)
    sources = [row["source"] for row in blended]
    general = general_count(task_rows, ratio)
    assert sources.count("task") == task_rows and sources.count("replay") == general
    assert [row for row in blended if row["source"] == "task"] == [row | {"source": "task"} for row in _task(task_rows)]
    # Spread evenly: no run of one source longer than the other source's spacing allows,
    # and any window holds the share to within a row (blocks, as the old sampler made,
    # fail both).
    spacing = max(task_rows / general, general / task_rows)
    assert _longest_run(sources) <= int(spacing) + 1
    window = 8
    for start in range(len(sources) - window + 1):
        share = sources[start : start + window].count("replay") / window
        assert abs(share - general / len(sources)) <= 1 / window + 1e-9, (start, sources)


def test_the_draw_follows_the_seed_and_repeats_texts_only_when_too_few() -> None:
    first = retain.replay(_task(), general=GENERAL, ratio=0.5, seed=0, echo=None)
    again = retain.replay(_task(), general=GENERAL, ratio=0.5, seed=0, echo=None)
    other = retain.replay(_task(), general=GENERAL, ratio=0.5, seed=1, echo=None)
    picked = [row["completion"] for row in first if row["source"] == "replay"]
    assert first == again and picked != [row["completion"] for row in other if row["source"] == "replay"]
    assert len(set(picked)) == len(picked) == 40  # without replacement
    few = retain.replay(_task(), general=GENERAL[:3], ratio=0.5, echo=None)
    assert sorted({row["completion"] for row in few if row["source"] == "replay"}) == sorted(GENERAL[:3])


def test_each_row_format_gets_general_rows_of_its_own_shape_trained_on_every_token() -> None:
    text = GENERAL[0]
    cases = {
        "text": ({"text": "Q: 2+2?\nA: 4"}, {"text": text}),
        "prompt/completion": ({"prompt": "Q: 2+2?", "completion": " 4"}, {"prompt": "", "completion": text}),
        "chat prompt/completion": (
            {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]},
            {"prompt": [{"role": "user", "content": ""}], "completion": [{"role": "assistant", "content": text}]}),
        "messages": (
            {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": text}]}),
    }
    for name, (task_row, general_row) in cases.items():
        blended = retain.replay([task_row] * 4, general=[text], ratio=0.2, echo=None, source_column=None)
        assert blended.count(task_row) == 4, name
        assert [row for row in blended if row != task_row] == [general_row], name


def test_a_dataset_comes_back_a_dataset_with_its_features() -> None:
    rows = datasets.Dataset.from_list([row | {"id": index} for index, row in enumerate(_task(20))])
    blended = retain.replay(rows, general=GENERAL, ratio=0.2, echo=None)
    assert isinstance(blended, datasets.Dataset) and len(blended) == 25
    assert blended.features["id"] == rows.features["id"] and blended.features["source"].dtype == "string"
    general = blended.filter(lambda row: row["source"] == "replay")
    assert general["id"] == [None] * 5 and set(general["prompt"]) == {""}


def test_what_replay_cannot_blend_is_refused_with_a_fix(tmp_path) -> None:
    preferences = [{"prompt": "2+2?", "chosen": " 4", "rejected": " 5"}]
    with pytest.raises(DataError, match="preference rows") as refused:
        retain.replay(preferences, general=GENERAL, echo=None)
    assert "retain.ewc" in refused.value.fix
    with pytest.raises(DataError, match="not a format"):
        retain.replay([{"input_ids": [1, 2]}], general=GENERAL, echo=None)
    with pytest.raises(DataError, match="messages rows"):
        retain.replay([{"text": "a b"}], general=[{"messages": [{"role": "user", "content": "hi"}]}], echo=None)
    with pytest.raises(ConfigError, match="method.replay.ratio"):
        retain.replay(_task(), general=GENERAL, ratio=1.5, echo=None)
    with pytest.raises(ConfigError, match="instructions"):  # prompts with no answers: nothing to replay
        retain.replay(_task(), general="instructions", echo=None)
    with pytest.raises(ConfigError, match="general= nor model="):  # no source, no model family
        retain.replay(_task(), echo=None)


def test_general_data_comes_from_the_sources_method_general_reads(tmp_path) -> None:
    path = tmp_path / "general.txt"
    path.write_text("First general line.\n\nSecond general line.\n", encoding="utf-8")
    blended = retain.replay(_task(8), general=path, ratio=0.2, echo=None)
    assert sorted(row["completion"] for row in blended if row["source"] == "replay") == [
        "First general line.", "Second general line."]
    table = tmp_path / "general.jsonl"
    table.write_text('{"body": "A text from a column."}\n', encoding="utf-8")
    blended = retain.replay(_task(4), general=table, text_field="body", ratio=0.2, echo=None)
    assert [row["completion"] for row in blended if row["source"] == "replay"] == ["A text from a column."]


def test_the_probe_check_names_the_items_a_blended_row_states() -> None:
    item = load_suite("general").items[0]
    stating = f"{item.prompt} {item.answer}"
    blended = retain.replay(_task(20), general=[stating, *GENERAL[:19]], ratio=0.5, echo=None)  # every text
    check = retain.check_rehearsal(blended, probes="general")
    assert not check.clean and check.rows == {"replay": 20}
    assert item.id in check.items["general"]
    assert check.lines()[0].startswith("warning: ") and "replay" in check.lines()[0]
    clean = retain.check_rehearsal(retain.replay(_task(20), general=GENERAL, ratio=0.5, echo=None), probes="general")
    assert clean.clean and clean.items == {} and clean.lines() == ["replay: no probe item in the 20 rows it blended in"]
    # A task row stating the item is the audit's concern, not rehearsal's: it is not counted.
    assert retain.check_rehearsal([{"text": stating, "source": "task"}], probes="general").rows == {}


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = train_tokenizer(build_world().documents, 384, 128)
    prepare_tokenizer(tokenizer)
    return tokenizer


def test_sft_trainer_trains_on_the_blend_general_rows_included(tokenizer, tmp_path) -> None:
    rows = datasets.Dataset.from_list(_task(12))
    blended = retain.replay(rows, general=GENERAL, ratio=0.25, echo=None)
    torch.manual_seed(0)
    trainer = SFTTrainer(
        model=tiny_llama(tokenizer),
        args=SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, save_strategy="no",
                       report_to="none", use_cpu=True, max_length=64, disable_tqdm=True),
        train_dataset=blended, processing_class=tokenizer)
    prepared = trainer.train_dataset
    assert len(prepared) == 16
    # A general row has no prompt: every token after BOS is trained; a task row's prompt is not.
    general = next(index for index, row in enumerate(blended) if row["source"] == "replay")
    assert -100 not in prepared[general]["labels"][1:] and prepared[0]["labels"][1] == -100
    trainer.train()


def test_self_rehearsal_returns_the_base_models_healthy_answers_as_rows(tokenizer, monkeypatch) -> None:
    from dataclasses import replace

    from retain.methods.rehearsal import SelfAugment

    generate = SelfAugment.healthy_answers

    def half_complete(self, *args, **kwargs):  # a random tiny model never says EOS: mark every other answer ended
        answers, tried = generate(self, *args, **kwargs)
        return [(prompt, replace(answer, stopped=index % 2 == 0)) for index, (prompt, answer) in enumerate(answers)], tried

    monkeypatch.setattr(SelfAugment, "healthy_answers", half_complete)
    torch.manual_seed(0)
    model = tiny_llama(tokenizer)
    lines = []
    rows = retain.self_rehearsal(model, tokenizer, n=6, general=GENERAL, max_new_tokens=8, echo=lines.append)
    # answers cut by max_new_tokens are left out: a trainer would append EOS to them
    assert len(rows) == 3 and "3 cut by max_new_tokens left out" in lines[-1]
    for row in rows:
        assert set(row) == {"prompt", "completion", "source"} and row["source"] == "self_augment"
        assert row["completion"].strip()  # the health filter dropped empty answers
        assert any(text.startswith(row["prompt"]) for text in GENERAL)  # the first half of a general text
    blended = retain.replay(_task(20), general=rows, ratio=0.2, echo=None)
    assert {row["source"] for row in blended} == {"task", "self_augment"}

"""The general instructions retain ships for self-synthesized rehearsal: disjoint from the
probes, read as whole prompts by self_augment, refused by replay, the default where
self_augment is the only reader of general data."""

from __future__ import annotations

import pytest
import torch
from test_methods_rehearsal import FakeGenerator, split, task_rows
from tiny_models import tiny_llama

from retain.audit.contamination import blended_contamination
from retain.config import load_config
from retain.data.prompting import PromptFormat
from retain.errors import ConfigError
from retain.evaluation.suites import load_suite
from retain.lab.base import lab_size
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world
from retain.methods import MethodContext, rehearsal
from retain.methods.general import INSTRUCTIONS, general_source, instructions, load_general_texts
from retain.methods.rehearsal import SelfAugment

# A model of no registered family: the shipped instructions are what it can rehearse.
REAL = "model.name_or_path=some/real-model"


def test_the_instructions_are_single_line_unique_requests() -> None:
    texts = instructions()
    assert len(texts) >= 300
    assert len(set(texts)) == len(texts)
    assert all(text == text.strip() and "\n" not in text and len(text.split()) >= 4 for text in texts)


def test_no_instruction_states_a_probe_item() -> None:
    # The audit's own check: a row holding an item's question with its answer, its question
    # as a prompt, or another wording of its fact would be named here.
    assert blended_contamination(instructions(), [load_suite("general")], "instructions") is None


def test_a_planted_probe_item_is_found_among_them() -> None:
    # The check above can fail: with one probe question and its answer among the
    # instructions, the audit names it.
    item = load_suite("general").items[0]
    planted = [*instructions(), f"{item.prompt} {item.answer}"]
    found = blended_contamination(planted, [load_suite("general")], "instructions")
    assert found is not None and found.code == "probe_contamination"


@pytest.mark.parametrize(("methods", "expected"), [
    ("[lora,self_augment]", INSTRUCTIONS),
    ("[full,self_augment,ewc]", None),  # EWC needs texts: no default
    ("[lora,replay]", None),
    ("[lora]", None),
])
def test_instructions_are_the_default_only_for_self_augment_alone(methods, expected) -> None:
    config = load_config(None, [REAL, f"method={methods}"])
    assert general_source(config) == expected


def test_lab_models_keep_their_own_corpus() -> None:
    config = load_config(None, ["method=[lora,self_augment]"])  # the lab model is the default
    assert general_source(config) == "lab"


def test_replay_refuses_the_instructions_in_one_line() -> None:
    config = load_config(None, [REAL, "method=[lora,replay,self_augment]", "method.general.source=instructions"])
    with pytest.raises(ConfigError) as caught:
        load_general_texts(config)
    assert caught.value.field == "method.general.source" and "self_augment" in caught.value.fix


def test_no_source_for_replay_names_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        load_general_texts(load_config(None, [REAL, "method=[lora,replay]"]))
    assert caught.value.field == "method.general.source"


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([*build_world(lab_size("micro").world).documents, *instructions()], 320, 128)


def test_self_augment_asks_the_whole_instruction(tokenizer, monkeypatch, tmp_path) -> None:
    torch.manual_seed(0)
    model = tiny_llama(tokenizer)
    fake = FakeGenerator({"": (" Here you are.", 4, True)})
    monkeypatch.setattr(rehearsal, "generate_greedy", fake)
    config = load_config(None, [REAL, "method=[lora,self_augment]", "method.self_augment.ratio=0.5",
                                "data.max_length=96"])
    context = MethodContext(config=config, tokenizer=tokenizer, prompt_format=PromptFormat.raw(),
                            cache_dir=tmp_path, echo=lambda line: None)
    task = task_rows(tokenizer, 6)
    rows = SelfAugment(config).transform_rows(list(task), model, context)
    [(prompts, _)] = fake.calls
    assert set(prompts) <= set(instructions())  # whole requests, not their first half
    general = split(rows, task)[1]
    assert len(general) == 6
    assert all(row.text.endswith("Here you are.") and row.text.rsplit(" Here you are.", 1)[0].strip() in prompts
               for row in general)

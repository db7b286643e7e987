"""token_forget on tiny random Llamas: the partition against losses recomputed directly, the
loss against a hand computation, and the reference model's clean-up."""

from __future__ import annotations

import copy
import json
import math
from contextlib import contextmanager

import pytest
import torch
from tiny_models import tiny_llama
from transformers import TrainingArguments

from retain.config import load_config
from retain.data.encoding import IGNORE_INDEX, Encoded, build_collator
from retain.data.prompting import PromptFormat
from retain.errors import ConfigError, RetainError
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world
from retain.methods import MethodContext, methods_for
from retain.methods import token_forget as module
from retain.methods.token_forget import (
    TokenForget,
    fit,
    forgetting_loss,
    partition,
    reference_folds,
)
from retain.training.trainer import RetainTrainer

ROWS = 10
PROMPT = 3


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = train_tokenizer(build_world().documents, 384, 128)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _model(tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    return tiny_llama(tokenizer)


def _rows(tokenizer, count: int = ROWS) -> list[Encoded]:
    """Rows of random ids: a 3-token prompt (labels -100) and a 4 to 8-token answer."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for line in range(1, count + 1):
        length = PROMPT + 4 + line % 5
        ids = torch.randint(5, len(tokenizer), (length,), generator=generator).tolist()
        rows.append(Encoded(line=line, input_ids=ids, labels=[IGNORE_INDEX] * PROMPT + ids[PROMPT:],
                            prompt_tokens=PROMPT, full_tokens=length))
    return rows


def _setup(overrides: list[str], tokenizer, tmp_path):
    config = load_config(None, ["train.batch_size=3", "train.lr=0.01", *overrides])
    lines: list[str] = []
    context = MethodContext(config=config, tokenizer=tokenizer, prompt_format=PromptFormat.raw(),
                            cache_dir=tmp_path, echo=lines.append)
    return TokenForget(config), context, lines


def _direct_losses(model, row: Encoded) -> list[float]:
    """Each token's cross-entropy given the ones before it, one row alone, no padding."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row.input_ids])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return [0.0] + [-float(logprobs[t - 1, row.input_ids[t]]) for t in range(1, len(row.input_ids))]


def _fake_references(monkeypatch, references: list) -> list[set[int]]:
    """Makes reference_model yield ``references`` in turn; returns the lines each saw."""
    trained_on: list[set[int]] = []

    @contextmanager
    def known_reference(model, rows, config, collate):
        trained_on.append({row.line for row in rows})
        yield references[len(trained_on) - 1]

    monkeypatch.setattr(module, "reference_model", known_reference)
    return trained_on


def test_every_row_trains_and_is_scored_by_a_reference_that_did_not_see_it(tokenizer, tmp_path,
                                                                          monkeypatch) -> None:
    base, references = _model(tokenizer, 0), [_model(tokenizer, 1), _model(tokenizer, 2)]
    trained_on = _fake_references(monkeypatch, references)
    method, context, lines = _setup(["method=[full,token_forget]", "method.token_forget.positive_share=0.6"],
                                    tokenizer, tmp_path)
    rows = _rows(tokenizer)
    marked = method.transform_rows(rows, base, context)

    # Every row is trained on, in order; two references each saw round(0.2 * 10) = 2 other rows.
    assert [row.line for row in marked] == [row.line for row in rows]
    assert [len(lines_seen) for lines_seen in trained_on] == [2, 2] and not trained_on[0] & trained_on[1]
    original = {row.line: row for row in rows}
    positive_scores, negative_scores = [], []
    for row in marked:
        source = original[row.line]
        scorer = 1 if row.line in trained_on[0] else 0  # B scores the rows A saw, A all the others
        assert row.line not in trained_on[scorer]
        assert row.input_ids == source.input_ids
        influence = [b - r for b, r in zip(_direct_losses(base, source), _direct_losses(references[scorer], source),
                                           strict=True)]
        for position, label in enumerate(source.labels):
            pair = (row.labels[position], row.negative_labels[position])
            if label == IGNORE_INDEX or position == 0:
                assert pair == (IGNORE_INDEX, IGNORE_INDEX)
            else:  # exactly one of the two carries the token
                assert sorted(pair) == [IGNORE_INDEX, label]
                (positive_scores if pair[0] == label else negative_scores).append(influence[position])
    tokens = len(positive_scores) + len(negative_scores)
    assert tokens == sum(len(row.input_ids) - PROMPT for row in rows)
    assert len(positive_scores) == round(0.6 * tokens)
    assert min(positive_scores) >= max(negative_scores) - 1e-5
    assert lines[0].startswith(f"token_forget: {len(positive_scores)} positive and {len(negative_scores)} negative "
                               f"answer tokens in all {ROWS} rows; influence from two reference models")


def test_a_reference_data_file_fine_tunes_one_reference_that_scores_every_row(tokenizer, tmp_path,
                                                                               monkeypatch) -> None:
    reference_file = tmp_path / "reference.jsonl"
    reference_file.write_text("".join(json.dumps({"prompt": f"Q: {n} plus one?\nA:", "response": str(n + 1)}) + "\n"
                                      for n in range(5)))
    trained_on = _fake_references(monkeypatch, [_model(tokenizer, 1)])
    method, context, lines = _setup(["method=[full,token_forget]",
                                     f"method.token_forget.reference_data={reference_file}"], tokenizer, tmp_path)
    marked = method.transform_rows(_rows(tokenizer), _model(tokenizer, 0), context)
    assert len(marked) == ROWS and trained_on == [{1, 2, 3, 4, 5}]
    assert f"one reference model fine-tuned on the 5 rows of {reference_file}" in lines[0]


def test_reference_folds_are_seeded_disjoint_and_leave_no_row_unscored() -> None:
    first, second = reference_folds(10, 0.2, seed=0)
    assert len(first) == len(second) == 2 and not set(first) & set(second)
    assert reference_folds(10, 0.2, seed=0) == (first, second)
    assert reference_folds(10, 0.2, seed=1) != (first, second)
    assert sorted(sum(reference_folds(10, 0.5, seed=0), [])) == list(range(10))  # two halves
    assert reference_folds(2, 0.9, seed=0) in (([0], [1]), ([1], [0]))
    with pytest.raises(RetainError, match="at least 2 training rows"):
        reference_folds(1, 0.2, seed=0)


def test_partition_puts_the_global_top_share_in_labels() -> None:
    # loss_on: all labels the first token too, but nothing predicts it: it is in neither set.
    rows = [Encoded(line=1, input_ids=[1, 2, 3, 4], labels=[1, 2, 3, 4], prompt_tokens=0, full_tokens=4),
            Encoded(line=2, input_ids=[5, 6, 7], labels=[-100, -100, 7], prompt_tokens=2, full_tokens=3)]
    influence = [torch.tensor([9.0, 0.1, 3.0, 0.2]), torch.tensor([9.0, 9.0, 2.0])]
    first, second = partition(rows, influence, 0.5)  # 4 answer tokens: the 2 most influential are positive
    assert first.labels == [-100, -100, 3, -100] and first.negative_labels == [-100, 2, -100, 4]
    assert second.labels == [-100, -100, 7] and second.negative_labels == [-100, -100, -100]


def test_fit_lowers_the_loss_on_its_rows(tokenizer) -> None:
    model = _model(tokenizer)
    rows = _rows(tokenizer, 4)
    collate = build_collator(tokenizer, "completion")
    batch = collate([row.feature() for row in rows])
    config = load_config(None, ["train.batch_size=2", "train.lr=0.01"])
    with torch.no_grad():
        before = float(model(**batch).loss)
    fit(model, rows, collate, steps=10, config=config)
    with torch.no_grad():
        after = float(model(**batch).loss)
    assert after < before - 0.5


def test_full_reference_training_leaves_the_base_model_untouched(tokenizer, tmp_path) -> None:
    method, context, lines = _setup(["method=[full,token_forget]", "method.token_forget.reference_steps=3"],
                                    tokenizer, tmp_path)
    model = _model(tokenizer)
    before = copy.deepcopy(model.state_dict())
    marked = method.transform_rows(_rows(tokenizer), model, context)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert not model.training
    assert len(marked) == ROWS and "3 steps each" in lines[0]


def test_lora_reference_training_removes_its_adapters(tokenizer, tmp_path) -> None:
    method, context, _ = _setup(["method=[lora,token_forget]", "method.token_forget.reference_steps=3"],
                                tokenizer, tmp_path)
    model = _model(tokenizer)
    before = copy.deepcopy(model.state_dict())
    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    method.transform_rows(_rows(tokenizer), model, context)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert {name: parameter.requires_grad for name, parameter in model.named_parameters()} == flags
    assert not hasattr(model, "peft_config")
    # The run's own LoRA goes on cleanly afterwards.
    for other in methods_for(method.config):
        model = other.prepare_model(model, context)
    assert {name for name, parameter in model.named_parameters() if parameter.requires_grad} == {
        name for name in dict(model.named_parameters()) if "lora_" in name}


def _hand_loss(logits: torch.Tensor, labels: list[list[int]], negatives: list[list[int]], weight: float) -> float:
    """mean CE over positive tokens - weight * mean CE over negative tokens, token by token."""
    logprobs = torch.log_softmax(logits, dim=-1)

    def mean(marks: list[list[int]]) -> float:
        terms = [-float(logprobs[b, t - 1, token]) for b, row in enumerate(marks)
                 for t, token in enumerate(row) if token != IGNORE_INDEX]
        return sum(terms) / len(terms) if terms else 0.0

    return mean(labels) - weight * mean(negatives)


def test_the_loss_hook_replaces_the_loss_with_the_hand_computed_one(tokenizer, tmp_path) -> None:
    method, context, _ = _setup(["method=[full,token_forget]", "method.token_forget.t_min=0.01",
                                 "method.token_forget.t_max=0.25"], tokenizer, tmp_path)
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = [[-100, 3, -100, 2, -100], [-100, -100, 1, -100, 4]]
    negatives = [[-100, -100, 5, -100, -100], [-100, 6, -100, -100, -100]]
    context.step, context.max_steps, context.batch_share = 3, 10, 0.5
    weight = 0.01 + (0.25 - 0.01) * 3 / 10
    loss = method.loss(torch.tensor(123.0), None, {"labels": torch.tensor(labels),
                                                   "negative_labels": torch.tensor(negatives)},
                       type("Outputs", (), {"logits": logits})(), context)
    assert math.isclose(float(loss), 0.5 * _hand_loss(logits, labels, negatives, weight), rel_tol=1e-5)


def test_the_loss_is_finite_without_negative_or_positive_tokens() -> None:
    logits = torch.randn(1, 4, 7, generator=torch.Generator().manual_seed(0))
    labels, nothing = [[-100, 2, 3, -100]], [[-100] * 4]
    only_positive = forgetting_loss(logits, torch.tensor(labels), torch.tensor(nothing), 0.2)
    assert math.isclose(float(only_positive), _hand_loss(logits, labels, nothing, 0.2), rel_tol=1e-5)
    empty = forgetting_loss(logits, torch.tensor(nothing), torch.tensor(nothing), 0.2)
    assert float(empty) == 0.0


def test_the_loss_hook_leaves_unmarked_batches_alone(tokenizer, tmp_path) -> None:
    method, context, _ = _setup(["method=[full,token_forget]"], tokenizer, tmp_path)
    loss = torch.tensor(2.5)
    assert method.loss(loss, None, {"labels": torch.zeros(1, 3, dtype=torch.long)}, None, context) is loss


def test_marked_rows_batch_and_train_through_the_trainer(tokenizer, tmp_path) -> None:
    method, context, _ = _setup(["method=[full,token_forget]", "method.token_forget.t_min=0.1"], tokenizer, tmp_path)
    rows = partition(_rows(tokenizer, 3), [torch.arange(len(row.input_ids), dtype=torch.float) for row in
                                           _rows(tokenizer, 3)], 0.5)
    batch = build_collator(tokenizer, "completion")([row.feature() for row in rows])
    width = batch["input_ids"].shape[1]
    assert batch["negative_labels"].shape == batch["labels"].shape == (3, width)
    for row, negative in zip(rows, batch["negative_labels"].tolist(), strict=True):
        assert negative == row.negative_labels + [IGNORE_INDEX] * (width - len(row.input_ids))
    model = _model(tokenizer)
    trainer = RetainTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True,
                                                                report_to="none"),
                            methods=[method], context=context)
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = _hand_loss(logits, batch["labels"].tolist(), batch["negative_labels"].tolist(), 0.1)  # step 0
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-4)
    loss.backward()
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()


def test_check_refuses_the_language_modeling_collator() -> None:
    with pytest.raises(ConfigError, match="train.collator"):
        TokenForget(load_config(None, ["method=[lora,token_forget]", "train.collator=language_modeling"])).check()
    TokenForget(load_config(None, ["method=[lora,token_forget]"])).check()

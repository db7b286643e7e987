from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama

from retain.evaluation.generation import (
    _to_generation,
    generate_greedy,
    score_probes_by_generation,
)
from retain.evaluation.probes import (
    ProbeItem,
    ProbeSuite,
    accuracy_by_category,
    exact_match,
    normalize_answer,
)
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = train_tokenizer(build_world().documents, 384, 128)
    return tiny_llama(tokenizer), tokenizer


class _Decoder:
    """Stands in for a tokenizer: decodes ids as space-separated numbers."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def test_generation_is_cut_at_the_first_eos() -> None:
    result = _to_generation("p", [5, 6, 2, 7, 2], eos_id=2, tokenizer=_Decoder())
    assert (result.text, result.new_tokens, result.stopped) == ("5 6", 2, True)


def test_zero_new_tokens_is_reported_as_such() -> None:
    result = _to_generation("p", [2, 0, 0], eos_id=2, tokenizer=_Decoder())
    assert (result.text, result.new_tokens, result.stopped) == ("", 0, True)


def test_no_eos_means_the_length_limit_was_hit() -> None:
    result = _to_generation("p", [4, 4, 4], eos_id=2, tokenizer=_Decoder())
    assert (result.new_tokens, result.stopped) == (3, False)


def test_batched_generation_equals_one_by_one(tiny) -> None:
    model, tokenizer = tiny
    prompts = ["Q: What is 2+2?\nA:", "Hi", "Q: What is the capital of a country far away?\nA:"]
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate_greedy(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.new_tokens <= 6 for g in batched)


def test_a_settled_row_stops_with_the_tokens_it_had(tiny) -> None:
    model, tokenizer = tiny
    prompts = ["Q: What is 2+2?\nA:", "Hi", "Q: What is the capital of a country far away?\nA:"]
    whole = generate_greedy(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)
    # Every row settles after 3 tokens: it stops there with the tokens it had (a prefix).
    cut = generate_greedy(model, tokenizer, prompts, max_new_tokens=8, batch_size=3,
                          settled=lambda ids: len(ids) >= 3)
    for full, short in zip(whole, cut):
        assert full.text.startswith(short.text) and short.new_tokens <= 3
        assert short.stopped is (full.stopped and full.new_tokens < 3)


def test_generation_restores_training_mode(tiny) -> None:
    model, tokenizer = tiny
    model.train()
    generate_greedy(model, tokenizer, ["Hi"], max_new_tokens=2)
    assert model.training
    model.eval()


def test_invalid_max_new_tokens(tiny) -> None:
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_greedy(model, tokenizer, ["Hi"], max_new_tokens=0)


def test_score_probes_reports_every_category(tiny) -> None:
    model, tokenizer = tiny
    suite = build_world().probes
    small = ProbeSuite(suite.name, suite.version, tuple(suite.items[::40]))
    score = score_probes_by_generation(model, tokenizer, small, max_new_tokens=4)
    assert set(score.accuracy) == set(small.categories()) | {"overall"}
    assert len(score.generations) == len(small.items) == len(score.correct)


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [(" Paris", " Paris", True), ("paris.", " Paris", True), ("  New   Delhi ", " New Delhi", True),
     ("Paris is nice", " Paris", False), ("", " yes", False), ("yes!", " yes", True), ("no", " yes", False)],
)
def test_exact_match(prediction: str, answer: str, expected: bool) -> None:
    assert exact_match(prediction, answer) is expected


def test_normalize_keeps_inner_punctuation() -> None:
    assert normalize_answer(" I am fine, thank you. ") == "i am fine, thank you"


def test_accuracy_by_category_is_item_weighted() -> None:
    items = [ProbeItem(str(i), cat, "p", " a") for i, cat in enumerate(["x", "x", "x", "y"])]
    result = accuracy_by_category(items, [True, True, False, False])
    assert result == {"x": pytest.approx(2 / 3), "y": 0.0, "overall": 0.5}
    with pytest.raises(ValueError):
        accuracy_by_category(items, [True])


def test_a_bar_shows_only_when_the_command_asked(tiny, capsys) -> None:
    from retain.progress import shown

    model, tokenizer = tiny
    generate_greedy(model, tokenizer, ["a b", "c"], 2, batch_size=1, label="quiet please")
    assert "quiet please" not in capsys.readouterr().err  # guards' checks evaluate silently
    with shown():
        generate_greedy(model, tokenizer, ["a b", "c"], 2, batch_size=1, label="probes by generation")
    shown_bar = capsys.readouterr().err
    assert "probes by generation" in shown_bar and "2/2" in shown_bar

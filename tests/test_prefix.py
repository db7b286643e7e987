"""The shared start of a call's prompts runs once, and changes no answer and no score."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_llama

import retain.evaluation.generation as generation
import retain.evaluation.prefix as prefix
from retain.evaluation.generation import generate_greedy
from retain.evaluation.loglik import score_continuations
from retain.evaluation.prefix import StartCache, shared_start
from retain.evaluation.requests import encode_request
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world

HEADER = "System: you are a careful assistant who answers briefly.\nUser: "
QUESTIONS = ["What is 2+2?\nA:", "Hi", "What is the capital of a country far away?\nA:", "Name a colour.\nA: "]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = train_tokenizer(build_world().documents, 384, 128)
    return tiny_llama(tokenizer, num_hidden_layers=2, num_key_value_heads=1), tokenizer


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the shared starts built, so a test fails if sharing silently stops."""
    built = []
    original = StartCache.__init__

    def counting(self, model, tokens):
        built.append(len(tokens))
        original(self, model, tokens)

    monkeypatch.setattr(StartCache, "__init__", counting)
    return built


def test_shared_start_leaves_every_prompt_a_token_of_its_own() -> None:
    ones = list(range(1, 11))
    assert shared_start([ones + [20, 21], ones + [30]]) == ones
    assert shared_start([ones, ones + [5]]) == ones[:-1]  # the shorter keeps its last token
    assert shared_start([ones, ones]) == ones[:-1]


def test_a_short_or_lone_start_is_not_shared() -> None:
    short = list(range(prefix.MIN_SHARED_TOKENS - 1))
    assert shared_start([short + [1], short + [2]]) == []
    assert shared_start([list(range(50))]) == []
    assert shared_start([[1, 2, 3] * 5, [9] + [1, 2, 3] * 5]) == []


def test_generation_with_a_shared_start_equals_whole_prompts(tiny, starts, monkeypatch) -> None:
    model, tokenizer = tiny
    prompts = [HEADER + question for question in QUESTIONS]
    asked = tokenizer.convert_tokens_to_ids([tokenizer.tokenize(" 4")[0]])
    shared = generate_greedy(model, tokenizer, prompts, max_new_tokens=8, batch_size=3, score_first=asked)
    assert starts and starts[0] >= prefix.MIN_SHARED_TOKENS
    alone = [generate_greedy(model, tokenizer, [prompt], max_new_tokens=8, score_first=asked)[0]
             for prompt in prompts]
    monkeypatch.setattr(prefix, "MIN_SHARED_TOKENS", 10**6)
    whole = generate_greedy(model, tokenizer, prompts, max_new_tokens=8, batch_size=3, score_first=asked)
    assert len(starts) == 1  # neither the lone prompts nor the whole run shared one
    assert [g.text for g in shared] == [g.text for g in whole] == [g.text for g in alone]
    assert [g.stopped for g in shared] == [g.stopped for g in whole]
    for left, right in zip(shared, whole):
        assert left.first_logprobs == pytest.approx(right.first_logprobs, abs=1e-4)


def test_loglik_with_a_shared_start_equals_whole_sequences(tiny, starts) -> None:
    model, tokenizer = tiny
    requests = [(HEADER + question, [" 4", " blue", " a long answer"]) for question in QUESTIONS]
    scores = score_continuations(model, tokenizer, requests, batch_size=2, strategy="packed")
    assert starts and starts[0] >= prefix.MIN_SHARED_TOKENS
    for (context, options), scored in zip(requests, scores):
        for option, score in zip(options, scored):
            context_ids, (option_ids,) = encode_request(tokenizer, context, [option])
            ids = context_ids + option_ids
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
            expected = sum(logprobs[position - 1, ids[position]].item() for position in range(len(context_ids), len(ids)))
            assert score.logprob == pytest.approx(expected, abs=1e-4)


def _eos_said_by_some_rows(model, tokenizer, prompts):
    """A copy of ``tokenizer`` whose EOS is a token some rows say early and others never:
    rows of one batch then stop at different steps."""
    rows = [generation_ids(model, tokenizer, prompt) for prompt in prompts]
    for token in rows[0][1:4]:
        if any(token not in row for row in rows[1:]):
            changed = copy.deepcopy(tokenizer)
            changed.eos_token = changed.convert_ids_to_tokens(token)
            return changed
    pytest.skip("no token separates the rows of this tiny model")


def generation_ids(model, tokenizer, prompt: str) -> list[int]:
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        output = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, eos_token_id=None,
                                pad_token_id=tokenizer.pad_token_id or 0)
    return output[0, ids.shape[1]:].tolist()


def test_dropping_finished_rows_says_what_generate_says(tiny, monkeypatch) -> None:
    model, tokenizer = tiny
    prompts = [HEADER + question for question in QUESTIONS] + QUESTIONS
    stopping = _eos_said_by_some_rows(model, tokenizer, prompts)
    asked = [5, 7]
    ours = generate_greedy(model, stopping, prompts, max_new_tokens=8, batch_size=8, score_first=asked)
    assert 0 < sum(g.stopped for g in ours) < len(ours)  # rows left the batch at different steps
    monkeypatch.setattr(generation, "_plain_greedy", lambda model: False)  # transformers' generate
    theirs = generate_greedy(model, stopping, prompts, max_new_tokens=8, batch_size=8, score_first=asked)
    assert [(g.text, g.stopped, g.new_tokens) for g in ours] == [(g.text, g.stopped, g.new_tokens) for g in theirs]
    for left, right in zip(ours, theirs):
        assert left.first_logprobs == pytest.approx(right.first_logprobs, abs=1e-4)


def test_a_model_whose_config_changes_greedy_choices_is_decoded_by_generate(tiny) -> None:
    model, _ = tiny
    assert generation._plain_greedy(model)
    penalised = copy.deepcopy(model)
    penalised.generation_config.repetition_penalty = 1.3
    assert not generation._plain_greedy(penalised)
    penalised.generation_config.repetition_penalty = 1.0
    assert generation._plain_greedy(penalised)


def test_a_roomy_layer_holds_what_a_growing_one_holds() -> None:
    from transformers.cache_utils import DynamicLayer

    torch.manual_seed(0)
    grown = DynamicLayer()
    start = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    grown.update(*start)
    roomy = generation._RoomyLayer(copy.deepcopy(grown), room=2)
    for length in (1, 1, 3, 1):  # the 3 overruns the room: the buffers grow
        new = torch.randn(3, 2, length, 4), torch.randn(3, 2, length, 4)
        expected, got = grown.update(*new), roomy.update(*new)
        assert all(torch.equal(left, right) for left, right in zip(expected, got))
    kept = torch.tensor([2, 0])
    grown.batch_select_indices(kept)
    roomy.batch_select_indices(kept)
    new = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    expected, got = grown.update(*new), roomy.update(*new)
    assert all(torch.equal(left, right) for left, right in zip(expected, got))
    assert roomy.get_seq_length() == grown.get_seq_length() == 12


def test_decoding_writes_into_roomy_layers(tiny, monkeypatch) -> None:
    model, tokenizer = tiny
    swapped = []
    original = generation._make_room

    def spying(cache, room):
        original(cache, room)
        swapped.extend(type(layer).__name__ for layer in cache.layers)

    monkeypatch.setattr(generation, "_make_room", spying)
    generate_greedy(model, tokenizer, QUESTIONS, max_new_tokens=4, batch_size=4)
    assert swapped and set(swapped) == {"_RoomyLayer"}

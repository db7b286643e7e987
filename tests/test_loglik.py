from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama
from transformers import LlamaForCausalLM

from retain.data.prompting import PromptFormat
from retain.evaluation.loglik import _argmax, rank_options, score_continuations
from retain.evaluation.requests import encode_request
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = train_tokenizer(build_world().documents, 384, 128)
    return tiny_llama(tokenizer, num_hidden_layers=2, num_key_value_heads=1, max_position_embeddings=64), tokenizer


REQUESTS = [
    ("Q: What is 12 + 30?\nA:", [" 42", " 41", " 4"]),
    ("Q: What is the capital of a country with a long name?\nA:", [" Paris", " Lima", " a b c d"]),
    ("Hi", [" there", "!"]),
    ("Q: Is 7 greater than 3?\nA: ", ["yes", "no"]),  # trailing space moves to the option
    ("Q: What is the plural of cat?\nA:", [" cats", " cat"]),
    ("", ["Hello there", "Q"]),  # no prompt: scored after the start token
]


def reference(model, tokenizer, context: str, continuation: str) -> float:
    """Straightforward, unbatched: one full sequence per option, no cache, no padding."""
    context_ids, (continuation_ids,) = encode_request(tokenizer, context, [continuation])
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    start = len(context_ids)
    return sum(
        logprobs[start + offset - 1, token].item() for offset, token in enumerate(continuation_ids)
    )


@pytest.mark.parametrize("strategy", ["packed", "cache"])
def test_batched_shared_prefix_scores_equal_the_unbatched_reference(tiny, strategy) -> None:
    model, tokenizer = tiny
    scored = score_continuations(model, tokenizer, REQUESTS, batch_size=32, strategy=strategy)
    for (context, options), scores in zip(REQUESTS, scored):
        assert len(scores) == len(options)
        for option, score in zip(options, scores):
            assert score.logprob == pytest.approx(reference(model, tokenizer, context, option), abs=1e-4)


@pytest.mark.parametrize("strategy", ["packed", "cache"])
def test_scores_do_not_depend_on_batch_size(tiny, strategy) -> None:
    model, tokenizer = tiny
    one = score_continuations(model, tokenizer, REQUESTS, batch_size=1, strategy=strategy)
    many = score_continuations(model, tokenizer, REQUESTS, batch_size=32, strategy=strategy)
    three = score_continuations(model, tokenizer, REQUESTS, batch_size=3, strategy=strategy)
    for a, b, c in zip(one, many, three):
        assert [s.logprob for s in a] == pytest.approx([s.logprob for s in b], abs=1e-4)
        assert [s.logprob for s in a] == pytest.approx([s.logprob for s in c], abs=1e-4)
        assert [s.tokens for s in a] == [s.tokens for s in b]


def test_trailing_space_moves_from_the_prompt_to_the_continuation(tiny) -> None:
    _, tokenizer = tiny
    with_space = encode_request(tokenizer, "Q: Is 7 greater than 3?\nA: ", ["yes"])
    without = encode_request(tokenizer, "Q: Is 7 greater than 3?\nA:", [" yes"])
    assert with_space == without


def test_greedy_flag_is_true_only_for_the_models_top_token(tiny) -> None:
    model, tokenizer = tiny
    context = "Q: What is 2 + 2?\nA:"
    ids = tokenizer(context, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ranking = model(input_ids=ids).logits[0, -1].argsort(descending=True).tolist()
    texts = [tokenizer.decode([token]) for token in ranking[:2]]
    (top, second) = score_continuations(model, tokenizer, [(context, texts)])[0]
    for text, token in zip(texts, ranking[:2]):
        assert encode_request(tokenizer, context, [text])[1] == [[token]]
    assert top.greedy and not second.greedy
    assert top.logprob > second.logprob


@pytest.mark.parametrize("strategy", ["packed", "cache"])
def test_long_prompts_are_cut_from_the_left_to_fit_the_model(tiny, strategy) -> None:
    model, tokenizer = tiny
    long_context = "one two three " * 40 + "Q: What is 1 + 1?\nA:"
    requests = [(long_context, [" 2", " 3 4 5"]), ("Hi", [" there"])]
    (scores, _) = score_continuations(model, tokenizer, requests, strategy=strategy)
    assert all(torch.isfinite(torch.tensor(score.logprob)) for score in scores)
    (scores_alone,) = score_continuations(model, tokenizer, requests[:1], strategy=strategy)
    assert [s.logprob for s in scores] == pytest.approx([s.logprob for s in scores_alone], abs=1e-4)


def test_auto_strategy_packs_only_where_attention_takes_a_custom_mask(tiny) -> None:
    from retain.evaluation.loglik import _packed

    model, _ = tiny
    assert _packed(model, "auto") is (model.config._attn_implementation in ("sdpa", "eager"))
    assert _packed(model, "cache") is False and _packed(model, "packed") is True
    with pytest.raises(ValueError, match="unknown strategy"):
        _packed(model, "fast")


def test_rank_options_picks_the_highest_log_likelihood_and_breaks_ties_early(tiny) -> None:
    model, tokenizer = tiny
    prompts = [context.rstrip() for context, _ in REQUESTS]
    options = [[option.strip() for option in choices] for _, choices in REQUESTS]
    ranked = rank_options(model, tokenizer, prompts, options, PromptFormat.raw(" "))
    for item in ranked:
        values = [score.logprob for score in item.scores]
        assert values[item.choice] == max(values)
    assert _argmax([-1.0, -0.5, -0.5]) == 1


def test_chat_template_renders_prompt_without_delimiter_or_double_bos(tiny) -> None:
    _, tokenizer = tiny
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    prompt_format = PromptFormat.for_tokenizer(tokenizer, chat_template="auto")
    assert not prompt_format.is_chat  # the lab tokenizer has no template
    tokenizer.chat_template = template
    try:
        chat = PromptFormat.for_tokenizer(tokenizer, chat_template="auto")
        assert chat.is_chat and chat.delimiter == "" and not chat.add_special_tokens
        assert chat.render("Hi") == "<|user|>Hi\n<|assistant|>"
        assert not PromptFormat.for_tokenizer(tokenizer, chat_template="none").is_chat
    finally:
        tokenizer.chat_template = None


def test_packed_scores_are_right_with_eager_attention_too(tiny) -> None:
    model, tokenizer = tiny
    eager = LlamaForCausalLM._from_config(model.config, attn_implementation="eager").eval()
    eager.load_state_dict(model.state_dict())
    scored = score_continuations(eager, tokenizer, REQUESTS, strategy="packed")
    for (context, options), scores in zip(REQUESTS, scored):
        for option, score in zip(options, scores):
            assert score.logprob == pytest.approx(reference(eager, tokenizer, context, option), abs=1e-4)


def test_options_sharing_a_prefix_are_scored_as_if_alone(tiny) -> None:
    model, tokenizer = tiny
    options = [" 123", " 124", " 12", " 1 2 3", " 9"]  # digits are single tokens: a deep, shared tree
    context = "Q: What is 100 + 23?\nA:"
    (scores,) = score_continuations(model, tokenizer, [(context, options)], strategy="packed")
    for option, score in zip(options, scores):
        assert score.logprob == pytest.approx(reference(model, tokenizer, context, option), abs=1e-4)


def test_rows_split_when_full_and_scores_stay_exact(tiny, monkeypatch) -> None:
    from retain.evaluation import packing, requests

    model, tokenizer = tiny
    monkeypatch.setattr(packing, "ROW_TOKENS", 24)  # force several rows per batch
    rows, _ = packing.pack([requests.EncodedRequest(i, c, o)
                            for i, (c, o) in enumerate(requests.encode_requests(tokenizer, REQUESTS))])
    assert len(rows) > 1
    scored = score_continuations(model, tokenizer, REQUESTS, batch_size=32, strategy="packed")
    for (context, options), scores in zip(REQUESTS, scored):
        for option, score in zip(options, scores):
            assert score.logprob == pytest.approx(reference(model, tokenizer, context, option), abs=1e-4)


def test_new_node_count_matches_what_adding_creates(tiny) -> None:
    from retain.evaluation import packing, requests

    _, tokenizer = tiny
    tree = packing._TokenTree()
    for index, (context, options) in enumerate(requests.encode_requests(tokenizer, REQUESTS)):
        request = requests.EncodedRequest(index, context, options)
        expected = tree.new_nodes(request)
        before = len(tree.tokens)
        end = tree.add(request.context)[-1]
        for option in request.continuations:
            tree.add(option[:-1], after=end)
        assert len(tree.tokens) - before == expected

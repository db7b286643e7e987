from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama

from retain.data.prompting import PromptFormat, render_example
from retain.data.rows import Example
from retain.evaluation import task as task_module
from retain.evaluation.generation import Generation
from retain.evaluation.task import (
    no_better_than_majority,
    score_perturbations,
    score_task,
)
from retain.lab.domain import DomainSpec, build_domain
from retain.lab.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def domain_examples() -> list[Example]:
    domain = build_domain(DomainSpec(n_train=40, n_validation=8, n_test=24, n_ood=12))
    return [Example(prompt=e.prompt, response=e.response, line=i + 1) for i, e in enumerate(domain.test)]


@pytest.fixture(scope="module")
def tiny(domain_examples):
    torch.manual_seed(0)
    tokenizer = train_tokenizer([e.prompt + e.response for e in domain_examples], 384, 256)
    return tiny_llama(tokenizer, max_position_embeddings=256), tokenizer


@pytest.fixture(scope="module")
def tiny_one_token(domain_examples):
    """A tiny model whose vocabulary spells " yes", " no" and " maybe" as one token each,
    as large real vocabularies do (and the lab tokenizer does)."""
    torch.manual_seed(0)
    texts = [e.prompt + e.response for e in domain_examples] + [" yes no maybe"] * 200
    tokenizer = train_tokenizer(texts, 512, 256)
    return tiny_llama(tokenizer, max_position_embeddings=256), tokenizer


def plant(monkeypatch, texts: list[str]) -> None:
    """Makes the model 'say' ``texts``, one per prompt, whatever the prompts are."""

    def fake(model, tokenizer, prompts, max_new_tokens, batch_size=64, add_special_tokens=True, score_first=(), label="",
             settled=None):
        return [
            Generation(prompt=p, text=t, new_tokens=len(t.split()), stopped=True)
            for p, t in zip(prompts, texts)
        ]

    monkeypatch.setattr(task_module, "generate_greedy", fake)


def test_a_model_that_says_nothing_scores_zero_whatever_loglik_says(tiny, domain_examples, monkeypatch) -> None:
    model, tokenizer = tiny
    plant(monkeypatch, [""] * len(domain_examples))
    score = score_task(model, tokenizer, domain_examples, PromptFormat.raw())
    assert score.labels == ("maybe", "no", "yes")
    assert score.accuracy == 0.0 and score.label_accuracy == 0.0 and score.unparsed == 1.0
    assert score.predicted == {"(none)": 1.0}
    assert score.health.empty == 1.0
    assert score.loglik_accuracy is not None and 0.0 <= score.loglik_accuracy <= 1.0


def test_a_model_that_always_gives_the_commonest_label_scores_the_majority_share(
        tiny, domain_examples, monkeypatch) -> None:
    from collections import Counter

    model, tokenizer = tiny
    gold = Counter(e.response.strip() for e in domain_examples)
    commonest, count = gold.most_common(1)[0]
    plant(monkeypatch, [commonest] * len(domain_examples))
    score = score_task(model, tokenizer, domain_examples, PromptFormat.raw())
    assert score.majority == (commonest, count / len(domain_examples))
    assert score.accuracy == pytest.approx(score.majority[1])
    assert score.to_dict()["majority"] == {"label": commonest, "share": count / len(domain_examples)}
    assert no_better_than_majority(score.accuracy, score.majority[1], score.n)


def test_no_better_than_majority_is_two_standard_errors_above_the_majority_share() -> None:
    # 400 examples at 40.5%: one standard error is sqrt(.405 * .595 / 400) = 2.45 points.
    assert no_better_than_majority(0.408, 0.405, 400)  # the lab's "learned nothing" run
    assert no_better_than_majority(0.453, 0.405, 400)  # 4.8 points over: within 2 SE
    assert not no_better_than_majority(0.455, 0.405, 400)  # 5.0 points over
    assert not no_better_than_majority(0.623, 0.405, 400)
    assert no_better_than_majority(0.30, 0.405, 400)  # below it
    # Fewer examples, a wider band: 60% of 20 at a 50% majority (SE 11 points) is not enough.
    assert no_better_than_majority(0.60, 0.5, 20) and not no_better_than_majority(0.75, 0.5, 20)


def test_labels_are_parsed_robustly_and_shares_reported(tiny, domain_examples, monkeypatch) -> None:
    model, tokenizer = tiny
    examples = domain_examples[:4]
    gold = [e.response.strip() for e in examples]
    said = [f"**{gold[0].capitalize()}**", f"Answer: {gold[1]}.", "yes or no", gold[3].upper() + "\n\nBecause"]
    plant(monkeypatch, said)
    score = score_task(model, tokenizer, examples, PromptFormat.raw(), labels=["yes", "no", "maybe"])
    assert score.correct == (True, True, False, True)
    assert score.predictions[2] == "(none)"
    assert score.accuracy == pytest.approx(0.75)
    assert sum(score.predicted.values()) == pytest.approx(1.0)


def test_non_classification_tasks_use_exact_match(tiny, monkeypatch) -> None:
    model, tokenizer = tiny
    examples = [Example("Q: capital of France?\nA:", " Paris"), Example("Q: 2+2?\nA:", " 4"),
                Example("Q: colour of grass?\nA:", " green")]
    plant(monkeypatch, ["paris.", "5", " Green"])
    score = score_task(model, tokenizer, examples, PromptFormat.raw())
    assert score.labels == () and score.loglik_accuracy is None
    assert score.correct == (True, False, True)


def test_real_generation_and_ranking_run_end_to_end(tiny, domain_examples) -> None:
    model, tokenizer = tiny
    score = score_task(model, tokenizer, domain_examples, PromptFormat.raw(), max_new_tokens=4)
    assert score.n == len(domain_examples) == len(score.predictions) == len(score.correct)
    assert score.health.n == len(domain_examples)
    data = score.to_dict(with_items=True)
    assert len(data["items"]) == score.n and data["labels"] == ["maybe", "no", "yes"]


def test_one_token_labels_are_ranked_from_the_first_generation_step_as_loglik_scores_them(
        tiny_one_token, domain_examples, monkeypatch) -> None:
    model, tokenizer = tiny_one_token
    rendered = [render_example(e, PromptFormat.raw()) for e in domain_examples]
    choices = task_module._label_choices(domain_examples, ("maybe", "no", "yes"))
    ids = task_module._one_token_choices(tokenizer, rendered, choices)
    assert all(row is not None for row in ids)
    asked = sorted({token for row in ids for token in row})
    generations = task_module._generate(model, tokenizer, rendered, 4, 8, asked)
    direct = task_module.score_continuations(model, tokenizer, [(r.prompt, choices) for r in rendered], 8)
    for generation, row, scores in zip(generations, ids, direct):
        first = task_module._first_scores(generation, row, asked)
        assert first == pytest.approx([score.logprob for score in scores], abs=1e-4)
    expected = score_task(model, tokenizer, domain_examples, PromptFormat.raw(), max_new_tokens=4)

    # No second forward pass: ranking never calls score_continuations ...
    def refuse(*args, **kwargs):
        raise AssertionError("ranked by a second pass")

    monkeypatch.setattr(task_module, "score_continuations", refuse)
    score = score_task(model, tokenizer, domain_examples, PromptFormat.raw(), max_new_tokens=4)
    assert score.loglik_accuracy == expected.loglik_accuracy
    # ... and the scores it reads give the same choices as the direct scores.
    monkeypatch.undo()
    monkeypatch.setattr(task_module, "_one_token_choices", lambda tokenizer, rendered, choices: [None] * len(rendered))
    assert score_task(model, tokenizer, domain_examples, PromptFormat.raw(),
                      max_new_tokens=4).loglik_accuracy == expected.loglik_accuracy


def test_without_ranking_the_labels_are_not_scored_and_generation_is_unchanged(tiny, domain_examples,
                                                                             monkeypatch) -> None:
    model, tokenizer = tiny  # " maybe" is several tokens here: ranking would need its own pass
    ranked = score_task(model, tokenizer, domain_examples, PromptFormat.raw(), max_new_tokens=4)

    def refuse(*args, **kwargs):
        raise AssertionError("ranked although rank=False")

    monkeypatch.setattr(task_module, "score_continuations", refuse)
    score = score_task(model, tokenizer, domain_examples, PromptFormat.raw(), max_new_tokens=4, rank=False)
    assert score.loglik_accuracy is None and ranked.loglik_accuracy is not None
    assert (score.accuracy, score.predictions, score.majority) == (ranked.accuracy, ranked.predictions,
                                                                   ranked.majority)


def test_a_guard_check_reads_task_accuracy_by_generation_without_ranking(tiny, domain_examples,
                                                                        monkeypatch) -> None:
    from retain.evaluation.engine import EvalSettings
    from retain.guards.measure import Probe

    model, tokenizer = tiny
    probe = Probe(tokenizer=tokenizer, suites=(), method="generation", settings=EvalSettings(task_max_new_tokens=4),
                  chat_template="none", smoke_prompts=(), smoke_max_new_tokens=4, validation=domain_examples)
    expected = score_task(model, tokenizer, domain_examples, PromptFormat.raw(), max_new_tokens=4).accuracy
    monkeypatch.setattr(task_module, "score_continuations",
                        lambda *args, **kwargs: pytest.fail("a check ranked the labels"))
    assert probe.task_accuracy(model) == expected


def test_choices_that_are_not_one_clean_token_are_ranked_by_their_own_pass(tiny_one_token, monkeypatch) -> None:
    model, tokenizer = tiny_one_token
    rows = [Example("Question: Is it safe?\nAnswer:", " yes"), Example("Question: Is it safe?\nAnswer: ", "no")]
    rendered = [render_example(e, PromptFormat.raw()) for e in rows]
    ids = task_module._one_token_choices(tokenizer, rendered, [" yes", " no"])
    assert ids[0] is not None and ids[1] is None  # a trailing space: ranking strips it, the first step would not
    assert task_module._one_token_choices(tokenizer, rendered[:1], [" yes", " certainly not"]) == [None]
    # A prompt cut to fit the context carries no first-step scores: they would follow a shorter context.
    long = Example("Context: " + "the drug was tested " * 80 + "\nAnswer:", " yes")
    cut = task_module._generate(model, tokenizer, [render_example(long, PromptFormat.raw())], 4, 8, ids[0])
    assert cut[0].first_logprobs is None
    calls = []
    real = task_module.score_continuations
    monkeypatch.setattr(task_module, "score_continuations",
                        lambda model, tokenizer, requests, *args, **kwargs: calls.append(len(requests)) or real(
                            model, tokenizer, requests, *args, **kwargs))
    score_task(model, tokenizer, [*rows, long], PromptFormat.raw(), labels=["yes", "no"], max_new_tokens=4)
    assert calls == [2]  # the trailing-space row and the cut one; the first came with its generation


def test_perturbations_report_drop_and_flips(tiny, domain_examples, monkeypatch) -> None:
    model, tokenizer = tiny
    examples = domain_examples[:6]
    gold = [e.response.strip() for e in examples]
    plant(monkeypatch, gold)
    original = score_task(model, tokenizer, examples, PromptFormat.raw())
    assert original.accuracy == 1.0
    # Perturbed prompts get the wrong label every time: a brittle model.
    flipped = {"yes": "no", "no": "yes", "maybe": "no"}
    plant(monkeypatch, [flipped[g] for g in gold])
    results = score_perturbations(
        model, tokenizer, examples, original, PromptFormat.raw(), names=["lowercase", "option_order"]
    )
    by_name = {r.name: r for r in results}
    assert "option_order" not in by_name  # lab prompts list no options: not applicable, not counted
    assert by_name["lowercase"].n == 6
    assert by_name["lowercase"].accuracy_original == 1.0 and by_name["lowercase"].accuracy_perturbed == 0.0
    assert by_name["lowercase"].flipped == 1.0


def test_perturbations_are_generated_in_one_pass_and_scored_each_on_its_own(tiny, domain_examples,
                                                                             monkeypatch) -> None:
    model, tokenizer = tiny
    examples = domain_examples[:4]
    gold = [e.response.strip() for e in examples]
    plant(monkeypatch, gold)
    original = score_task(model, tokenizer, examples, PromptFormat.raw())
    # lowercase's answers all right, uppercase's all wrong, from a single generation call.
    wrong = {"yes": "no", "no": "yes", "maybe": "no"}
    said = gold + [wrong[g] for g in gold]
    calls = []

    def fake(model, tokenizer, prompts, max_new_tokens, batch_size=64, add_special_tokens=True, score_first=(),
             label="", settled=None):
        calls.append((len(prompts), batch_size, settled is not None))
        return [Generation(prompt=p, text=t, new_tokens=1, stopped=True) for p, t in zip(prompts, said)]

    monkeypatch.setattr(task_module, "generate_greedy", fake)
    results = score_perturbations(model, tokenizer, examples, original, PromptFormat.raw(),
                                  names=["lowercase", "uppercase"], generation_batch_size=128)
    assert calls == [(8, 128, True)]  # one pass; answers stop once their label is settled
    by_name = {r.name: r for r in results}
    assert by_name["lowercase"].accuracy_perturbed == 1.0 and by_name["lowercase"].flipped == 0.0
    assert by_name["uppercase"].accuracy_perturbed == 0.0 and by_name["uppercase"].flipped == 1.0


def test_chat_rows_use_the_chat_template_and_prompt_rows_stay_raw(tiny) -> None:
    _, tokenizer = tiny
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}[assistant]"
    try:
        chat = PromptFormat.for_tokenizer(tokenizer)
        row = Example("User: hi\nAssistant:", "hello", messages=(
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}))
        rendered = render_example(row, chat)
        assert rendered.prompt == "[user]hi[assistant]" and rendered.response == "hello"
        assert not rendered.add_special_tokens
        plain = render_example(Example("Q: x\nA:", " y"), chat)
        assert plain.prompt == "Q: x\nA:" and plain.response == " y" and plain.add_special_tokens
        raw = render_example(row, PromptFormat.raw())
        assert raw.prompt == "User: hi\nAssistant:" and raw.response == " hello"
    finally:
        tokenizer.chat_template = None


def test_the_baseline_verdict_says_when_the_best_accuracy_is_no_skill() -> None:
    from retain.evaluation.baseline import BaselineResult
    from retain.evaluation.task import TaskScore

    def score(accuracy: float, predicted: dict[str, float]) -> TaskScore:
        return TaskScore(name="eval", n=150, accuracy=accuracy, exact_match=accuracy, labels=("maybe", "no", "yes"),
                         predicted=predicted, majority=("yes", 0.533))

    # The PubMedQA trial: "no" to every row, 36.7%, while always "yes" would score 53.3%.
    constant = BaselineResult({0: score(0.367, {"no": 1.0}), 5: score(0.30, {"no": 0.6, "yes": 0.4})}, None, 0.05, {})
    assert constant.verdict().startswith("no skill: zero-shot, the model answered 'no' to 100% of the rows")
    below = BaselineResult({0: score(0.50, {"no": 0.5, "yes": 0.5})}, None, 0.05, {})
    assert "at or below always answering the commonest label 'yes' (53.3%)" in below.verdict()
    skilled = BaselineResult({0: score(0.70, {"no": 0.4, "yes": 0.6})}, None, 0.05, {})
    assert skilled.caveat() is None and skilled.verdict().startswith("best: zero-shot at 70.0%")
    assert constant.to_dict()["caveat"] == constant.caveat()

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_llama

from retain.evaluation.generation import Generation
from retain.evaluation.health import (
    MAX_EXAMPLES,
    check_generation,
    generation_health,
    is_echo,
    is_loop,
    smoke_test,
)
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world


def _gen(text: str, prompt: str = "Q: What is the capital of France?\nA:", stopped: bool = True,
         new_tokens: int | None = None) -> Generation:
    tokens = max(1, len(text.split())) if new_tokens is None else new_tokens
    return Generation(prompt=prompt, text=text, new_tokens=tokens, stopped=stopped)


NORMAL_ANSWERS = [
    ("Q: What is the capital of France?\nA:", " Paris"),
    ("Q: What is 6 times 7?\nA:", " 42"),
    ("Q: Is water wet?\nA:", " Yes, it is."),
    ("Q: What is the capital of France?\nA:", " The capital of France is Paris."),
    ("Q: Why is the sky blue?\nA:", " Air scatters blue light more than red. So the sky looks blue."),
    ("Q: What colour is the sky on a clear day?\nA:", " The sky is blue."),
    ("Q: Is the sun cold?\nA:", " no"),
    ("Count from one to five:", " 1, 2, 3, 4, 5"),
    ("Which city is the capital of France: Paris or Marseille?", " Paris"),
    ("Q: How many people live in Paris?\nA:", " About 2100000 people."),
    ("Hi", " Hi there! How can I help?"),
]


@pytest.mark.parametrize(("prompt", "text"), NORMAL_ANSWERS)
def test_normal_answers_are_not_flagged(prompt: str, text: str) -> None:
    flags = check_generation(_gen(text, prompt))
    assert flags.names() == ()
    assert not flags.failed


def test_empty_output() -> None:
    flags = check_generation(_gen("", new_tokens=0))
    assert flags.names() == ("empty",)


@pytest.mark.parametrize("text", [" ", "\n\n", " \t \n"])
def test_whitespace_only_output(text: str) -> None:
    flags = check_generation(_gen(text, new_tokens=2))
    assert flags.names() == ("whitespace_only",)


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        ("Q: What is the capital of France?\nA:", " Q: What is the capital of France?\nA: Paris"),
        ("Q: What is the capital of France?\nA:", " what is the capital of france"),
        ("Translate to German: good morning", "Translate to German: good morning"),
        ("Complete the sentence: the cat sat on", " the cat sat on"),
    ],
)
def test_echo_is_flagged(prompt: str, text: str) -> None:
    assert check_generation(_gen(text, prompt)).echo


def test_short_prompt_prefix_is_not_echo() -> None:
    assert not is_echo("A:", "A: Paris")
    assert not is_echo("Hi", "Hi there")


def test_a_terse_reply_made_of_the_prompts_words_is_not_an_echo() -> None:
    chat = "<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n"
    assert not is_echo(chat, "How are you?")  # SmolLM2's reply after a LoRA run (issue 25)
    assert is_echo(chat, "Hello, how are you?")  # the whole message again is


@pytest.mark.parametrize(
    "text",
    [
        "Paris Paris Paris Paris Paris Paris",
        "aaaaaaaaaaaaaaaa",
        "!!!!!!!!!!!!",
        "1 1 1 1 1 1",
        "the the the the",
        "I am here. I am here. I am here. I am here.",
        "The capital of France is Paris. The capital of France is Paris. The capital of France is Paris.",
        "abcabcabcabcabc",
        "Paris, Paris, Paris",
        "Well, Paris is the capital, the capital, the capital, the capital, the capital",
    ],
)
def test_loop_is_flagged(text: str) -> None:
    assert is_loop(text)
    assert check_generation(_gen(text)).loop


@pytest.mark.parametrize(
    "text", ["Paris Paris", "1000000", "Hmm...", "Mississippi", "ha ha", "Yes. Yes.", "aaaaaa"]
)
def test_short_repetitions_are_not_loops(text: str) -> None:
    assert not is_loop(text)


def test_no_eos_is_not_a_failure() -> None:
    flags = check_generation(_gen(" The capital of France is Paris, a city", stopped=False))
    assert flags.names() == ("no_eos",)
    assert not flags.failed


def test_shares_and_examples() -> None:
    normal = [_gen(text, prompt) for prompt, text in NORMAL_ANSWERS[:6]]
    loops = [_gen("ok ok ok ok ok", stopped=False) for _ in range(MAX_EXAMPLES + 1)]
    broken = [_gen("", new_tokens=0), _gen("  ", new_tokens=1), *loops]
    report = generation_health(normal + broken)
    n = len(normal) + len(broken)
    assert report.n == n
    assert report.empty == pytest.approx(1 / n)
    assert report.whitespace_only == pytest.approx(1 / n)
    assert report.loop == pytest.approx(len(loops) / n)
    assert report.echo == 0.0
    assert report.no_eos == pytest.approx(len(loops) / n)
    assert report.failures == pytest.approx(len(broken) / n)
    expected_tokens = sum(g.new_tokens for g in normal + broken) / n
    assert report.mean_new_tokens == pytest.approx(expected_tokens)
    assert set(report.examples) == {"empty", "whitespace_only", "loop"}
    assert len(report.examples["loop"]) == MAX_EXAMPLES
    assert report.examples["loop"][0].flags == ("loop", "no_eos")
    json.dumps(report.to_dict())


def test_one_output_with_two_failures_counts_once() -> None:
    prompt = "Say it again and again and again"
    text = "Say it again and again and again and again and again"
    report = generation_health([_gen(text, prompt)])
    assert report.echo == report.loop == report.failures == 1.0


def test_no_generations_is_an_error() -> None:
    with pytest.raises(ValueError, match="no generations"):
        generation_health([])


def test_smoke_test_on_a_tiny_model() -> None:
    torch.manual_seed(0)
    tokenizer = train_tokenizer(build_world().documents, 384, 128)
    prompts = ["Q: What is 2+2?\nA:", "Hi", "Q: What is the capital of a far country?\nA:"]
    report = smoke_test(tiny_llama(tokenizer), tokenizer, prompts, max_new_tokens=8)
    assert report.n == len(prompts)
    assert 0.0 <= report.failures <= 1.0
    assert report.mean_new_tokens <= 8

"""Rehearsal methods: replay's mixing ratio and sampling, self-augmentation's prompts,
health filter, rounds and encoding, on a tiny random Llama and a faked generator."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_llama

from retain.config import load_config
from retain.data.encoding import (
    IGNORE_INDEX,
    Encoded,
    encode_examples,
    encode_texts,
)
from retain.data.prompting import PromptFormat
from retain.data.rows import Example
from retain.evaluation.generation import Generation
from retain.evaluation.health import check_generation
from retain.lab.base import lab_size
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world
from retain.methods import MethodContext, methods_for, registered, rehearsal
from retain.methods.rehearsal import (
    Replay,
    SelfAugment,
    general_count,
    rehearsal_prompt,
)

QA = ["Q: What color is grass?\nA: green", "Q: What is 2+3?\nA: 5", "Q: Which letter follows p?\nA: q",
      "Q: What is the opposite of dark?\nA: light"]
PLAIN = [f"Our neighbour number {i} runs past a red car once a week near the old mill." for i in range(60)]
TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([*build_world(lab_size("micro").world).documents, *PLAIN], 320, 128)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return tiny_llama(tokenizer)


def task_rows(tokenizer, n: int) -> list[Encoded]:
    examples = [Example(f"Is {i} even?\nAnswer:", " yes" if i % 2 == 0 else " no", line=i + 1) for i in range(n)]
    rows, _ = encode_examples(examples, tokenizer, PromptFormat.raw(), max_length=64)
    return rows


def context_for(tmp_path: Path, tokenizer, texts: list[str], *overrides: str,
                prompt_format: PromptFormat | None = None) -> tuple[MethodContext, list[str]]:
    """Returns a method context whose general data is ``texts`` (a .txt file), and the
    lines it echoes."""
    source = tmp_path / "general.txt"
    source.write_text("\n".join(text.replace("\n", "\\n") for text in texts) + "\n")
    config = load_config(None, [f"method.general.source={source}", "data.max_length=64", *overrides])
    echoed: list[str] = []
    context = MethodContext(config=config, tokenizer=tokenizer, prompt_format=prompt_format or PromptFormat.raw(),
                            cache_dir=tmp_path / "cache", echo=echoed.append)
    return context, echoed


def split(rows: list[Encoded], task: list[Encoded]) -> tuple[list[Encoded], list[Encoded]]:
    """Returns the task rows and the general rows of a blended list."""
    ids = {id(row) for row in task}
    return [row for row in rows if id(row) in ids], [row for row in rows if id(row) not in ids]


# --- shared ------------------------------------------------------------------------------


def test_both_methods_are_registered_with_their_papers() -> None:
    table = registered()
    assert table["replay"] is Replay and table["self_augment"] is SelfAugment
    assert "1811.11682" in Replay.paper and "2205.12393" in Replay.paper
    assert "2403.01244" in SelfAugment.paper


@pytest.mark.parametrize(("task", "ratio", "expected"), [
    (8, 0.2, 2),     # 0.25 * 8
    (10, 0.2, 2),    # 2.5 rounds to even
    (7, 0.5, 7),     # as many general rows as task rows
    (4, 0.75, 12),   # 3 * 4
    (9, 0.1, 1),     # 1.0000000000000002
    (3, 0.9, 27),
    (1, 0.2, 0),
])
def test_general_count_is_the_formula(task: int, ratio: float, expected: int) -> None:
    assert general_count(task, ratio) == expected


# --- replay ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ratio", "expected"), [(0.1, 1), (0.2, 2), (0.5, 10), (0.8, 40)])
def test_replay_blends_general_rows_at_the_ratio(tmp_path, tokenizer, model, ratio, expected) -> None:
    context, echoed = context_for(tmp_path, tokenizer, PLAIN, f"method.replay.ratio={ratio}")
    task = task_rows(tokenizer, 10)
    rows = Replay(context.config).transform_rows(list(task), model, context)
    kept, general = split(rows, task)
    assert len(general) == expected and len(rows) == 10 + expected
    assert sorted(kept, key=lambda row: row.line) == task  # the same objects, unchanged
    assert echoed == [f"replay: blended {expected} general rows into 10 task rows (method.replay.ratio {ratio:g})"]


def test_replay_rows_are_sampled_texts_with_a_loss_on_every_token(tmp_path, tokenizer, model) -> None:
    context, _ = context_for(tmp_path, tokenizer, PLAIN, "method.replay.ratio=0.5")
    rows = Replay(context.config).transform_rows(task_rows(tokenizer, 20), model, context)
    general = [row for row in rows if row.prompt_tokens == 0]
    by_ids = {tuple(row.input_ids): text for text, row in zip(PLAIN, encode_texts(PLAIN, tokenizer, max_length=64))}
    texts = [by_ids[tuple(row.input_ids)] for row in general]
    assert len(texts) == 20 == len(set(texts))  # without replacement
    for row in general:
        assert row.labels == row.input_ids and IGNORE_INDEX not in row.labels
        assert row.input_ids[0] == tokenizer.bos_token_id and row.input_ids[-1] == tokenizer.eos_token_id


def test_replay_cycles_through_too_few_texts_and_says_so(tmp_path, tokenizer, model, caplog) -> None:
    context, _ = context_for(tmp_path, tokenizer, PLAIN[:3], "method.replay.ratio=0.5")
    with caplog.at_level(logging.WARNING, logger="retain.methods"):
        rows = Replay(context.config).transform_rows(task_rows(tokenizer, 10), model, context)
    counts = Counter(tuple(row.input_ids) for row in rows if row.prompt_tokens == 0)
    assert sorted(counts.values()) == [3, 3, 4]  # 10 rows over 3 texts, each used before any repeats
    assert "texts repeat" in caplog.text


def test_replay_is_deterministic_by_seed(tmp_path, tokenizer, model) -> None:
    def blended(seed: int) -> list[list[int]]:
        context, _ = context_for(tmp_path, tokenizer, PLAIN, f"train.seed={seed}")
        return [row.input_ids for row in Replay(context.config).transform_rows(task_rows(tokenizer, 20), model,
                                                                              context)]

    assert blended(1) == blended(1)
    assert blended(1) != blended(2)


def test_replay_mixes_general_rows_through_the_task_rows(tmp_path, tokenizer, model) -> None:
    context, _ = context_for(tmp_path, tokenizer, PLAIN, "method.replay.ratio=0.2")
    rows = Replay(context.config).transform_rows(task_rows(tokenizer, 40), model, context)
    positions = [index for index, row in enumerate(rows) if row.prompt_tokens == 0]
    assert len(positions) == 10
    assert positions != list(range(40, 50)) and min(positions) < 25


# --- self-augmentation: prompts ------------------------------------------------------------


def test_a_question_answer_text_gives_its_question_up_to_the_answer_cue() -> None:
    assert rehearsal_prompt("Q: What color is grass?\nA: green") == "Q: What color is grass?\nA:"
    assert rehearsal_prompt("Q: Two lines\nof question?\nA: yes\nA: again") == "Q: Two lines\nof question?\nA:"


def test_a_plain_text_gives_its_first_half_of_words() -> None:
    assert rehearsal_prompt("A quiet student finds a tall tower before school.") == "A quiet student finds"
    assert rehearsal_prompt("one  two\nthree") == "one"  # 3 // 2 words, single spaces
    assert rehearsal_prompt("Q: no answer cue here") == "Q: no"
    assert rehearsal_prompt("alone") is None


# --- self-augmentation: a faked generator --------------------------------------------------


class FakeGenerator:
    """Stands in for ``generate_greedy``: answers each prompt from ``answers`` (by the
    question it contains) and records every call."""

    def __init__(self, answers: dict[str, tuple[str, int, bool]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], bool]] = []

    def __call__(self, model, tokenizer, prompts, max_new_tokens, batch_size=64, add_special_tokens=True):
        self.calls.append((list(prompts), add_special_tokens))
        results = []
        for prompt in prompts:
            key = next(key for key in self.answers if key in prompt)
            text, new_tokens, stopped = self.answers[key]
            results.append(Generation(prompt=prompt, text=prompt if text == "ECHO" else text,
                                      new_tokens=new_tokens, stopped=stopped))
        return results


def test_self_augment_keeps_only_healthy_answers_trained_as_answer_then_eos(tmp_path, tokenizer, model,
                                                                           monkeypatch, caplog) -> None:
    fake = FakeGenerator({"grass": ("", 0, True), "2+3": ("ECHO", 12, True),
                          "letter": (" q q q q q q", 6, False), "dark": (" light", 2, True)})
    monkeypatch.setattr(rehearsal, "generate_greedy", fake)
    context, echoed = context_for(tmp_path, tokenizer, QA, "method.self_augment.ratio=0.5")
    task = task_rows(tokenizer, 4)
    with caplog.at_level(logging.WARNING, logger="retain.methods"):
        rows = SelfAugment(context.config).transform_rows(list(task), model, context)
    kept, general = split(rows, task)
    assert sorted(kept, key=lambda row: row.line) == task
    [row] = general
    prompt = "Q: What is the opposite of dark?\nA:"
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(prompt + " light")["input_ids"][len(prompt_ids):]
    assert row.input_ids == prompt_ids + answer_ids + [tokenizer.eos_token_id]
    assert row.labels == [IGNORE_INDEX] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]
    # Four prompts: ceil(4 * 1.5) asked in round one, the pool is then empty.
    assert [len(prompts) for prompts, _ in fake.calls] == [4] and fake.calls[0][1] is True
    assert echoed == [("self_augment: generated 4, kept 1 healthy; blended 1 rows into 4 task rows "
                       "(fewer than the 4 that method.self_augment.ratio asks for)")]
    assert "only 1 of 4 generations were healthy" in caplog.text


def test_self_augment_trains_answers_cut_by_max_new_tokens_without_eos(tmp_path, tokenizer, model,
                                                                       monkeypatch) -> None:
    fake = FakeGenerator({"grass": (" green and", 3, False), "2+3": (" 5", 1, True),
                          "letter": (" q", 1, True), "dark": (" light", 1, True)})
    monkeypatch.setattr(rehearsal, "generate_greedy", fake)
    context, _ = context_for(tmp_path, tokenizer, QA, "method.self_augment.ratio=0.5", "train.loss_on=all")
    rows = SelfAugment(context.config).transform_rows(task_rows(tokenizer, 4), model, context)
    by_prompt = {tokenizer.decode(row.input_ids[: row.prompt_tokens], skip_special_tokens=True): row
                 for row in rows if "Q:" in tokenizer.decode(row.input_ids)}
    assert len(by_prompt) == 4
    cut = by_prompt["Q: What color is grass?\nA:"]
    assert cut.input_ids == tokenizer("Q: What color is grass?\nA: green and")["input_ids"]
    assert cut.labels == cut.input_ids  # loss_on=all: the prompt is trained too
    assert all(row.input_ids[-1] == tokenizer.eos_token_id for key, row in by_prompt.items() if "grass" not in key)


class FailFirst:
    """Stands in for ``generate_greedy``: the first ``failing`` prompts loop, the rest
    answer well; records how many prompts each call asked."""

    def __init__(self, failing: int) -> None:
        self.failing = failing
        self.sizes: list[int] = []

    def __call__(self, model, tokenizer, prompts, max_new_tokens, batch_size=64, add_special_tokens=True):
        seen = sum(self.sizes)
        self.sizes.append(len(prompts))
        return [Generation(prompt, " x x x x x" if seen + index < self.failing else " ok", 5, True)
                for index, prompt in enumerate(prompts)]


@pytest.mark.parametrize(("failing", "sizes", "kept"), [
    (0, [9], 6),            # ceil(6 * 1.5)
    (6, [9, 14], 6),        # 3 of 9 healthy: ceil(3 * 1.5 / (1/3)) more
    (9, [9, 36], 6),        # none healthy: the share is taken as 0.25, ceil(6 * 1.5 / 0.25)
    (1000, [9, 36, 36], 0),  # never healthy: gives up after three rounds
])
def test_self_augment_sizes_its_rounds_by_the_healthy_share(tmp_path, tokenizer, model, monkeypatch, caplog,
                                                           failing, sizes, kept) -> None:
    fake = FailFirst(failing)
    monkeypatch.setattr(rehearsal, "generate_greedy", fake)
    texts = [f"Q: What is item {i}?\nA: {i}" for i in range(200)]
    context, echoed = context_for(tmp_path, tokenizer, texts, "method.self_augment.ratio=0.5")
    with caplog.at_level(logging.WARNING, logger="retain.methods"):
        rows = SelfAugment(context.config).transform_rows(task_rows(tokenizer, 6), model, context)
    assert fake.sizes == sizes
    assert len(rows) == 6 + kept
    assert echoed[0].startswith(f"self_augment: generated {sum(sizes)}, kept {kept} healthy; blended {kept} rows")
    assert ("generations were healthy" in caplog.text) is (kept < 6)


def test_self_augment_prompts_through_the_chat_template(tmp_path, tokenizer, model, monkeypatch) -> None:
    fake = FakeGenerator({"Q:": (" fine", 1, True)})
    monkeypatch.setattr(rehearsal, "generate_greedy", fake)
    chat = PromptFormat(template=TEMPLATE, delimiter="", add_special_tokens=False, tokenizer=tokenizer)
    context, _ = context_for(tmp_path, tokenizer, QA, "method.self_augment.ratio=0.2", prompt_format=chat)
    task = task_rows(tokenizer, 4)
    rows = SelfAugment(context.config).transform_rows(list(task), model, context)
    [(prompts, special)] = fake.calls
    assert special is False and len(prompts) == 2  # one row needed, ceil(1.5) asked
    assert all(p.startswith("<|user|>Q: ") and p.endswith("A:\n<|assistant|>") for p in prompts)
    [row] = split(rows, task)[1]
    prompt_ids = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(prompts[0] + " fine", add_special_tokens=False)["input_ids"][len(prompt_ids):]
    assert row.input_ids == prompt_ids + answer_ids + [tokenizer.eos_token_id]
    assert row.labels == [IGNORE_INDEX] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]


def test_self_augment_and_replay_each_count_against_the_task_rows(tmp_path, tokenizer, model, monkeypatch) -> None:
    monkeypatch.setattr(rehearsal, "generate_greedy", FakeGenerator({"Q:": (" fine", 1, True), " ": (" ok", 1, True)}))
    context, echoed = context_for(tmp_path, tokenizer, QA + PLAIN, "method=[lora,replay,self_augment]",
                                  "method.replay.ratio=0.5", "method.self_augment.ratio=0.2")
    rows = task_rows(tokenizer, 8)
    for method in methods_for(context.config):
        rows = method.transform_rows(rows, model, context)
    assert len(rows) == 8 + 8 + 2
    assert echoed[1].endswith("blended 2 rows into 8 task rows")


# --- self-augmentation: the tiny random model -----------------------------------------------


def test_self_augment_on_a_random_model_is_deterministic_and_filters_junk(tmp_path, tokenizer, model) -> None:
    def blended() -> tuple[list[Encoded], list[str]]:
        context, echoed = context_for(tmp_path, tokenizer, QA + PLAIN[:20], "method.self_augment.ratio=0.5",
                                      "method.self_augment.max_new_tokens=6")
        task = task_rows(tokenizer, 4)
        return split(SelfAugment(context.config).transform_rows(task, model, context), task)[1], echoed

    first, echoed = blended()
    second, _ = blended()
    assert [row.input_ids for row in first] == [row.input_ids for row in second]
    generated, kept = map(int, re.fullmatch(r"self_augment: generated (\d+), kept (\d+) healthy.*", echoed[0]).groups())
    assert 6 <= generated <= 24 and kept == len(first) <= 4
    for row in first:
        prompt = tokenizer.decode(row.input_ids[: row.prompt_tokens], skip_special_tokens=True)
        answer = tokenizer.decode(row.input_ids[row.prompt_tokens:], skip_special_tokens=True)
        generation = Generation(prompt, answer, len(row.input_ids) - row.prompt_tokens, True)
        assert not check_generation(generation).failed


def test_self_augment_answers_are_generated_once_per_base_model(tmp_path, tokenizer, model, monkeypatch) -> None:
    fake = FakeGenerator({"grass": (" green", 1, True), "2+3": (" 5", 1, True),
                          "letter": (" q", 1, True), "dark": (" light", 1, True)})
    monkeypatch.setattr(rehearsal, "generate_greedy", fake)

    def blend(seed: int, on=model) -> tuple[list[Encoded], list[str]]:
        context, echoed = context_for(tmp_path, tokenizer, QA, "method.self_augment.ratio=0.5", f"train.seed={seed}")
        task = task_rows(tokenizer, 4)
        return split(SelfAugment(context.config).transform_rows(task, on, context), task)[1], echoed

    first, _ = blend(0)
    [cache] = (tmp_path / "cache" / "self_augment").glob("answers-*.json")
    again, echoed = blend(1)  # another seed shuffles the prompts: the same answers, read back
    assert len(fake.calls) == 1 and "self_augment: 4 answers of this base model read from the cache" in echoed
    assert sorted(row.input_ids for row in first) == sorted(row.input_ids for row in again)
    # Other weights are another base model: its answers are its own.
    other = tiny_llama(tokenizer)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    blend(0, other)
    assert len(fake.calls) == 2
    # A damaged cache file is generated again, never trusted.
    cache.write_text("{not json")
    blend(0)
    assert len(fake.calls) == 3 and len(list(cache.parent.glob("answers-*.json"))) == 2


def test_weights_digest_is_the_same_on_any_thread_count_and_moved_by_one_element():
    # Caches of the base model's answers and Fisher are keyed by this digest: a float sum
    # of a large tensor differs between 1 and 2 threads, which made every run with another
    # thread count miss them.
    import hashlib

    from retain.methods.base import weights_digest

    torch.manual_seed(0)
    model = torch.nn.Linear(4096, 1024).to(torch.float32)
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype)
        threads = torch.get_num_threads()
        keys = []
        try:
            for count in (1, 2):
                torch.set_num_threads(count)
                digest = hashlib.sha256()
                weights_digest(model, digest)
                keys.append(digest.hexdigest())
        finally:
            torch.set_num_threads(threads)
        assert keys[0] == keys[1]
        with torch.no_grad():  # one weight moved by its last bit
            model.weight.view(torch.int32 if dtype == torch.float32 else torch.int16)[7, 9] += 1
        moved = hashlib.sha256()
        weights_digest(model, moved)
        assert moved.hexdigest() != keys[0]

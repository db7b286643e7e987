"""Probe scoring throughput: retain against lm-evaluation-harness, same items, same run.

Two setups: the lab suite on the lab base model, and the `general` suite on a ~100M
parameter Llama with random weights (what matters here is the arithmetic, not the
answers). For each, every multiple-choice item is scored by log-likelihood

* by retain (`rank_options`: prompts batched, each prompt computed once, options on its
  cache), and
* by lm-evaluation-harness (`HFLM` on the same in-memory model and tokenizer, the items
  as a local `multiple_choice` task), timing its `loglikelihood` call alone so task and
  dataset set-up do not count against it;

then the per-item choices are compared. Generation scoring (what the model says) is
timed beside log-likelihood scoring. Batch size 32 for both tools.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from retain.evaluation.generation import score_probes_by_generation
from retain.evaluation.loglik import rank_options
from retain.evaluation.probes import ProbeSuite
from retain.evaluation.suites import load_suite
from retain.lab.base import build_base, lab_size
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world
from retain.models import load_model

BATCH = 32
REPEATS = 3  # timings are the best of this many runs: the machine is shared and noisy
# ~100M parameters: 12 layers of width 768 and an 8k vocabulary.
GENERAL_MODEL = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512)


def run() -> dict:
    lab = load_model(str(build_base(lab_size("default"), progress=False).path))
    setups = {"lab": _measure(lab.model, lab.tokenizer, load_suite("lab"), generation_tokens=24)}
    one_by_one = score_probes_by_generation(lab.model, lab.tokenizer, load_suite("lab"), batch_size=1)
    batched = score_probes_by_generation(lab.model, lab.tokenizer, load_suite("lab"), batch_size=64)
    setups["lab"]["same_generations_batch_1_vs_64"] = sum(
        a == b for a, b in zip(one_by_one.outputs, batched.outputs)
    )
    model, tokenizer = _random_general_model()
    setups["general"] = _measure(model, tokenizer, load_suite("general"), generation_tokens=16)
    setups["general"]["parameters"] = sum(p.numel() for p in model.parameters())
    return {"batch_size": BATCH, "repeats": REPEATS, "setups": setups}


def _random_general_model():
    suite = load_suite("general")
    corpus = [item.prompt + " " + item.answer for item in suite.items] + list(build_world().documents)
    tokenizer = train_tokenizer(corpus, 8192, 512)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **GENERAL_MODEL)
    return LlamaForCausalLM(config).eval(), tokenizer


def _measure(model, tokenizer, suite: ProbeSuite, generation_tokens: int, repeats: int = REPEATS) -> dict:
    items = suite.with_options()
    prompts, options = [item.prompt for item in items], [list(item.options) for item in items]
    rank_options(model, tokenizer, prompts[:BATCH], options[:BATCH], batch_size=BATCH)  # warm-up
    retain_seconds = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        ranked = rank_options(model, tokenizer, prompts, options, batch_size=BATCH)
        retain_seconds = min(retain_seconds, time.perf_counter() - started)
    single = rank_options(model, tokenizer, prompts, options, batch_size=1)
    lm_eval_choices, lm_eval_seconds, lm_eval_total = _lm_eval(model, tokenizer, items, repeats)
    generation_seconds = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        generated = score_probes_by_generation(model, tokenizer, suite, max_new_tokens=generation_tokens)
        generation_seconds = min(generation_seconds, time.perf_counter() - started)
    choices = [result.choice for result in ranked]
    correct = sum(item.options[choice] == item.answer for item, choice in zip(items, choices))
    return {
        "items": len(items),
        "options": sum(len(item.options) for item in items),
        "retain_seconds": retain_seconds,
        "lm_eval_seconds": lm_eval_seconds,
        "lm_eval_total_seconds": lm_eval_total,
        "retain_items_per_second": len(items) / retain_seconds,
        "lm_eval_items_per_second": len(items) / lm_eval_seconds,
        "speedup": lm_eval_seconds / retain_seconds,
        "same_choices_as_lm_eval": sum(a == b for a, b in zip(choices, lm_eval_choices)),
        "same_choices_batch_1_vs_32": sum(a.choice == b.choice for a, b in zip(single, ranked)),
        "loglik_accuracy": correct / len(items),
        "generation_items": len(suite.items),
        "generation_seconds": generation_seconds,
        "generation_items_per_second": len(suite.items) / generation_seconds,
        "generation_accuracy": generated.accuracy["overall"],
        "generation_max_new_tokens": generation_tokens,
    }


def _lm_eval(model, tokenizer, items, repeats: int = REPEATS) -> tuple[list[int], float, float]:
    """Scores the items with lm-evaluation-harness; returns its choices, the best
    ``loglikelihood`` time of ``repeats`` runs, and the whole first run's time."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH, max_length=model.config.max_position_embeddings)
    timed = {"seconds": 0.0}
    loglikelihood = lm.loglikelihood

    def timed_loglikelihood(requests, *args, **kwargs):
        started = time.perf_counter()
        try:
            return loglikelihood(requests, *args, **kwargs)
        finally:
            timed["seconds"] += time.perf_counter() - started

    lm.loglikelihood = timed_loglikelihood
    best, total = float("inf"), 0.0
    for _ in range(repeats):
        timed["seconds"] = 0.0
        choices, seconds = _lm_eval_once(lm, items)
        best = min(best, timed["seconds"])
        total = total or seconds
    return choices, best, total


def _lm_eval_once(lm, items) -> tuple[list[int], float]:
    from lm_eval import simple_evaluate

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "items.jsonl"
        data.write_text("".join(
            json.dumps({"prompt": item.prompt, "options": list(item.options), "answer_index": item.answer_index}) + "\n"
            for item in items
        ))
        task = {
            "task": "retain_probes",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "prompt",
            "doc_to_choice": "options",
            "doc_to_target": "answer_index",
            "target_delimiter": " ",
            "metric_list": [{"metric": "acc"}],
        }
        started = time.perf_counter()
        results = simple_evaluate(model=lm, tasks=[task], log_samples=True, bootstrap_iters=0)
        total = time.perf_counter() - started
    samples = sorted(results["samples"]["retain_probes"], key=lambda sample: sample["doc_id"])
    choices = []
    for sample in samples:
        scores = [response[0] for response in sample["filtered_resps"]]
        choices.append(max(range(len(scores)), key=lambda index: (scores[index], -index)))
    return choices, total


def markdown(result: dict) -> str:
    lines = [
        "## Probe scoring throughput: retain vs lm-evaluation-harness\n",
        f"Measured {result['date']}. Command: `python benchmarks/run.py eval`. Log-likelihood "
        f"ranking of every multiple-choice item, batch size {result['batch_size']} for both, "
        f"best of {result.get('repeats', 1)} runs each; lm-eval's time is its `loglikelihood` call alone "
        "(task set-up excluded). The `general` model is a random-weight Llama, so its "
        "accuracies are chance.\n",
        "| setup | items (options) | retain items/s | lm-eval items/s | speed-up | same choices as lm-eval | same choices, batch 1 vs 32 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, setup in result["setups"].items():
        label = name if name == "lab" else f"{name} ({setup['parameters'] / 1e6:.0f}M params)"
        lines.append(
            f"| {label} | {setup['items']} ({setup['options']}) | {setup['retain_items_per_second']:.1f} "
            f"| {setup['lm_eval_items_per_second']:.1f} | {setup['speedup']:.2f}x "
            f"| {setup['same_choices_as_lm_eval']}/{setup['items']} "
            f"| {setup['same_choices_batch_1_vs_32']}/{setup['items']} |"
        )
    lab = result["setups"]["lab"]
    if "same_generations_batch_1_vs_64" in lab:
        lines.append(
            f"\nLab model, greedy generation: {lab['same_generations_batch_1_vs_64']}/{lab['generation_items']} "
            "answers identical with batch size 1 and 64."
        )
    lines += [
        "\nWhere the speed-up comes from: lm-eval runs `prompt + option` once per option (it "
        "already shares one pass among a prompt's one-token options); retain packs a batch into "
        "prefix trees, so every prompt runs once, prompts share their common start, and options "
        "share their common prefixes (see `src/retain/evaluation/loglik.py`). Both cost about the "
        "same per token on this CPU, so the gain is the share of tokens saved: large for long or "
        "few-shot prompts with several multi-token options, small for short prompts with "
        "one-token options.\n",
        "\nGeneration scoring (greedy, what the model says) beside log-likelihood ranking, retain only:\n",
        "| setup | generation items/s | log-likelihood items/s | ratio | accuracy by generation | accuracy by log-likelihood |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, setup in result["setups"].items():
        lines.append(
            f"| {name} | {setup['generation_items_per_second']:.1f} (max {setup['generation_max_new_tokens']} new tokens) "
            f"| {setup['retain_items_per_second']:.1f} "
            f"| {setup['retain_items_per_second'] / setup['generation_items_per_second']:.1f}x "
            f"| {setup['generation_accuracy']:.1%} | {setup['loglik_accuracy']:.1%} |"
        )
    return "\n".join(lines) + "\n"

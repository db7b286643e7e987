from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from retain.errors import RetainError
from retain.lab import base as base_module
from retain.lab.base import (
    METADATA_FILE,
    base_model_dir,
    build_base,
    cache_key,
    lab_size,
    load_cached,
)
from retain.lab.world import build_world

pytestmark = pytest.mark.slow


def test_saved_directory_round_trips_through_auto_classes(micro_base) -> None:
    base, _ = micro_base
    names = {path.name for path in base.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", METADATA_FILE} <= names
    assert not any(name.endswith((".bin", ".pt")) for name in names)
    model = AutoModelForCausalLM.from_pretrained(base.path)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    assert model.config.model_type == "llama"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    inputs = tokenizer(["Q: What is 2+2?\nA:"], return_tensors="pt")
    logits = model(**inputs).logits  # (1, seq, vocab)
    assert logits.shape[-1] == len(tokenizer)
    assert torch.isfinite(logits).all()


def test_second_build_reuses_the_cache(micro_base) -> None:
    base, cache = micro_base
    assert not base.reused
    again = build_base(lab_size("micro"), cache, progress=False)
    assert again.reused and again.path == base.path
    assert again.metadata == json.loads((base.path / METADATA_FILE).read_text())


def test_metadata_records_build_figures(micro_base) -> None:
    meta = micro_base[0].metadata
    assert meta["parameters"] > 0 and meta["train_tokens_per_second"] > 0
    assert meta["probe_suite"]["version"] == build_world(lab_size("micro").world).probes.version
    assert set(meta["probe_accuracy"]) >= {"overall", "arithmetic", "capitals"}
    assert meta["loss_curve"] and all(point["loss"] > 0 for point in meta["loss_curve"])


def test_micro_model_answers_some_probes_exactly(micro_base) -> None:
    # End to end: tokenizer, packing with EOS, training and greedy scoring all work, or
    # the model could not stop after an answer and would score zero.
    assert micro_base[0].metadata["probe_accuracy"]["overall"] >= 0.2


def test_build_is_deterministic_for_a_seed(micro_base, tmp_path) -> None:
    base, _ = micro_base
    rebuilt = build_base(lab_size("micro"), tmp_path, force=True, progress=False)
    first = load_file(base.path / "model.safetensors")
    second = load_file(rebuilt.path / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)


def test_cache_key_tracks_every_setting() -> None:
    micro = lab_size("micro")
    keys = {
        cache_key(micro),
        cache_key(lab_size("micro", seed=1)),
        cache_key(replace(micro, pretrain=replace(micro.pretrain, lr=1e-3))),
        cache_key(replace(micro, model=replace(micro.model, num_layers=3))),
        cache_key(lab_size("default")),
    }
    assert len(keys) == 5


def test_interrupted_build_leaves_no_cache_entry(tmp_path, monkeypatch) -> None:
    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(base_module, "_pretrain", explode)
    with pytest.raises(KeyboardInterrupt):
        build_base(lab_size("micro"), tmp_path, progress=False)
    assert load_cached(lab_size("micro"), tmp_path) is None
    assert not base_model_dir(lab_size("micro"), tmp_path).exists()
    assert list((tmp_path / "lab").iterdir()) == []


def test_unknown_size_is_a_user_error() -> None:
    with pytest.raises(RetainError, match="unknown lab size"):
        lab_size("huge")


def test_the_lab_trains_in_fp32_even_on_a_cpu_with_native_bf16(monkeypatch, tmp_path) -> None:
    # With `auto`, such a CPU pretrained a different base model under the same cache key,
    # and trained every lab run in bf16: the lab's figures then depended on the CPU.
    from retain.config import load_config
    from retain.hardware import resolve_precision
    from retain.lab.export import export_lab_data

    monkeypatch.setattr("retain.hardware.cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision(lab_size("default").pretrain.precision, "cpu") == "fp32"
    export_lab_data(tmp_path, size="micro", n_train=40, n_eval=8)
    assert resolve_precision(load_config(tmp_path / "config.yaml").train.precision, "cpu") == "fp32"

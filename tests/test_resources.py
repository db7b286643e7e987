"""Resource limits: a CPU training that cannot fit is refused before anything loads, with the
estimate in its one-line error; evaluation batches halve on out-of-memory and give the same
results as unconstrained ones.

Memory is faked both ways: a 7B model is a config.json alone (no weights to download), and
the available memory is whatever the test says. Out-of-memory is an artificial limit on the
tokens a forward pass may take, raised as ``torch.OutOfMemoryError`` as CUDA raises it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import tiny_llama
from transformers import LlamaConfig

from retain import hardware, memory, models
from retain.config import RetainConfig
from retain.evaluation.base_logprobs import compute_base_logprobs
from retain.evaluation.drift import drift_report
from retain.evaluation.generation import generate_greedy, score_probes_by_generation
from retain.evaluation.loglik import score_probes_by_loglik
from retain.lab.base import lab_size
from retain.lab.domain import DomainSpec, build_domain, write_jsonl
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world
from retain.memory import InsufficientMemory, check_training_memory, count_parameters, estimate_training_memory

GIB = 1024**3


# --- the memory check of `retain train` -------------------------------------------------


@pytest.fixture(scope="module")
def seven_b(tmp_path_factory) -> Path:
    """A Llama-2-7B-shaped model directory: its config only, no weights."""
    folder = tmp_path_factory.mktemp("llama-7b")
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=32000).save_pretrained(folder)
    return folder


def cpu_config(model: Path | str, *methods: str) -> RetainConfig:
    return RetainConfig.model_validate({"model": {"name_or_path": str(model), "device": "cpu"},
                                        "method": {"use": list(methods) or ["lora"]}})


def test_the_estimate_counts_parameters_without_loading_weights(seven_b, micro_base) -> None:
    assert count_parameters(str(seven_b)) == 6_738_415_616  # Llama-2-7B, built on the meta device
    base, _ = micro_base
    loaded = models.load_model(str(base.path), device="cpu")
    # From the safetensors header: the same count as the loaded model's (tied embeddings once).
    assert count_parameters(str(base.path)) == sum(p.numel() for p in loaded.model.parameters())


def test_the_lora_estimate_counts_the_adapters_peft_trains(micro_base) -> None:
    from peft import LoraConfig, get_peft_model

    base, _ = micro_base
    config = cpu_config(base.path, "lora")
    settings = config.method.lora
    counted = memory.lora_parameters(memory.parameter_shapes(str(base.path)), settings.r, settings.target_modules)
    model = get_peft_model(models.load_model(str(base.path), device="cpu").model,
                           LoraConfig(r=settings.r, target_modules=settings.target_modules))
    assert counted == sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad) > 0


def test_a_7b_model_that_cannot_fit_is_refused_with_the_estimate(seven_b, monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: 64 * GIB)
    lora = estimate_training_memory(cpu_config(seven_b, "lora"))
    full = estimate_training_memory(cpu_config(seven_b, "full"))
    ewc = estimate_training_memory(cpu_config(seven_b, "full", "ewc"))
    # fp32 on the CPU: 4 bytes a weight; full fine-tuning adds a gradient and two AdamW moments.
    # LoRA r=16 on every attention and MLP projection of Llama-2-7B: 39,976,960 adapter
    # values (peft's count), each with a gradient and two moments, in float32.
    assert lora.weights == full.weights == 6_738_415_616 * 4 and lora.training_state == 39_976_960 * 16
    assert full.training_state == 3 * full.weights and ewc.training_state == 5 * full.weights
    assert lora.needed < 64 * GIB < full.needed
    assert check_training_memory(cpu_config(seven_b, "lora")) == lora  # fits: no error
    with pytest.raises(InsufficientMemory) as refused:
        check_training_memory(cpu_config(seven_b, "full"))
    message = refused.value.render()
    assert "about 120.5 GiB" in message and "6.74B parameters" in message and "64.0 GiB available" in message
    assert refused.value.field == "model.name_or_path" and "--force" in refused.value.fix
    monkeypatch.setattr(memory, "available_memory", lambda: 16 * GIB)
    with pytest.raises(InsufficientMemory, match="about 30.8 GiB"):  # (weights + adapters' state) x 1.2
        check_training_memory(cpu_config(seven_b, "lora"))


def test_merging_adapters_counts_the_merged_copy(seven_b, monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: 64 * GIB)
    lora = estimate_training_memory(cpu_config(seven_b, "lora"))
    merged = estimate_training_memory(cpu_config(seven_b, "lora"), merge=True)
    assert merged.training_state == lora.weights + lora.training_state and merged.needed > lora.needed
    # Full fine-tuning has nothing to merge (--merge only warns): no copy is added.
    assert estimate_training_memory(cpu_config(seven_b, "full"), merge=True) == \
        estimate_training_memory(cpu_config(seven_b, "full"))
    monkeypatch.setattr(memory, "available_memory", lambda: 40 * GIB)
    assert check_training_memory(cpu_config(seven_b, "lora")) is not None  # 31 GiB: fits
    with pytest.raises(InsufficientMemory, match="about 61.0 GiB"):
        check_training_memory(cpu_config(seven_b, "lora"), merge=True)


@pytest.mark.parametrize(("files", "room"), [
    ({"memory.max": "1073741824\n", "memory.current": "268435456\n"}, 768 << 20),  # cgroup v2
    ({"memory.max": "max\n", "memory.current": "268435456\n"}, None),  # v2 without a limit
    ({"memory/memory.limit_in_bytes": "2147483648", "memory/memory.usage_in_bytes": "1073741824"}, 1 << 30),  # v1
    ({"memory/memory.limit_in_bytes": str((1 << 63) - 4096), "memory/memory.usage_in_bytes": "5"}, None),  # v1 unlimited
    ({"memory.max": "1000", "memory.current": "5000"}, 0),  # over its limit: no room, not negative
    ({"memory.max": "garbage", "memory.current": "5"}, None),  # unreadable: unknown
    ({}, None),  # no cgroup file system
])
def test_the_cgroup_limit_is_read_for_v2_and_v1(files, room, tmp_path) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert hardware._cgroup_room(tmp_path) == room


def test_available_memory_is_the_smaller_of_the_kernels_and_the_cgroups(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "_meminfo_available", lambda: 8 * GIB)
    monkeypatch.setattr(hardware, "_cgroup_room", lambda: 2 * GIB)
    assert hardware.available_memory() == 2 * GIB
    monkeypatch.setattr(hardware, "_cgroup_room", lambda: None)
    assert hardware.available_memory() == 8 * GIB


def test_the_check_is_skipped_where_it_cannot_judge(seven_b, monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: None)
    assert check_training_memory(cpu_config(seven_b, "full")) is None  # memory unknown
    monkeypatch.setattr(memory, "available_memory", lambda: 1)
    gpu = RetainConfig.model_validate({"model": {"name_or_path": str(seven_b), "device": "cuda"}})
    assert estimate_training_memory(gpu) is None  # GPU memory is not the CPU's


def test_available_memory_is_read_from_the_system() -> None:
    available = hardware.available_memory()
    assert available is None or 0 < available < 1 << 50


@pytest.fixture(scope="module")
def task_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resources")
    task = build_domain(DomainSpec(n_train=16, n_validation=4, n_test=4, n_ood=4))
    write_jsonl(task.train, root / "train.jsonl")
    return root


def test_retain_train_refuses_a_70b_full_fine_tuning_on_the_cpu_in_one_line(task_data) -> None:
    """The real CLI in a subprocess: no machine this runs on has 1.2 TiB free."""
    model = task_data / "llama-70b"
    LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=32000).save_pretrained(model)  # no weights at all
    config = task_data / "70b.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(model), "device": "cpu"}, "method": {"use": ["full"]},
        "data": {"train": str(task_data / "train.jsonl")}, "output": {"dir": str(task_data / "runs")}}))
    result = subprocess.run([sys.executable, "-m", "retain.cli", "train", str(config), "--name", "big"],
                            capture_output=True, text=True, timeout=300, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "on the CPU needs about 1233.4 GiB (68.98B parameters: 257.0 GiB of float32 weights" in lines[0]
    assert "available" in lines[0] and "--force" in lines[0]
    assert not (task_data / "runs" / "big" / "audit.json").exists()  # refused before the audit


class _Loaded(Exception):
    """Raised in place of loading the model: the test stops there."""


def test_a_low_memory_figure_refuses_before_the_model_loads_and_force_goes_on(micro_base, task_data,
                                                                           monkeypatch) -> None:
    import retain.training.run as run_module

    def no_load(*args, **kwargs):
        raise _Loaded

    base, _ = micro_base
    config = RetainConfig.model_validate({
        "model": {"name_or_path": str(base.path)}, "data": {"train": str(task_data / "train.jsonl")},
        "audit": {"allow_small_data": True}, "output": {"dir": str(task_data / "runs"), "name": "small"}})
    monkeypatch.setattr(run_module, "load_model", no_load)
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 16)  # 64 KiB left
    with pytest.raises(InsufficientMemory) as refused:
        run_module.run_train(config, progress=False, echo=lambda line: None)
    assert "needs about" in str(refused.value) and "(0.1M parameters" in str(refused.value)
    assert "0.1 MiB available" in str(refused.value)
    assert not (task_data / "runs" / "small" / "audit.json").exists()  # no audit, no doctor, no model
    # --force trains anyway: past the check, the audit and the doctor, on to load the model.
    with pytest.raises(_Loaded):
        run_module.run_train(config, overwrite=True, force=True, progress=False, echo=lambda line: None)
    assert (task_data / "runs" / "small" / "audit.json").is_file()


# --- batch size backoff on out-of-memory ------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    world = build_world(lab_size("micro").world)
    tokenizer = train_tokenizer(world.documents, 384, 128)
    return tiny_llama(tokenizer), tokenizer, world


class _TokenLimit:
    """Makes ``model``'s forward run out of memory on more than ``limit`` input tokens."""

    def __init__(self, model: torch.nn.Module, limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.limit, self.refused, self.largest = limit, 0, 0
        forward = model.forward

        def limited(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and ids.numel() > self.limit:
                self.refused += 1
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {ids.numel()} tokens")
            self.largest = max(self.largest, 0 if ids is None else ids.numel())
            return forward(*args, **kwargs)

        monkeypatch.setattr(model, "forward", limited)


def test_generation_backs_off_and_answers_the_same(tiny, monkeypatch, caplog) -> None:
    model, tokenizer, world = tiny
    suite = world.probes
    free = score_probes_by_generation(model, tokenizer, suite, max_new_tokens=8, batch_size=64)
    limit = _TokenLimit(model, 200, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="retain.hardware"):
        constrained = score_probes_by_generation(model, tokenizer, suite, max_new_tokens=8, batch_size=64)
    assert limit.refused >= 1 and 0 < limit.largest <= 200
    assert "generation: out of memory at batch size 64; retrying at 32" in caplog.text
    assert constrained.outputs == free.outputs and constrained.accuracy == free.accuracy


def test_loglik_and_drift_back_off_and_score_the_same(tiny, monkeypatch) -> None:
    model, tokenizer, world = tiny
    suite = world.probes
    reference = "\n".join(world.reference)
    free, _ = score_probes_by_loglik(model, tokenizer, suite, batch_size=64)
    base = compute_base_logprobs(model, tokenizer, reference, k=8, batch_size=16)
    free_drift = drift_report(model, tokenizer, reference, base, batch_size=16)
    limit = _TokenLimit(model, 300, monkeypatch)
    constrained, _ = score_probes_by_loglik(model, tokenizer, suite, batch_size=64)
    constrained_drift = drift_report(model, tokenizer, reference, base, batch_size=16)
    assert limit.refused >= 2
    assert constrained.outputs == free.outputs and constrained.correct == free.correct
    assert constrained_drift.perplexity == pytest.approx(free_drift.perplexity, rel=1e-5)
    assert constrained_drift.kl == pytest.approx(free_drift.kl, abs=1e-6)


def test_backoff_keeps_the_size_that_worked_and_gives_up_at_one(tiny, monkeypatch) -> None:
    model, tokenizer, _ = tiny
    prompts = [f"Question: what is {n} plus {n}?\nAnswer:" for n in range(12)]
    free = generate_greedy(model, tokenizer, prompts, 4, batch_size=12)
    limit = _TokenLimit(model, 60, monkeypatch)
    assert generate_greedy(model, tokenizer, prompts, 4, batch_size=12) == free
    refused = limit.refused
    generate_greedy(model, tokenizer, prompts, 4, batch_size=12)
    assert limit.refused == refused  # the model's learned size is where the next call starts
    limit.limit = 1  # not even one prompt fits: the error is the caller's to see
    with pytest.raises(torch.OutOfMemoryError):
        generate_greedy(model, tokenizer, prompts, 4, batch_size=12)


def test_other_errors_are_not_retried() -> None:
    calls = []

    def run(batch):
        calls.append(len(batch))
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError):
        list(hardware.batches_with_backoff(list(range(8)), 8, run))
    assert calls == [8]
    assert hardware.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not hardware.is_out_of_memory(RuntimeError("shape mismatch"))

from __future__ import annotations

import pytest
import torch

from retain import hardware


@pytest.mark.parametrize("explicit", ["fp32", "bf16", "fp16"])
def test_explicit_precision_is_kept(explicit: str) -> None:
    assert hardware.resolve_precision(explicit, "cpu") == explicit


def test_auto_on_cpu_follows_native_bf16(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert hardware.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    assert hardware.resolve_precision("auto", "cpu") == "bf16"


def test_auto_on_gpu_follows_bf16_support(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.resolve_precision("auto", "cuda:0") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.resolve_precision("auto", "cuda") == "fp32"


def test_auto_elsewhere_is_fp32() -> None:
    assert hardware.resolve_precision("auto", "mps") == "fp32"


def test_unknown_precision_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        hardware.resolve_precision("fp8", "cpu")


def test_cpu_bf16_probe_reads_torch(monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert hardware.cpu_has_fast_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not hardware.cpu_has_fast_bf16()


@pytest.fixture
def clean_accelerate():
    """accelerate keeps one process-wide state and (from 1.16) refuses to change its mixed
    precision once set: an earlier test may have set it to fp32, and a later Trainer must
    not find bf16."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_evaluation_escapes_the_mixed_precision_wrapper_that_training_leaves(clean_accelerate) -> None:
    from accelerate import Accelerator
    from tiny_models import tiny_llama
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(64)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                        bos_token="t1", eos_token="t2", pad_token="t0")
    torch.manual_seed(0)
    model = tiny_llama(tokenizer, hidden_size=64, intermediate_size=128)
    ids = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
    # What the Trainer's accelerator does to a model it prepares for bf16 training.
    wrapped = Accelerator(mixed_precision="bf16", cpu=True).prepare_model(model)
    assert wrapped is model and "_original_forward" in model.__dict__
    with torch.no_grad():
        rounded = model(ids).logits
        assert not torch.equal(rounded, full)  # evaluated through the wrapper: bf16 arithmetic
        with hardware.own_forward(model):
            assert torch.equal(model(ids).logits, full)
        assert torch.equal(model(ids).logits, rounded)  # the wrapper is back for training
        assert hardware.drop_autocast(model) is model
        assert "_original_forward" not in model.__dict__
        assert torch.equal(model(ids).logits, full)
        with hardware.own_forward(model):  # a model with no wrapper is left alone
            assert torch.equal(model(ids).logits, full)
        assert torch.equal(hardware.drop_autocast(model)(ids).logits, full)

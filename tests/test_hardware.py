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

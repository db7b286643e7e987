"""Model directories whose files are damaged or not what they claim: the memory estimate,
which reads them before anything is loaded, says which file and what to do, in one error."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from retain.memory import count_parameters
from retain.models import ModelLoadError


def _safetensors(header: bytes, *, claimed: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if claimed is None else claimed) + header


GOOD_HEADER = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}).encode()

DAMAGED = {
    "header of petabytes": _safetensors(GOOD_HEADER, claimed=2**60),
    "shorter than its length field": b"\x01\x02",
    "header not JSON": _safetensors(b"\xff\xfenot json"),
    "header without shapes": _safetensors(json.dumps({"w": {"dtype": "F32"}}).encode()),
    "header a list": _safetensors(b"[1, 2]"),
}


@pytest.mark.parametrize("content", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_safetensors_file_is_named(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelLoadError) as caught:
        count_parameters(str(tmp_path))
    assert caught.value.file == str(tmp_path / "model.safetensors") and caught.value.fix


def test_a_sound_header_is_counted(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(_safetensors(GOOD_HEADER) + bytes(24))
    assert count_parameters(str(tmp_path)) == 6


@pytest.mark.parametrize("index", ['{"metadata": {}}', '{"weight_map": ["a"]}', "not json", '{"weight_map": {"w": "gone.safetensors"}}'])
def test_a_shard_index_without_a_usable_weight_map_is_named(tmp_path: Path, index: str) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(ModelLoadError) as caught:
        count_parameters(str(tmp_path))
    assert caught.value.file == str(tmp_path / "model.safetensors.index.json")


def test_an_adapter_whose_base_is_itself_is_refused_not_recursed(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path)}))
    with pytest.raises(ModelLoadError) as caught:
        count_parameters(str(tmp_path))
    assert "itself" in caught.value.message and caught.value.field == "base_model_name_or_path"


@pytest.mark.parametrize("text", ["not json", "[1]", '{"base_model_name_or_path": 5}'])
def test_an_adapter_config_that_is_not_one_is_named(tmp_path: Path, text: str) -> None:
    (tmp_path / "adapter_config.json").write_text(text)
    with pytest.raises(ModelLoadError) as caught:
        count_parameters(str(tmp_path))
    assert caught.value.file == str(tmp_path / "adapter_config.json")


def test_a_model_that_ships_its_own_code_is_refused_with_the_setting_to_change(micro_base, tmp_path: Path) -> None:
    import shutil

    from retain.models import load_model, load_model_parts

    base, _ = micro_base
    for name in Path(base.path).glob("tokenizer*"):
        shutil.copy(name, tmp_path / name.name)
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "custom-arch", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}))
    (tmp_path / "configuration_x.py").write_text("raise SystemExit('remote code ran')\n")
    for load in (lambda: load_model_parts(str(tmp_path)), lambda: load_model(str(tmp_path), device="cpu")):
        with pytest.raises(ModelLoadError) as caught:
            load()
        assert caught.value.field == "model.trust_remote_code" and "trust_remote_code: true" in caught.value.fix


def test_retain_train_refuses_a_damaged_model_before_making_its_run_directory(micro_base, tmp_path: Path) -> None:
    import shutil

    from retain.config import load_config
    from retain.lab.export import export_lab_data
    from retain.training.run import run_train

    base, _ = micro_base
    model = tmp_path / "model"
    shutil.copytree(base.path, model)
    (model / "model.safetensors").write_bytes(_safetensors(GOOD_HEADER, claimed=2**60))
    export_lab_data(tmp_path / "data", size="micro", n_train=16, n_eval=8)
    config = load_config(tmp_path / "data" / "config.yaml", [f"model.name_or_path={model}", f"output.dir={tmp_path / 'runs'}"])
    with pytest.raises(ModelLoadError) as caught:
        run_train(config)
    assert caught.value.file == str(model / "model.safetensors") and not (tmp_path / "runs").exists()

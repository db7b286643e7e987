"""Hostile content: models, checkpoints, configs and environments that try to run code, leak
a secret or write outside the run directory.

- remote code is off unless asked for, and a warning names the model when it is on;
- weights load as safetensors only: a pickled ``.bin`` model or adapter is refused unread,
  and no ``torch.load`` in retain's code, or on its training and resume path, unpickles
  without ``weights_only=True`` (a checkpoint holding code is refused, the code not run);
- an ``HF_TOKEN`` in the environment never reaches any file of a run directory;
- names from configs cannot lead outside the run directory.

Strings from data (script tags, quotes) are escaped in reports by
``tests/test_report.py::test_hostile_strings_from_data_config_and_answers_are_escaped``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from retain import models
from retain.cli import app
from retain.config import RetainConfig, dump_config, load_config
from retain.errors import RetainError, RunDirError
from retain.evaluation.suites import write_suite
from retain.lab.base import lab_size
from retain.lab.domain import DomainSpec, build_domain, write_jsonl
from retain.lab.world import build_world
from retain.models import ModelLoadError, load_model, load_model_parts
from retain.rundir import RunDir

SOURCE = Path(__file__).resolve().parents[1] / "src" / "retain"
SECRET = "hf_retainTestSecret0123456789abcdefXYZ"


class _Payload:
    """A pickle that runs a command when unpickled: what a hostile ``.bin`` or ``.pt`` holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(path: Path, marker: Path) -> None:
    torch.save({"state": _Payload(marker)}, path)


def model_files(micro_base, folder: Path, *, weights: bool) -> Path:
    """Copies the micro model's config and tokenizer (and its weights, if asked) to ``folder``."""
    base, _ = micro_base
    folder.mkdir(parents=True)
    for file in base.path.iterdir():
        if file.suffix == ".json" or (weights and file.suffix == ".safetensors"):
            shutil.copy(file, folder / file.name)
    return folder


# --- remote code ------------------------------------------------------------------------


def test_remote_code_is_off_by_default_and_warns_when_on(micro_base, monkeypatch, caplog) -> None:
    assert RetainConfig().model.trust_remote_code is False
    monkeypatch.setattr(models, "_WARNED_REMOTE_CODE", set())
    base, _ = micro_base
    with caplog.at_level(logging.WARNING, logger="retain.models"):
        load_model_parts(str(base.path))
        assert "trust_remote_code" not in caplog.text
        load_model_parts(str(base.path), trust_remote_code=True)
        load_model(str(base.path), device="cpu", trust_remote_code=True)
    warnings = [record for record in caplog.records if "trust_remote_code is on" in record.getMessage()]
    assert len(warnings) == 1 and str(base.path) in warnings[0].getMessage()  # once per model


def test_a_model_shipping_code_does_not_run_it_unless_asked(micro_base, tmp_path) -> None:
    folder = model_files(micro_base, tmp_path / "custom", weights=True)
    marker = tmp_path / "ran"
    (folder / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import LlamaConfig\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil'\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises((ModelLoadError, ValueError)):
        load_model(str(folder), device="cpu")
    with pytest.raises((ModelLoadError, ValueError)):
        load_model_parts(str(folder))
    assert not marker.exists()


# --- pickles ----------------------------------------------------------------------------


def test_a_pickled_model_or_adapter_is_refused_unread(micro_base, tmp_path) -> None:
    marker = tmp_path / "ran"
    plain = model_files(micro_base, tmp_path / "bin-model", weights=False)
    plant_pickle(plain / "pytorch_model.bin", marker)
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(plain), device="cpu")
    base, _ = micro_base
    adapter = tmp_path / "bin-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(base.path), "peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]}))
    plant_pickle(adapter / "adapter_model.bin", marker)
    with pytest.raises(ModelLoadError, match="adapter_model.bin") as refused:
        load_model(str(adapter), device="cpu")
    assert "safetensors" in refused.value.fix
    assert not marker.exists()


def _unsafe_loads(tree: ast.AST) -> list[str]:
    """Returns each call in ``tree`` that could unpickle untrusted data."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        if name in ("torch.load", "load") and "torch" in name or name.endswith("torch.load"):
            value = keywords.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif name in ("pickle.load", "pickle.loads", "joblib.load", "dill.load", "cloudpickle.load",
                      "numpy.load", "np.load") and name.split(".")[0] != "np" or (
                name in ("np.load", "numpy.load")
                and not (isinstance(keywords.get("allow_pickle"), ast.Constant)
                         and keywords["allow_pickle"].value is False)) or keywords.get("use_safetensors") is not None and isinstance(keywords["use_safetensors"], ast.Constant) \
                and keywords["use_safetensors"].value is False:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_retains_code_never_unpickles_without_weights_only() -> None:
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 50
    found = {str(file.relative_to(SOURCE)): hits for file in files
             if (hits := _unsafe_loads(ast.parse(file.read_text(encoding="utf-8"))))}
    assert found == {}
    # The scan finds what it looks for.
    planted = ast.parse("import torch, pickle\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
                        "torch.load(p, weights_only=True)\npickle.loads(b)\nnp.load(f)\n"
                        "M.from_pretrained(n, use_safetensors=False)\n")
    assert [hit.split(":")[0] for hit in _unsafe_loads(planted)] == ["2", "3", "5", "6", "7"]


# --- a real micro training: the secret, torch.load on resume, a hostile checkpoint ------


@pytest.fixture(scope="module")
def trained(micro_base, tmp_path_factory):
    """A micro `retain train` through the CLI with HF_TOKEN set, then a resume of it from its
    first checkpoint, with every torch.load call recorded."""
    base, _ = micro_base
    root = tmp_path_factory.mktemp("hostile")
    task = build_domain(DomainSpec(n_train=32, n_validation=8, n_test=8, n_ood=8))
    for split, rows in (("train", task.train), ("validation", task.validation), ("test", task.test)):
        write_jsonl(rows, root / f"{split}.jsonl")
    write_suite(build_world(lab_size("micro").world).probes, root / "probes.jsonl")
    settings = {
        "model": {"name_or_path": str(base.path)},
        "data": {"train": str(root / "train.jsonl"), "validation": str(root / "validation.jsonl"),
                 "eval": str(root / "test.jsonl")},
        "probes": {"suites": [str(root / "probes.jsonl")]},
        "method": {"use": ["full"]},  # optimizer state of the whole model: the largest pickle
        "train": {"max_steps": 4, "batch_size": 8},
        "guards": {"every_steps": 2, "loss": {"max_loss_after_warmup": 10.0}},
        "eval": {"perturbations": []},
        "audit": {"allow_small_data": True, "task": "classification"},
        "output": {"dir": str(root / "runs")},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(settings))
    calls: list[dict] = []
    original = torch.load

    def recording_load(*args, **kwargs):
        calls.append({"file": str(args[0] if args else kwargs.get("f")), "weights_only": kwargs.get("weights_only")})
        return original(*args, **kwargs)

    environment = {"HF_TOKEN": SECRET, "HUGGING_FACE_HUB_TOKEN": SECRET, "OMP_NUM_THREADS": "1",
                   "RETAIN_CACHE_DIR": str(root / "cache")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "load", recording_load)
        runner = CliRunner()
        first = runner.invoke(app, ["-q", "train", str(root / "config.yaml"), "--name", "run"], env=environment)
        assert first.exit_code == 0, first.output
        # As if killed after its first checkpoint: the resume loads checkpoint-2's optimizer,
        # scheduler and random state and trains steps 3 and 4 again.
        shutil.rmtree(root / "runs" / "run" / "checkpoints" / "checkpoint-4")
        resumed = runner.invoke(app, ["-q", "train", str(root / "config.yaml"), "--name", "run", "--resume"],
                                env=environment)
        assert resumed.exit_code == 0, resumed.output
    return {"root": root, "run": root / "runs" / "run", "calls": calls,
            "output": first.output + resumed.output}


def test_hf_token_never_reaches_the_run_directory(trained) -> None:
    files = [path for path in trained["run"].rglob("*") if path.is_file()]
    assert len(files) > 20 and any(path.suffix == ".pt" for path in files)  # checkpoints too, binaries
    leaked = [str(path.relative_to(trained["run"])) for path in files if SECRET.encode() in path.read_bytes()]
    assert leaked == []
    assert SECRET not in trained["output"]
    meta = json.loads((trained["run"] / "meta.json").read_text())
    # The environment is recorded, but only what changes results.
    assert meta["environment"]["OMP_NUM_THREADS"] == "1" and "HF_TOKEN" not in meta["environment"]


def test_training_and_resume_unpickle_with_weights_only(trained) -> None:
    loaded = {Path(call["file"]).name for call in trained["calls"]}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= loaded, trained["calls"]  # the resume read them
    assert [call for call in trained["calls"] if call["weights_only"] is not True] == []


def test_a_checkpoint_holding_code_is_refused_and_the_code_not_run(trained, micro_base, tmp_path) -> None:
    # 1. The real resume of a run whose checkpoints' optimizer states were replaced by a pickle
    #    that runs a command: the checkpoints are not loaded as they are.
    run = tmp_path / "runs" / "run"
    shutil.copytree(trained["run"], run)
    config = yaml.safe_load((trained["root"] / "config.yaml").read_text())
    config["output"]["dir"] = str(tmp_path / "runs")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # The copy's own config names the new output.dir too, or the resume is refused as another config.
    (run / "config.yaml").write_text(dump_config(load_config(tmp_path / "config.yaml", ["output.name=run"])))
    marker = tmp_path / "ran"
    # As if killed after checkpoint-2, whose optimizer state was then replaced by a pickle
    # that runs a command, and resealed (the seal lists sizes, so it would see the change
    # otherwise): the resume must refuse the file, not run it.
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    checkpoint = run / "checkpoints" / "checkpoint-2"
    plant_pickle(checkpoint / "optimizer.pt", marker)
    seal = json.loads((checkpoint / "retain_state.json").read_text())
    seal["files"]["optimizer.pt"] = (checkpoint / "optimizer.pt").stat().st_size
    (checkpoint / "retain_state.json").write_text(json.dumps(seal))
    result = CliRunner().invoke(app, ["-q", "train", str(tmp_path / "config.yaml"), "--name", "run", "--resume"],
                                env={"OMP_NUM_THREADS": "1", "RETAIN_CACHE_DIR": str(tmp_path / "cache")})
    # A RetainError: the CLI's main() prints it as one line and exits 2.
    assert isinstance(result.exception, RetainError), result.output
    assert "checkpoint-2 holds a pickle that loading with weights_only refuses" in str(result.exception)
    assert result.exception.file == str(checkpoint) and not marker.exists()
    # 2. The trainer's own loaders, the ones a resume calls, on each pickled file of a checkpoint:
    #    weights_only=True refuses the payload.
    from transformers import Trainer, TrainingArguments

    base, _ = micro_base
    trainer = Trainer(model=load_model(str(base.path), device="cpu").model,
                      args=TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none"))
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    for name, loader in (("optimizer.pt", trainer._load_optimizer_and_scheduler),
                         ("scheduler.pt", trainer._load_optimizer_and_scheduler),
                         ("rng_state.pth", trainer._load_rng_state)):
        checkpoint = tmp_path / f"poisoned-{name}"
        shutil.copytree(trained["run"] / "checkpoints" / "checkpoint-4", checkpoint)
        plant_pickle(checkpoint / name, marker)
        with pytest.raises(Exception, match="(?i)weights.only"):
            loader(str(checkpoint))
        assert not marker.exists(), name


# --- paths from configs -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escaped", "/tmp/absolute", "a/b", "..", ".hidden"])
def test_a_run_name_cannot_lead_out_of_output_dir(name, tmp_path) -> None:
    (tmp_path / "train.jsonl").write_text('{"prompt": "Is the sky blue?", "response": "yes"}\n')
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"train": str(tmp_path / "train.jsonl")}, "output": {"dir": str(tmp_path / "runs")}}))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "config.yaml"), "--set", f"output.name={name}"])
    assert isinstance(result.exception, RunDirError) and "invalid run name" in str(result.exception)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.yaml", "train.jsonl"]


def test_files_written_into_a_run_stay_inside_it(tmp_path) -> None:
    run = RunDir.create(tmp_path / "runs", "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    (run.path / "link").symlink_to(outside)
    for name in ("../escaped.json", str(tmp_path / "absolute.json"), "link/through-a-link.json",
                 "checkpoints/../../escaped.json"):
        with pytest.raises(RunDirError, match="leads outside the run directory"):
            run.write_json(name, {"x": 1})
    run.write_json("audit.json", {"x": 1})
    assert run.inside("checkpoints/start") == run.path / "checkpoints" / "start"
    assert not list(outside.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["outside", "runs"]

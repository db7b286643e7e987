"""Determinism: the same config and seed give the same metrics on the same machine, and the run
directory records what reproducing it takes (versions, git commit, config, input hashes)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from retain.config import RetainConfig, dump_config
from retain.io import read_jsonl
from retain.lab.export import export_lab_data
from retain.training.run import run_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(micro_base, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("determinism")
    export_lab_data(root, size="micro", n_train=32, n_eval=8)
    return root


def config(micro_base, data: Path, name: str, seed: int) -> RetainConfig:
    base, _ = micro_base
    return RetainConfig.model_validate({
        "model": {"name_or_path": str(base.path)},
        "data": {"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl"),
                 "eval": str(data / "test.jsonl"), "ood": str(data / "ood.jsonl")},
        "probes": {"suites": [str(data / "probes.jsonl")]},
        "method": {"use": ["lora", "replay"]},  # random LoRA init and a sampled replay mix
        "train": {"max_steps": 4, "batch_size": 8, "lr": 1e-3, "seed": seed},
        "guards": {"every_steps": 2, "loss": {"max_loss_after_warmup": 10.0}},
        "eval": {"perturbations": []},
        "audit": {"allow_small_data": True, "task": "classification"},
        "output": {"dir": str(data / "runs"), "name": name},
    })


def metrics(run_dir: Path) -> dict:
    """Everything a run measured, without wall times."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    final = json.loads((run_dir / "final_eval.json").read_text())
    return {
        "losses": [(r["step"], r["loss"]) for r in records if r.get("event") == "log" and "loss" in r],
        "checks": [{key: value for key, value in r.items() if key not in ("time", "seconds")}
                   for r in records if r.get("event") == "check"],
        "probes": final["probes"],
        "task": final["task"],
        "drift": final["drift"],
        "verdict": summary["verdict"],
    }


@pytest.fixture(scope="module")
def runs(micro_base, data) -> dict[str, Path]:
    """Three runs in one process, one after the other: whatever the first leaves behind (random
    state, the cached base evaluation) must not change the second."""
    quiet = {"progress": False, "echo": lambda line: None}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETAIN_CACHE_DIR", str(data / "cache"))  # module scope: set before the autouse one
        return {name: run_train(config(micro_base, data, name, seed), **quiet).run_dir
                for name, seed in (("first", 0), ("second", 0), ("other-seed", 1))}


def test_the_same_config_and_seed_give_the_same_metrics(runs) -> None:
    first, second = metrics(runs["first"]), metrics(runs["second"])
    assert len(first["losses"]) == 4 and len(first["checks"]) == 3
    assert first == second  # exactly: every loss, check, probe answer and verdict
    # The seed matters, so the equality above is not vacuous.
    assert metrics(runs["other-seed"])["losses"] != first["losses"]


def test_meta_records_what_reproducing_the_run_takes(runs, data, micro_base) -> None:
    run_dir = runs["first"]
    meta = json.loads((run_dir / "meta.json").read_text())
    import peft
    import torch
    import transformers

    import retain

    assert meta["retain_version"] == retain.__version__
    assert meta["packages"] == {"torch": torch.__version__, "transformers": transformers.__version__,
                                "peft": peft.__version__}
    assert {"accelerate", "tokenizers", "numpy"} <= set(meta["dependencies"])
    # These tests run from retain's git checkout: the commit, and whether it was edited since.
    assert re.fullmatch(r"[0-9a-f]{40}", meta["git_commit"]) and isinstance(meta["git_dirty"], bool)
    assert meta["torch_threads"] == torch.get_num_threads() and meta["deterministic_algorithms"] is False
    # The config as resolved, and the sha256 of every file it names.
    assert (run_dir / "config.yaml").read_text() == dump_config(config(micro_base, data, "first", 0))
    for field, name in (("train", "train.jsonl"), ("validation", "validation.jsonl"), ("eval", "test.jsonl"),
                        ("ood", "ood.jsonl"), ("probes.suites.0", "probes.jsonl")):
        assert meta["data"][field] == hashlib.sha256((data / name).read_bytes()).hexdigest(), field

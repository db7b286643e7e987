"""Every registered method through `retain train`, alone and beside lora and full, on the micro
lab model for a few steps: the loss stays finite, each hook the method overrides is called,
the saved model loads back, and the method's effect is visible in what was trained.

One tester for all methods (as PEFT's tests/testing_common.py is): a method registered
without an entry in ``EFFECTS`` fails here until its effect is written down.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file

from retain.config import RetainConfig
from retain.config.methods import base_methods
from retain.data.encoding import IGNORE_INDEX
from retain.io import read_jsonl
from retain.lab.export import export_lab_data
from retain.methods import Method, registered
from retain.methods.rehearsal import general_count
from retain.models import load_model
from retain.training.run import run_train
from retain.training.sampling import MixedSourceSampler
from retain.training.trainer import RetainTrainer

pytestmark = pytest.mark.slow

HOOKS = ("check", "load_kwargs", "transform_rows", "prepare_model", "param_groups", "loss", "finish", "logs")
STEPS = 4
TASK_ROWS = 48
# Settings that keep each method's own preparation to seconds on the micro model.
QUICK = {"ewc": {"samples": 16}, "token_forget": {"reference_steps": 2}, "self_augment": {"max_new_tokens": 8}}


def _combinations() -> list[tuple[str, ...]]:
    combos: list[tuple[str, ...]] = []
    for name in registered():
        if name in base_methods():
            combos.append((name,))
        else:
            combos += [("lora", name), ("full", name)]
    return combos


@pytest.fixture(scope="module")
def lab(micro_base, tmp_path_factory) -> dict[str, Path]:
    base, _ = micro_base
    root = tmp_path_factory.mktemp("matrix-data")
    export_lab_data(root, size="micro", n_train=TASK_ROWS, n_eval=8)
    return {"root": root, "model": base.path}


def _config(lab: dict[str, Path], out: Path, methods: tuple[str, ...]) -> RetainConfig:
    root = lab["root"]
    return RetainConfig.model_validate({
        "model": {"name_or_path": str(lab["model"])},
        "data": {"train": str(root / "train.jsonl"), "validation": str(root / "validation.jsonl"),
                 "eval": str(root / "test.jsonl")},
        "probes": {"suites": [str(root / "probes.jsonl")]},
        "method": {"use": list(methods), **{name: QUICK[name] for name in methods if name in QUICK}},
        # A learning rate that moves every trained weight visibly in a few steps.
        "train": {"max_steps": STEPS, "batch_size": 8, "lr": 2e-3, "warmup_ratio": 0.0},
        "guards": {"enabled": False},
        "eval": {"perturbations": []},
        "audit": {"allow_small_data": True, "task": "classification"},
        "output": {"dir": str(out), "name": "-".join(methods)},
    })


class Spy:
    """Counts every call of each hook a method class overrides, and keeps what some return."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, classes: list[type[Method]]) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.overridden: set[tuple[str, str]] = set()
        self.returned: dict[tuple[str, str], Any] = {}
        self.batches: list[dict[str, torch.Tensor]] = []
        for cls in classes:
            for hook in HOOKS:
                if getattr(cls, hook) is not getattr(Method, hook):
                    self.overridden.add((cls.name, hook))
                    monkeypatch.setattr(cls, hook, self._wrap(cls.name, hook, getattr(cls, hook)))
        compute_loss = RetainTrainer.compute_loss

        def seen(trainer, model, inputs, *args, **kwargs):
            self.batches.append({key: value.detach().clone() for key, value in inputs.items()})
            return compute_loss(trainer, model, inputs, *args, **kwargs)

        monkeypatch.setattr(RetainTrainer, "compute_loss", seen)
        self.orders: list[tuple[dict[int, str], list[int]]] = []  # each epoch's row order, and each row's source
        draw = MixedSourceSampler.__iter__

        def drawn(sampler):
            order = list(draw(sampler))
            sources = {index: source for source, members in sampler.members.items() for index in members}
            self.orders.append((sources, order))
            return iter(order)

        monkeypatch.setattr(MixedSourceSampler, "__iter__", drawn)

    def _wrap(self, name: str, hook: str, function: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            self.calls[(name, hook)] += 1
            result = function(*args, **kwargs)
            self.returned[(name, hook)] = result
            return result

        return wrapped


def _base_weights(lab: dict[str, Path]) -> dict[str, torch.Tensor]:
    return load_file(str(Path(lab["model"]) / "model.safetensors"))


def _saved_full_weights(run: Path) -> dict[str, torch.Tensor]:
    loaded = load_model(str(run / "model"), device="cpu", progress=False)
    model = loaded.model.merge_and_unload() if loaded.is_adapter else loaded.model
    return {name: value.detach() for name, value in model.state_dict().items()}


def _changed_share(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after != before).float().mean())


def _layer_weight(weights: dict[str, torch.Tensor], layer: int, module: str = "self_attn.q_proj") -> torch.Tensor:
    return weights[f"model.layers.{layer}.{module}.weight"]


# --- each method's visible effect ------------------------------------------------------


def _full(ctx: dict) -> None:
    base, saved = ctx["base"], ctx["saved"]
    assert not ctx["adapter"]
    assert all(_changed_share(_layer_weight(saved, layer), _layer_weight(base, layer)) > 0.5
               for layer in range(ctx["layers"]))


def _lora(ctx: dict) -> None:
    assert ctx["adapter"]
    adapters = load_file(str(ctx["run"] / "model" / "adapter_model.safetensors"))
    lora_b = [value for name, value in adapters.items() if "lora_B" in name]
    assert lora_b and all(value.abs().sum() > 0 for value in lora_b)  # B starts at zero: it trained


def _freeze(ctx: dict) -> None:
    base, saved, layers = ctx["base"], ctx["saved"], ctx["layers"]
    frozen = layers // 2  # method.freeze.fraction 0.5
    for layer in range(layers):
        moved = _changed_share(_layer_weight(saved, layer), _layer_weight(base, layer))
        assert (moved == 0.0) if layer < frozen else (moved > 0.0), (layer, moved)
    tied = "lm_head.weight" not in base
    head = "model.embed_tokens.weight" if tied else "lm_head.weight"
    if ctx["base_method"] == "full":  # the layers only: embeddings and head still train
        assert _changed_share(saved[head], base[head]) > 0


def _llrd(ctx: dict) -> None:
    groups = ctx["spy"].returned[("llrd", "param_groups")]
    rates = sorted({group["lr"] for group in groups})
    assert len(rates) >= ctx["layers"] and rates[0] < rates[-1]


def _penalty(name: str) -> Callable[[dict], None]:
    def check(ctx: dict) -> None:
        logged = [record[f"{name}_penalty"] for record in ctx["metrics"] if f"{name}_penalty" in record]
        assert len(logged) == STEPS and logged[0] >= 0 and max(logged) > 0

    return check


def _rehearsal(name: str) -> Callable[[dict], None]:
    def check(ctx: dict) -> None:
        rows = ctx["summary"]["rehearsal"]["rows"].get(name, 0)
        wanted = general_count(TASK_ROWS, ctx["config"].method.replay.ratio if name == "replay"
                               else ctx["config"].method.self_augment.ratio)
        assert (rows == wanted) if name == "replay" else (0 < rows <= wanted)
        sources, order = ctx["spy"].orders[0]  # the sampler's first epoch: every batch holds a general row
        batches = [order[start:start + 8] for start in range(0, len(order) - 7, 8)]
        assert batches and all(any(sources[index] == name for index in batch) for batch in batches)

    return check


def _token_forget(ctx: dict) -> None:
    negatives = [batch.get("negative_labels") for batch in ctx["spy"].batches]
    assert all(batch is not None and (batch != IGNORE_INDEX).any() for batch in negatives)


def _fapm(ctx: dict) -> None:
    base, saved = ctx["base"], ctx["saved"]
    keep = ctx["config"].method.fapm.keep
    for layer in range(ctx["layers"]):
        for module in ("self_attn.q_proj", "mlp.up_proj"):
            before = _layer_weight(base, layer, module)
            share = _changed_share(_layer_weight(saved, layer, module), before)
            assert 0 < share <= round(keep * before.numel()) / before.numel(), (layer, module, share)
    assert not ctx["adapter"]  # under lora the pruned update is merged into full weights


EFFECTS: dict[str, Callable[[dict], None]] = {
    "full": _full, "lora": _lora, "freeze": _freeze, "llrd": _llrd, "ewc": _penalty("ewc"),
    "l2sp": _penalty("l2sp"), "replay": _rehearsal("replay"), "self_augment": _rehearsal("self_augment"),
    "token_forget": _token_forget, "fapm": _fapm,
}
NOT_HERE = {"qlora": "needs a CUDA GPU and bitsandbytes; its refusal on CPU is tested in test_methods_adapters.py"}


def test_every_registered_method_has_its_effect_written_down() -> None:
    missing = set(registered()) - set(EFFECTS) - set(NOT_HERE)
    assert not missing, f"add an effect check to EFFECTS for {sorted(missing)}"


@pytest.mark.parametrize("methods", _combinations(), ids="+".join)
def test_a_method_trains_calls_its_hooks_reloads_and_shows_its_effect(lab, tmp_path, monkeypatch, methods) -> None:
    name = methods[-1]
    if name in NOT_HERE and not torch.cuda.is_available():
        pytest.skip(NOT_HERE[name])
    config = _config(lab, tmp_path, methods)
    table = registered()
    spy = Spy(monkeypatch, [table[method] for method in {config.method.base, *methods}])
    summary = run_train(config, progress=False, echo=lambda line: None).summary.to_dict()
    run = tmp_path / "-".join(methods)
    metrics = [record for record in read_jsonl(run / "metrics.jsonl") if record.get("event") == "log"]
    losses = [record["loss"] for record in metrics if "loss" in record]
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses)
    missed = sorted(key for key in spy.overridden if spy.calls[key] == 0)
    assert not missed, f"hooks never called: {missed}"
    loaded = load_model(str(run / "model"), device="cpu", progress=False)  # the saved model reloads
    base = _base_weights(lab)
    EFFECTS[name]({
        "run": run, "summary": summary, "config": config, "spy": spy, "metrics": metrics, "base": base,
        "saved": _saved_full_weights(run), "adapter": loaded.is_adapter, "base_method": config.method.base,
        "layers": json.loads((Path(lab["model"]) / "config.json").read_text())["num_hidden_layers"],
    })

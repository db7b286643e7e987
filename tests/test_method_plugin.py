"""A method added in one file: a toy method, its settings and its class defined here and
registered from this test, is listed by ``method.use``, configured under ``method.toy``,
placed in the hook order it asks for, and trained with through ``retain train``; nothing
else in retain is edited for it. Unregistered, it is unknown again.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
from pydantic import Field

from retain.config import load_config
from retain.config import registry as config_registry
from retain.config.methods import method_names
from retain.config.section import Section
from retain.config.walk import dotted_fields
from retain.errors import ConfigError
from retain.io import read_jsonl
from retain.lab.export import export_lab_data
from retain.methods import Method, methods_for, register, registered
from retain.methods.registry import unregister
from retain.training.run import run_train


class ToySettings(Section):
    """A toy method's settings: a factor on the loss."""

    scale: float = Field(1.0, gt=0, description="Each batch's loss is multiplied by this.")


class Toy(Method):
    """Multiplies each batch's loss by ``method.toy.scale`` (a test's toy method)."""

    name = "toy"
    paper = "none: the registry's test"
    settings_class = ToySettings
    after = "llrd"

    def loss(self, loss: torch.Tensor, model, inputs, outputs, context) -> torch.Tensor:
        context.store["toy_losses"] = context.store.get("toy_losses", 0) + 1
        return loss * self.settings.scale

    def logs(self) -> dict[str, float]:
        return {"toy_scale": self.settings.scale}


@pytest.fixture
def toy():
    register(Toy)
    yield Toy
    unregister("toy")


def test_toy_takes_its_place_in_the_hook_order_and_the_config(toy) -> None:
    names = method_names()
    assert names.index("toy") == names.index("llrd") + 1
    assert list(registered()).index("toy") == names.index("toy")
    assert "method.toy.scale" in dotted_fields()  # config show, --set and the reference see it

    config = load_config(None, ["method.use=[lora,toy,freeze]", "method.toy.scale=2.5"])
    assert config.method.toy.scale == 2.5
    assert [type(method).__name__ for method in methods_for(config)] == ["Lora", "Freeze", "Toy"]
    assert load_config(None).method.toy.scale == 1.0  # a section of defaults, like every method's


def test_toy_settings_are_checked_like_any_setting(toy) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["method.use=[lora,toy]", "method.toy.scale=-1"])
    assert caught.value.field == "method.toy.scale"
    assert "greater than 0" in str(caught.value)


def test_a_method_cannot_register_twice_or_shadow_a_setting(toy) -> None:
    class Other(Toy):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register(Other)

    class Use(Method):
        name = "use"
        paper = "none"

    with pytest.raises(ValueError, match="shadow"):
        register(Use)
    assert "use" not in method_names()


def test_unregistered_toy_is_unknown_again(toy) -> None:
    unregister("toy")
    try:
        with pytest.raises(ConfigError) as caught:
            load_config(None, ["method.use=[lora,toy]"])
        assert "unknown method 'toy'" in str(caught.value)
        with pytest.raises(ConfigError):
            load_config(None, ["method.toy.scale=2"])
        assert "method.toy.scale" not in dotted_fields()
    finally:
        register(Toy)  # the fixture unregisters it


def test_a_config_naming_an_unknown_method_loads_the_method_plugins_once(monkeypatch) -> None:
    # A package whose import registers Toy, as retain.methods' import registers its files.
    loaded: list[str] = []

    class Plugin:
        name = "toy-package"

        def load(self) -> None:
            loaded.append(self.name)
            register(Toy)

    monkeypatch.setattr(config_registry, "entry_points", lambda group: [Plugin()] if group == "retain.methods" else [])
    try:
        with pytest.raises(ConfigError):
            load_config(None, ["train.lr=-1"])  # an error outside `method` loads nothing
        assert loaded == []
        config = load_config(None, ["method.use=[lora,toy]", "method.toy.scale=3"])
        assert loaded == ["toy-package"] and config.method.toy.scale == 3
    finally:
        unregister("toy")


def test_retain_declares_its_methods_package_as_a_plugin() -> None:
    points = importlib.metadata.entry_points(group="retain.methods")
    assert "retain.methods" in {point.value for point in points}


@pytest.mark.slow
def test_toy_trains_through_retain_train(toy, micro_base, tmp_path: Path) -> None:
    base, _ = micro_base
    data = tmp_path / "data"
    export_lab_data(data, size="micro", n_train=16, n_eval=8)
    config = load_config(None, [
        f"model.name_or_path={base.path}", f"data.train={data / 'train.jsonl'}",
        f"data.eval={data / 'test.jsonl'}", f"probes.suites=[{data / 'probes.jsonl'}]",
        "method.use=[lora,toy]", "method.toy.scale=0.5", "train.max_steps=3", "train.batch_size=8",
        "guards.enabled=false", "eval.perturbations=[]",
        "audit.allow_small_data=true", "audit.task=classification", f"output.dir={tmp_path}", "output.name=toy",
    ])
    result = run_train(config)
    logged = [record for record in read_jsonl(result.run_dir / "metrics.jsonl") if "toy_scale" in record]
    assert [record["toy_scale"] for record in logged] == [0.5] * 3
    assert "toy" in (result.run_dir / "config.yaml").read_text()
    assert load_config(result.run_dir / "config.yaml").method.toy.scale == 0.5

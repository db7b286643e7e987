"""freeze and llrd on tiny random Llamas, checked against names and rates computed directly."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from tiny_models import tiny_llama
from transformers import TrainingArguments

from retain.config import load_config
from retain.data.prompting import PromptFormat
from retain.errors import ConfigError
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world
from retain.methods import MethodContext, methods_for
from retain.methods.adapters import Lora
from retain.methods.layers import Freeze, LayerMap, Llrd
from retain.training.trainer import RetainTrainer

LR = 1e-3
LAYER = re.compile(r"\.layers\.(\d+)\.")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(build_world().documents, 384, 128)


def _model(tokenizer, layers: int = 4, tied: bool = False):
    torch.manual_seed(0)
    return tiny_llama(tokenizer, num_hidden_layers=layers, tie_word_embeddings=tied)


def _context(config, tokenizer, tmp_path, lines: list[str] | None = None) -> MethodContext:
    echo = lines.append if lines is not None else (lambda line: None)
    return MethodContext(config=config, tokenizer=tokenizer, prompt_format=PromptFormat.raw(),
                         cache_dir=tmp_path, echo=echo)


def _prepared(overrides: list[str], tokenizer, tmp_path, layers: int = 4, tied: bool = False):
    """Returns the config and the model after every method's prepare_model, as run_train does."""
    config = load_config(None, [f"train.lr={LR}", *overrides])
    model = _model(tokenizer, layers, tied)
    context = _context(config, tokenizer, tmp_path)
    for method in methods_for(config):
        model = method.prepare_model(model, context)
    return config, model


def _layer(name: str) -> int | None:
    found = LAYER.search(name)
    return int(found.group(1)) if found else None


def _trainable_names(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def _lora(model, tokenizer, tmp_path):
    config = load_config(None, ["method=lora"])
    return Lora(config).prepare_model(model, _context(config, tokenizer, tmp_path))


def _freeze(model, overrides: list[str], tokenizer, tmp_path, lines: list[str] | None = None):
    config = load_config(None, overrides)
    return Freeze(config).prepare_model(model, _context(config, tokenizer, tmp_path, lines))


# --- LayerMap ---------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True])
def test_layer_map_finds_each_parameters_layer(tokenizer, tmp_path, wrapped: bool) -> None:
    model = _model(tokenizer, layers=3)
    if wrapped:
        model = _lora(model, tokenizer, tmp_path)
    where = LayerMap.of(model)
    assert where.count == 3
    for name, _ in model.named_parameters():
        assert where.layer(name) == _layer(name), name


def test_layer_map_embeddings_are_the_input_embeddings(tokenizer) -> None:
    model = _model(tokenizer, layers=2)
    assert LayerMap.of(model).embeddings == {id(model.model.embed_tokens.weight)}


# --- freeze -----------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "bottom"), [
    (["method.freeze.layers=1"], 1),
    (["method.freeze.layers=3"], 3),
    (["method.freeze.fraction=0.5"], 2),
    (["method.freeze.fraction=0.6"], 2),  # floor(0.6 x 4)
    (["method.freeze.fraction=0.2"], 0),
    (["method.freeze.fraction=1.0"], 4),
])
def test_freeze_full_fine_tuning_freezes_the_bottom_layers(tokenizer, tmp_path, overrides, bottom) -> None:
    _, model = _prepared(["method=[full,freeze]", "method.freeze.embeddings=false", *overrides],
                         tokenizer, tmp_path)
    everything = {name for name, _ in model.named_parameters()}
    expected = {name for name in everything if _layer(name) is None or _layer(name) >= bottom}
    assert _trainable_names(model) == expected


def test_freeze_lora_freezes_the_adapters_of_the_bottom_layers(tokenizer, tmp_path) -> None:
    model = _lora(_model(tokenizer), tokenizer, tmp_path)
    adapters = _trainable_names(model)
    assert adapters and all("lora_" in name for name in adapters)
    lines: list[str] = []
    model = _freeze(model, ["method=[lora,freeze]", "method.freeze.layers=3"], tokenizer, tmp_path, lines)
    assert _trainable_names(model) == {name for name in adapters if _layer(name) == 3}
    training = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    assert f"{training:,} of" in lines[0]


def test_freeze_lora_by_fraction(tokenizer, tmp_path) -> None:
    model = _lora(_model(tokenizer), tokenizer, tmp_path)
    adapters = _trainable_names(model)
    model = _freeze(model, ["method=[lora,freeze]", "method.freeze.fraction=0.75"], tokenizer, tmp_path)
    assert _trainable_names(model) == {name for name in adapters if _layer(name) == 3}


def test_freeze_embeddings_untied(tokenizer, tmp_path, caplog) -> None:
    model = _model(tokenizer)
    with caplog.at_level(logging.WARNING, logger="retain.methods"):
        model = _freeze(model, ["method=[full,freeze]", "method.freeze.layers=1", "method.freeze.embeddings=true"],
                        tokenizer, tmp_path)
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters()
                      if name == "model.embed_tokens.weight" or _layer(name) == 0}
    assert model.lm_head.weight.requires_grad
    assert "tied" not in caplog.text


def test_freeze_embeddings_tied_freezes_the_head_and_says_so(tokenizer, tmp_path, caplog) -> None:
    model = _model(tokenizer, tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with caplog.at_level(logging.WARNING, logger="retain.methods"):
        model = _freeze(model, ["method=[full,freeze]", "method.freeze.layers=0", "method.freeze.embeddings=true"],
                        tokenizer, tmp_path)
    assert not model.lm_head.weight.requires_grad
    assert "tied embeddings" in caplog.text and "freezing the embeddings freezes the head" in caplog.text
    assert _trainable_names(model) == {name for name, _ in model.named_parameters()
                                       if name != "model.embed_tokens.weight"}


@pytest.mark.parametrize("tied", [True, False])
def test_freeze_by_default_freezes_the_layers_only(tokenizer, tmp_path, tied) -> None:
    lines: list[str] = []
    model = _freeze(_model(tokenizer, tied=tied), ["method=[full,freeze]", "method.freeze.layers=2"],
                    tokenizer, tmp_path, lines)
    assert model.model.embed_tokens.weight.requires_grad and model.lm_head.weight.requires_grad
    assert "embeddings" not in lines[0] and "head" not in lines[0]


def test_freeze_head_untied_freezes_the_head_alone(tokenizer, tmp_path, caplog) -> None:
    lines: list[str] = []
    with caplog.at_level(logging.WARNING, logger="retain.methods"):
        model = _freeze(_model(tokenizer), ["method=[full,freeze]", "method.freeze.layers=0", "method.freeze.head=true"],
                        tokenizer, tmp_path, lines)
    assert not model.lm_head.weight.requires_grad and model.model.embed_tokens.weight.requires_grad
    assert "and the output head frozen" in lines[0] and "tied" not in caplog.text


def test_freeze_head_tied_freezes_the_shared_weight_and_says_so(tokenizer, tmp_path, caplog) -> None:
    lines: list[str] = []
    with caplog.at_level(logging.WARNING, logger="retain.methods"):
        model = _freeze(_model(tokenizer, tied=True),
                        ["method=[full,freeze]", "method.freeze.layers=0", "method.freeze.head=true"],
                        tokenizer, tmp_path, lines)
    assert not model.model.embed_tokens.weight.requires_grad
    assert "freezing the head freezes the embeddings" in caplog.text
    assert "the input embeddings and the output head (one tied weight) frozen" in lines[0]


def test_freeze_more_layers_than_the_model_has_is_a_config_error(tokenizer, tmp_path) -> None:
    model = _model(tokenizer)
    with pytest.raises(ConfigError, match="has 4 layers") as caught:
        _freeze(model, ["method=[full,freeze]", "method.freeze.layers=5"], tokenizer, tmp_path)
    assert caught.value.field == "method.freeze.layers" and caught.value.fix
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_freeze_of_everything_trainable_is_a_config_error(tokenizer, tmp_path) -> None:
    model = _lora(_model(tokenizer), tokenizer, tmp_path)
    adapters = _trainable_names(model)
    with pytest.raises(ConfigError, match="leaves nothing to train") as caught:
        _freeze(model, ["method=[lora,freeze]", "method.freeze.layers=4"], tokenizer, tmp_path)
    assert caught.value.field == "method.freeze.layers"
    assert _trainable_names(model) == adapters  # nothing changed before the error


# --- llrd -------------------------------------------------------------------------------


def _expected_lr(name: str, layers: int, factor: float) -> float:
    """The rate llrd must give ``name``: the direct formula of the method's docstring."""
    layer = _layer(name)
    if layer is not None:
        return LR * factor ** (layers - 1 - layer)
    return LR * factor**layers if "embed_tokens" in name else LR


def _default_groups(model, weight_decay: float = 0.1) -> list[dict]:
    """The two groups RetainTrainer.create_optimizer starts from (decay, no decay)."""
    named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    decayed = [(name, parameter) for name, parameter in named if parameter.ndim >= 2]
    other = [(name, parameter) for name, parameter in named if parameter.ndim < 2]
    return [{"params": [p for _, p in part], "names": [n for n, _ in part], "weight_decay": decay}
            for part, decay in ((decayed, weight_decay), (other, 0.0))]


@pytest.mark.parametrize("layers", [2, 3])
def test_llrd_gives_each_parameter_the_formula_rate(tokenizer, tmp_path, layers: int) -> None:
    config, model = _prepared(["method=[full,llrd]", "method.llrd.factor=0.5"], tokenizer, tmp_path, layers)
    incoming = _default_groups(model)
    decay_of = {name: group["weight_decay"] for group in incoming for name in group["names"]}
    groups = Llrd(config).param_groups(incoming, model, _context(config, tokenizer, tmp_path))
    # One group per (weight decay, rate): the head and final norm share the top layer's rate,
    # so the decayed matrices make layers + 1 (embeddings) groups, the norms layers groups.
    assert len(groups) == (layers + 1) + layers
    seen = []
    for group in groups:
        assert group["params"] and len(group["params"]) == len(group["names"])
        for name, parameter in zip(group["names"], group["params"], strict=True):
            assert group["lr"] == pytest.approx(_expected_lr(name, layers, 0.5)), name
            assert group["weight_decay"] == decay_of[name]
            assert parameter is model.get_parameter(name)
            seen.append(name)
    assert sorted(seen) == sorted(decay_of)


def test_llrd_on_lora_splits_the_adapters_by_layer(tokenizer, tmp_path) -> None:
    config, model = _prepared(["method=[lora,llrd]", "method.llrd.factor=0.8"], tokenizer, tmp_path, 3)
    groups = Llrd(config).param_groups(_default_groups(model), model, _context(config, tokenizer, tmp_path))
    assert sorted(group["lr"] for group in groups) == pytest.approx([LR * 0.8**2, LR * 0.8, LR])
    for group in groups:
        assert all(group["lr"] == pytest.approx(_expected_lr(name, 3, 0.8)) for name in group["names"])


def test_llrd_drops_empty_groups(tokenizer, tmp_path) -> None:
    config, model = _prepared(["method=[full,llrd]"], tokenizer, tmp_path, 2)
    empty = {"params": [], "names": [], "weight_decay": 0.0}
    groups = Llrd(config).param_groups([empty], model, _context(config, tokenizer, tmp_path))
    assert groups == []


def test_llrd_sgd_step_moves_each_layer_by_its_rate(tokenizer, tmp_path) -> None:
    config, model = _prepared(["method=[full,llrd]", "method.llrd.factor=0.5"], tokenizer, tmp_path, 3)
    groups = Llrd(config).param_groups(_default_groups(model, 0.0), model, _context(config, tokenizer, tmp_path))
    optimizer = torch.optim.SGD([{key: value for key, value in group.items() if key != "names"} for group in groups],
                                lr=LR)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    for name, parameter in model.named_parameters():
        step = before[name] - parameter.detach()  # SGD: the step is lr x grad, and grad is 1
        expected = torch.full_like(step, _expected_lr(name, 3, 0.5))
        assert torch.allclose(step, expected, rtol=1e-3, atol=0), name


def _optimizer_rates(overrides: list[str], tokenizer, tmp_path):
    """Prepares a 3-layer model with the methods of ``overrides`` and builds RetainTrainer's
    optimizer, as a run does; returns the methods, the model and each weight's rate."""
    config = load_config(None, [f"train.lr={LR}", *overrides])
    model = _model(tokenizer, layers=3)
    context = _context(config, tokenizer, tmp_path)
    methods = methods_for(config)
    for method in methods:
        model = method.prepare_model(model, context)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none",
                             learning_rate=LR, weight_decay=0.1)
    optimizer = RetainTrainer(model=model, args=args, methods=methods, context=context).create_optimizer()
    name_of = {id(parameter): name for name, parameter in model.named_parameters()}
    placed = {name_of[id(parameter)]: group["lr"] for group in optimizer.param_groups for parameter in group["params"]}
    return methods, model, placed


def test_freeze_and_llrd_through_the_trainer_optimizer(tokenizer, tmp_path) -> None:
    methods, model, placed = _optimizer_rates(["method=[full,freeze,llrd]", "method.freeze.layers=1",
                                               "method.freeze.embeddings=true", "method.llrd.factor=0.5"],
                                              tokenizer, tmp_path)
    assert [method.name for method in methods] == ["full", "freeze", "llrd"]
    assert set(placed) == _trainable_names(model)
    assert all(_layer(name) != 0 and "embed_tokens" not in name for name in placed)
    assert placed == pytest.approx({name: _expected_lr(name, 3, 0.5) for name in placed})


# --- LoRA+ (method.lora.lr_ratio) ---------------------------------------------------------


def test_lora_plus_trains_the_b_matrices_at_the_ratio_and_the_a_matrices_at_the_rate(tokenizer, tmp_path) -> None:
    config, model = _prepared(["method=[lora]", "method.lora.lr_ratio=16"], tokenizer, tmp_path, 2)
    incoming = _default_groups(model)
    decay_of = {name: group["weight_decay"] for group in incoming for name in group["names"]}
    lines: list[str] = []
    groups = Lora(config).param_groups(incoming, model, _context(config, tokenizer, tmp_path, lines))
    rate_of = {name: group["lr"] for group in groups for name in group["names"]}
    assert sorted(rate_of) == sorted(decay_of)  # every trained weight placed once
    b_matrices = [name for name in rate_of if ".lora_B." in name]
    assert len(b_matrices) == 2 * 7  # two layers, seven projections
    for name, rate in rate_of.items():
        assert rate == pytest.approx(LR * 16 if ".lora_B." in name else LR), name
    assert {name: group["weight_decay"] for group in groups for name in group["names"]} == decay_of
    assert lines == ["lora+: 14 B matrices train at 16x the learning rate of the A matrices"]
    plain = load_config(None, [f"train.lr={LR}", "method=[lora]"])
    assert Lora(plain).param_groups(incoming, model, _context(plain, tokenizer, tmp_path)) is incoming


def test_lora_plus_composes_with_llrd_in_the_trainer_optimizer(tokenizer, tmp_path) -> None:
    _, model, placed = _optimizer_rates(["method=[lora,llrd]", "method.lora.lr_ratio=4", "method.llrd.factor=0.5"],
                                        tokenizer, tmp_path)
    assert set(placed) == _trainable_names(model)
    expected = {name: _expected_lr(name, 3, 0.5) * (4 if ".lora_B." in name else 1) for name in placed}
    assert placed == pytest.approx(expected)

"""l2sp and ewc: each penalty against a hand computation (full and LoRA), zero at the start,
gradients from the penalty alone, the Fisher against per-sample gradients taken by hand,
its cache, batch_share, and the composition lora+ewc+l2sp through RetainTrainer."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_llama
from transformers import TrainingArguments

from retain.config import load_config
from retain.data.encoding import build_collator, encode_texts, prepare_tokenizer
from retain.data.prompting import PromptFormat
from retain.errors import ConfigError
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world
from retain.methods import MethodContext, methods_for, regularizers
from retain.methods.regularizers import Ewc, L2Sp
from retain.training.trainer import RetainTrainer

TEXTS = ["The river rises in the hills and runs west.", "Q: What is 12+7?\nA: 19",
         "Farmers grow wheat and barley along the banks."]
OTHER_TEXTS = ["Snow falls on the northern pass in winter.", "Q: What is 3+4?\nA: 7"]
LORA_SCALE = 32 / 16  # method.lora.alpha / method.lora.r, the defaults


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = train_tokenizer(build_world().documents, 384, 128)
    prepare_tokenizer(tokenizer)
    return tokenizer


def _setup(tokenizer, tmp_path, methods: str, *overrides: str, texts=TEXTS, seed: int = 0):
    """Returns the base model (untouched copy), the prepared model, its methods and context."""
    config = load_config(None, [f"method=[{methods}]", "method.ewc.strength=3.0", "method.l2sp.strength=0.5",
                                *overrides])
    torch.manual_seed(seed)
    model = tiny_llama(tokenizer)
    base = copy.deepcopy(model)
    context = MethodContext(config=config, tokenizer=tokenizer, prompt_format=PromptFormat.for_tokenizer(tokenizer),
                            cache_dir=tmp_path, echo=lambda line: None, _general=list(texts))
    methods = methods_for(config)
    for method in methods:
        model = method.prepare_model(model, context)
    return base, model, {**{method.name: method for method in methods}, "context": context}


def _added(method, context) -> torch.Tensor:
    """What the method's loss hook adds to a loss of zero."""
    return method.loss(torch.zeros(()), None, {}, None, context)


def _perturb(model: torch.nn.Module, names: tuple[str, ...]) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in names):
                parameter.add_(0.1 * torch.randn_like(parameter))


def _lora_modules(model) -> dict[str, torch.nn.Module]:
    """The LoRA layers, by the name of the base model's module they adapt."""
    return {name.removeprefix("base_model.model."): module for name, module in model.named_modules()
            if hasattr(module, "lora_A") and "default" in module.lora_A}


def _set_lora_b(model) -> None:
    with torch.no_grad():
        for module in _lora_modules(model).values():
            module.lora_B["default"].weight.normal_(0, 0.1)


def _hand_delta(module) -> torch.Tensor:
    return module.lora_B["default"].weight @ module.lora_A["default"].weight * LORA_SCALE


def _hand_fisher(model: torch.nn.Module, texts: list[str], tokenizer) -> dict[str, torch.Tensor]:
    """Empirical Fisher per token by hand: one backward per text of the text's summed token
    log-loss (written out, not from the model's mean), gradients squared, summed, divided
    by the number of predicted tokens."""
    model = copy.deepcopy(model).requires_grad_(True)
    totals = {name: torch.zeros_like(parameter) for name, parameter in model.named_parameters()}
    tokens = 0
    for row in encode_texts(texts, tokenizer, max_length=512):
        model.zero_grad()
        ids = torch.tensor([row.input_ids])
        logits = model(input_ids=ids).logits[0, :-1]  # (seq - 1, vocab): predicts tokens 1..
        torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").backward()
        tokens += ids.shape[1] - 1
        for name, parameter in model.named_parameters():
            totals[name] += parameter.grad ** 2
    return {name: total / tokens for name, total in totals.items()}


# --- l2sp -----------------------------------------------------------------------------


def test_l2sp_full_is_zero_at_start_and_matches_a_hand_computation(tokenizer, tmp_path) -> None:
    base, model, methods = _setup(tokenizer, tmp_path, "full,l2sp")
    l2sp, context = methods["l2sp"], methods["context"]
    assert _added(l2sp, context).item() == 0.0
    _perturb(model, ("q_proj", "embed_tokens", "norm"))
    start = dict(base.named_parameters())
    expected = 0.5 / 2 * sum(((parameter - start[name]) ** 2).sum() for name, parameter in model.named_parameters())
    assert expected > 0
    torch.testing.assert_close(_added(l2sp, context), expected.detach())


def test_l2sp_lora_penalises_the_lora_update_by_hand(tokenizer, tmp_path) -> None:
    _, model, methods = _setup(tokenizer, tmp_path, "lora,l2sp")
    l2sp, context = methods["l2sp"], methods["context"]
    assert _added(l2sp, context).item() == 0.0  # lora_B starts at zero
    assert all(weight.start is None for weight in l2sp.weights)  # no copy of frozen weights
    _set_lora_b(model)
    modules = _lora_modules(model)
    assert len(modules) == 7 and len(l2sp.weights) == 7
    expected = 0.5 / 2 * sum((_hand_delta(module) ** 2).sum() for module in modules.values())
    torch.testing.assert_close(_added(l2sp, context), expected.detach())


def test_penalty_gradients_reach_only_what_trains(tokenizer, tmp_path) -> None:
    base, model, methods = _setup(tokenizer, tmp_path, "full,l2sp")
    _perturb(model, ("down_proj",))
    _added(methods["l2sp"], methods["context"]).backward()
    start = dict(base.named_parameters())
    for name, parameter in model.named_parameters():
        # d/dw alpha/2 ||w - w0||^2 = alpha (w - w0): zero where nothing moved
        torch.testing.assert_close(parameter.grad, 0.5 * (parameter - start[name]).detach())
    assert model.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0

    _, model, methods = _setup(tokenizer, tmp_path, "lora,l2sp")
    _set_lora_b(model)
    _added(methods["l2sp"], methods["context"]).backward()
    grads = {name: parameter.grad for name, parameter in model.named_parameters()}
    assert all(grads[name].abs().sum() > 0 for name in grads if "lora_" in name)
    assert all(grads[name] is None for name in grads if "lora_" not in name)


def test_batch_share_scales_the_penalty(tokenizer, tmp_path) -> None:
    _, model, methods = _setup(tokenizer, tmp_path, "full,ewc,l2sp")
    _perturb(model, ("o_proj",))
    context = methods["context"]
    whole = {name: _added(methods[name], context) for name in ("ewc", "l2sp")}
    context.batch_share = 0.25
    for name, value in whole.items():
        assert value > 0
        torch.testing.assert_close(_added(methods[name], context), 0.25 * value)


# --- ewc ------------------------------------------------------------------------------


def test_fisher_equals_per_sample_gradients_squared_by_hand(tokenizer, tmp_path) -> None:
    base, model, methods = _setup(tokenizer, tmp_path, "full,ewc", "method.ewc.samples=2")
    ewc = methods["ewc"]
    expected = _hand_fisher(base, TEXTS[:2], tokenizer)  # the first `samples` texts
    assert [weight.name for weight in ewc.weights] == list(expected)
    for weight, fisher in zip(ewc.weights, ewc.importance, strict=True):
        torch.testing.assert_close(fisher, expected[weight.name], rtol=1e-4, atol=1e-10)
    # the estimate leaves no gradient behind and the model as it was
    assert all(parameter.grad is None for parameter in model.parameters())
    assert not model.training


def test_fisher_under_lora_is_the_base_weights_and_restores_them(tokenizer, tmp_path) -> None:
    base, model, methods = _setup(tokenizer, tmp_path, "lora,ewc")
    ewc = methods["ewc"]
    expected = _hand_fisher(base, TEXTS, tokenizer)
    modules = _lora_modules(model)
    assert [weight.name.removeprefix("base_model.model.") for weight in ewc.weights] == [
        f"{name}.base_layer.weight" for name in modules]
    for (name, _), fisher in zip(modules.items(), ewc.importance, strict=True):
        torch.testing.assert_close(fisher, expected[f"{name}.weight"], rtol=1e-4, atol=1e-10)
    trained = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trained and all("lora_" in name for name in trained)  # base weights frozen again


def test_ewc_penalty_matches_a_hand_computation(tokenizer, tmp_path) -> None:
    base, model, methods = _setup(tokenizer, tmp_path, "full,ewc")
    ewc, context = methods["ewc"], methods["context"]
    assert _added(ewc, context).item() == 0.0
    _perturb(model, ("gate_proj", "lm_head"))
    start = dict(base.named_parameters())
    fisher = _hand_fisher(base, TEXTS, tokenizer)
    expected = 3.0 / 2 * sum((fisher[name] * (parameter - start[name]) ** 2).sum()
                             for name, parameter in model.named_parameters())
    assert expected > 0
    torch.testing.assert_close(_added(ewc, context), expected.detach(), rtol=1e-4, atol=0)
    _added(ewc, context).backward()
    weight = model.model.layers[0].mlp.gate_proj.weight
    grad = 3.0 * fisher["model.layers.0.mlp.gate_proj.weight"] * (weight - start["model.layers.0.mlp.gate_proj.weight"])
    torch.testing.assert_close(weight.grad, grad.detach(), rtol=1e-4, atol=1e-12)

    base, model, methods = _setup(tokenizer, tmp_path, "lora,ewc")
    ewc = methods["ewc"]
    _set_lora_b(model)
    fisher = _hand_fisher(base, TEXTS, tokenizer)
    expected = 3.0 / 2 * sum((fisher[f"{name}.weight"] * _hand_delta(module) ** 2).sum()
                             for name, module in _lora_modules(model).items())
    torch.testing.assert_close(_added(ewc, methods["context"]), expected.detach(), rtol=1e-4, atol=0)


def test_fisher_cache_is_reused_refreshed_and_keyed_by_texts(tokenizer, tmp_path, monkeypatch) -> None:
    calls = []
    estimate = regularizers.estimate_fisher
    monkeypatch.setattr(regularizers, "estimate_fisher", lambda *args: calls.append(1) or estimate(*args))
    _, _, first = _setup(tokenizer, tmp_path, "full,ewc")
    _, _, again = _setup(tokenizer, tmp_path, "full,ewc")
    assert len(calls) == 1
    for cached, computed in zip(again["ewc"].importance, first["ewc"].importance, strict=True):
        assert torch.equal(cached, computed)

    _, _, other = _setup(tokenizer, tmp_path, "full,ewc", texts=OTHER_TEXTS)
    assert len(calls) == 2
    assert not torch.equal(other["ewc"].importance[0], first["ewc"].importance[0])
    _setup(tokenizer, tmp_path, "full,ewc", seed=1)  # other weights: another Fisher
    assert len(calls) == 3

    files = sorted((tmp_path / "ewc").glob("fisher-*.safetensors"))
    assert len(files) == 3
    for file in files:
        file.write_bytes(b"not a safetensors file")
    _, _, repaired = _setup(tokenizer, tmp_path, "full,ewc")
    assert len(calls) == 4
    for fixed, computed in zip(repaired["ewc"].importance, first["ewc"].importance, strict=True):
        assert torch.equal(fixed, computed)
    _setup(tokenizer, tmp_path, "full,ewc")
    assert len(calls) == 4  # the rewritten file is read again


def test_ewc_refuses_qlora_with_a_fix() -> None:
    with pytest.raises(ConfigError, match="4-bit") as error:
        Ewc(load_config(None, ["method=[qlora,ewc]"])).check()
    assert "lora" in error.value.fix
    L2Sp(load_config(None, ["method=[qlora,l2sp]"])).check()


# --- composition ----------------------------------------------------------------------


def test_lora_ewc_l2sp_compose_through_the_trainer(tokenizer, tmp_path) -> None:
    base, model, methods = _setup(tokenizer, tmp_path, "lora,ewc,l2sp")
    context = methods["context"]
    assert methods["ewc"].weights is methods["l2sp"].weights  # one starting point for both
    _set_lora_b(model)
    rows = encode_texts(TEXTS, tokenizer, max_length=64)
    collate = build_collator(tokenizer)
    arguments = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", max_steps=2,
                                  per_device_train_batch_size=2, learning_rate=1e-2, save_strategy="no",
                                  disable_tqdm=True)
    trainer = RetainTrainer(model=model, args=arguments, train_dataset=[row.feature() for row in rows],
                            data_collator=collate, methods=[methods[name] for name in ("lora", "ewc", "l2sp")],
                            context=context)
    batch = collate([row.feature() for row in rows])
    model.eval()  # no LoRA dropout, so the trainer's loss is the one computed here
    plain = model(**batch).loss
    fisher = _hand_fisher(base, TEXTS, tokenizer)
    modules = _lora_modules(model)
    deltas = {name: _hand_delta(module) for name, module in modules.items()}
    expected = (plain + 3.0 / 2 * sum((fisher[f"{name}.weight"] * delta ** 2).sum() for name, delta in deltas.items())
                + 0.5 / 2 * sum((delta ** 2).sum() for delta in deltas.values()))
    torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), expected.detach(), rtol=1e-4, atol=0)

    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    trainer.train()
    changed = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed and all("lora_" in name for name in changed)

"""fapm on tiny random Llamas, checked against scores and masks computed by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel
from tiny_models import tiny_llama
from transformers import LlamaForCausalLM

from retain.config import load_config
from retain.data.prompting import PromptFormat
from retain.errors import ConfigError
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world
from retain.methods import MethodContext, methods_for
from retain.methods.pruning import Fapm, fapm_mask, fapm_score


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(build_world().documents, 384, 128)


def _prepared(overrides: list[str], tokenizer, tmp_path, tied: bool = False):
    """Returns the methods, the model after every prepare_model, and the echoed lines."""
    config = load_config(None, overrides)
    torch.manual_seed(0)
    model = tiny_llama(tokenizer, num_hidden_layers=2, tie_word_embeddings=tied)
    lines: list[str] = []
    context = MethodContext(config=config, tokenizer=tokenizer, prompt_format=PromptFormat.raw(),
                            cache_dir=tmp_path, echo=lines.append)
    methods = methods_for(config)
    for method in methods:
        model = method.prepare_model(model, context)
    return methods, model, context, lines


def _finish(methods, model, context):
    for method in methods:
        model = method.finish(model, context)
    return model


def _expected_mask(delta: torch.Tensor, base: torch.Tensor, keep: float) -> torch.Tensor:
    """The FAPM mask written out directly: score, then the top round(keep * n) entries."""
    score = delta.abs() - base.abs().mean() * delta.abs() / base.abs()
    kept = round(keep * score.numel())
    threshold = score.flatten().sort(descending=True).values[kept - 1]
    return score >= threshold


def _train_all(model: torch.nn.Module) -> None:
    """Stands in for training: moves every trainable weight by a random step."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))


def test_score_matches_a_hand_computed_3x3_example() -> None:
    base = torch.tensor([[1.0, -2.0, 4.0], [2.0, -1.0, 3.0], [1.0, 2.0, 2.0]])  # mean |W_pre| = 2
    delta = torch.tensor([[0.5, -1.0, 1.0], [0.2, 0.3, -0.6], [1.0, 0.0, 0.4]])
    # S = |dW| (1 - 2 / |W_pre|), entry by entry.
    expected = torch.tensor([[-0.5, 0.0, 0.5], [0.0, -0.3, 0.2], [-1.0, 0.0, 0.0]])
    torch.testing.assert_close(fapm_score(delta, base), expected)
    # keep 2 of 9 (round(0.25 * 9) = 2): the two highest scores, 0.5 and 0.2.
    assert fapm_mask(delta, base, 0.25).tolist() == [[False, False, True], [False, False, True],
                                                     [False, False, False]]


def test_a_zero_base_weight_gives_a_finite_score_and_its_change_is_pruned() -> None:
    base = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    delta = torch.tensor([[0.1, 0.1], [0.0, 0.05]])
    score = fapm_score(delta, base)
    assert torch.isfinite(score).all()
    assert score[0, 0] < -1e6  # relative change of a zero weight: huge, so it is pruned first
    assert score[1, 0] == 0  # no change, no score
    assert not fapm_mask(delta, base, 0.5)[0, 0]


def test_the_mask_keeps_exactly_the_top_k_of_each_matrix() -> None:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(8, 16, generator=generator)
    delta = 0.01 * torch.randn(8, 16, generator=generator)
    mask = fapm_mask(delta, base, 0.3)
    assert int(mask.sum()) == round(0.3 * 128)
    score = fapm_score(delta, base)
    assert score[mask].min() >= score[~mask].max()
    assert torch.equal(mask, _expected_mask(delta, base, 0.3))


def test_full_fine_tuning_resets_all_but_the_top_share_of_each_matrix(tokenizer, tmp_path) -> None:
    methods, model, context, lines = _prepared(["method=[full,fapm]", "method.fapm.keep=0.3"], tokenizer, tmp_path)
    start = copy.deepcopy(model.state_dict())
    _train_all(model)
    trained = copy.deepcopy(model.state_dict())
    pruned = _finish(methods, model, context)
    assert pruned is model
    reset = total = 0
    for name, value in pruned.state_dict().items():
        if value.dim() != 2:  # norms keep their trained values
            assert torch.equal(value, trained[name]), name
            continue
        expected_mask = _expected_mask(trained[name] - start[name], start[name], 0.3)
        assert int(expected_mask.sum()) == round(0.3 * value.numel()), name
        torch.testing.assert_close(value, torch.where(expected_mask, trained[name], start[name]), rtol=0, atol=0)
        reset += value.numel() - int(expected_mask.sum())
        total += value.numel()
    assert lines == [(f"fapm: kept 30% of the task vector of each of 16 weight matrices; "
                      f"{reset:,} of {total:,} entries reset to the base weights")]


def test_a_tied_embedding_and_head_is_pruned_once(tokenizer, tmp_path) -> None:
    methods, model, context, lines = _prepared(["method=[full,fapm]", "method.fapm.keep=0.5"], tokenizer, tmp_path,
                                               tied=True)
    start = model.lm_head.weight.detach().clone()
    _train_all(model)
    trained = model.lm_head.weight.detach().clone()
    pruned = _finish(methods, model, context)
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    mask = _expected_mask(trained - start, start, 0.5)
    assert torch.equal(pruned.lm_head.weight, torch.where(mask, trained, start))
    assert "each of 15 weight matrices" in lines[0]


def test_full_fine_tuning_prunes_only_the_matrices_that_trained(tokenizer, tmp_path) -> None:
    methods, model, context, _ = _prepared(["method=[full,freeze,fapm]", "method.freeze.layers=1",
                                            "method.fapm.keep=0.1"], tokenizer, tmp_path)
    frozen = "model.layers.0.mlp.down_proj.weight"
    assert not dict(model.named_parameters())[frozen].requires_grad
    start = copy.deepcopy(model.state_dict())
    with torch.no_grad():  # a frozen weight that moved anyway (weight decay, say) is not touched
        dict(model.named_parameters())[frozen].add_(1.0)
    _train_all(model)
    pruned = _finish(methods, model, context)
    assert torch.equal(pruned.state_dict()[frozen], start[frozen] + 1.0)
    head = pruned.state_dict()["model.layers.1.mlp.down_proj.weight"]
    assert int((head != start["model.layers.1.mlp.down_proj.weight"]).sum()) == round(0.1 * head.numel())


def test_keep_one_leaves_the_fully_trained_model_as_it_is(tokenizer, tmp_path) -> None:
    methods, model, context, lines = _prepared(["method=[full,fapm]", "method.fapm.keep=1.0"], tokenizer, tmp_path)
    _train_all(model)
    trained = copy.deepcopy(model.state_dict())
    pruned = _finish(methods, model, context)
    for name, value in pruned.state_dict().items():
        assert torch.equal(value, trained[name]), name
    assert " 0 of " in lines[0]


def _lora_trained(overrides: list[str], tokenizer, tmp_path):
    """A LoRA model whose adapters moved (lora_B is 0 at the start), with the base weights
    and the hand-computed delta B @ A * alpha / r of every adapted matrix."""
    methods, model, context, lines = _prepared(["method=[lora,fapm]", "method.lora.r=4", "method.lora.alpha=8",
                                                "method.lora.dropout=0.0", *overrides], tokenizer, tmp_path)
    assert isinstance(model, PeftModel)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    base, delta = {}, {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            key = name.removeprefix("base_model.model.") + ".weight"
            base[key] = module.base_layer.weight.detach().clone()
            delta[key] = (module.lora_B["default"].weight @ module.lora_A["default"].weight).detach() * (8 / 4)
    return methods, model, context, lines, base, delta


def test_lora_merges_the_pruned_delta_into_a_plain_model(tokenizer, tmp_path) -> None:
    methods, model, context, lines, base, delta = _lora_trained(["method.fapm.keep=0.2"], tokenizer, tmp_path)
    untouched = {name.removeprefix("base_model.model."): value.clone()
                 for name, value in model.state_dict().items() if "lora" not in name and "base_layer" not in name}
    merged = _finish(methods, model, context)
    assert isinstance(merged, LlamaForCausalLM) and not isinstance(merged, PeftModel)
    state = merged.state_dict()
    assert len(base) == 14  # 7 projections x 2 layers
    for key in base:
        mask = _expected_mask(delta[key], base[key], 0.2)
        assert int(mask.sum()) == round(0.2 * mask.numel())
        torch.testing.assert_close(state[key], base[key] + delta[key] * mask)
    for key, value in untouched.items():
        assert torch.equal(state[key], value), key
    assert not any("lora" in name for name in state)
    assert lines[0].startswith("fapm: kept 20% of the task vector of each of 14 weight matrices; ")


def test_lora_with_keep_one_equals_peft_merge_and_unload(tokenizer, tmp_path) -> None:
    methods, model, context, _, _, _ = _lora_trained(["method.fapm.keep=1.0"], tokenizer, tmp_path)
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    merged = _finish(methods, model, context).state_dict()
    assert merged.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(merged[key], value)


def test_qlora_is_refused_before_anything_loads() -> None:
    with pytest.raises(ConfigError, match="method.use") as error:
        Fapm(load_config(None, ["method=[qlora,fapm]"])).check()
    assert "lora" in error.value.fix

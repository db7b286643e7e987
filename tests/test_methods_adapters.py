"""The method registry, the base methods (full, lora, qlora) and RetainTrainer's hooks."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama
from transformers import TrainingArguments

from retain.config import load_config
from retain.config.methods import method_names
from retain.errors import ConfigError, RetainError
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world
from retain.methods import Method, MethodContext, methods_for, registered
from retain.methods.adapters import Lora, QLora, qlora_unavailable
from retain.training.trainer import RetainTrainer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(build_world().documents, 384, 128)


def _context(config, tokenizer, tmp_path) -> MethodContext:
    from retain.data.prompting import PromptFormat

    return MethodContext(config=config, tokenizer=tokenizer, prompt_format=PromptFormat.for_tokenizer(tokenizer),
                         cache_dir=tmp_path, echo=lambda line: None)


def test_every_listed_method_is_registered_with_its_paper() -> None:
    table = registered()
    assert list(table) == list(method_names())
    for name, cls in table.items():
        assert cls.name == name
        assert "arxiv.org" in cls.paper, name  # each cites its paper with a link
        assert cls.__doc__ and len(cls.__doc__) > 80, name


def test_methods_run_in_hook_order_with_lora_as_the_default_base() -> None:
    config = load_config(None, ["method=[ewc,replay]"])
    assert [method.name for method in methods_for(config)] == ["lora", "replay", "ewc"]
    config = load_config(None, ["method=[fapm,freeze,full]"])
    assert [method.name for method in methods_for(config)] == ["full", "freeze", "fapm"]


def test_full_trains_every_weight_and_lora_only_adapters(tokenizer, tmp_path) -> None:
    config = load_config(None, ["method=[full]"])
    model = tiny_llama(tokenizer).requires_grad_(False)
    methods_for(config)[0].prepare_model(model, _context(config, tokenizer, tmp_path))
    assert all(parameter.requires_grad for parameter in model.parameters())

    config = load_config(None, ["method=[lora]", "method.lora.r=4"])
    model = Lora(config).prepare_model(tiny_llama(tokenizer), _context(config, tokenizer, tmp_path))
    trained = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trained and all("lora_" in name for name in trained)
    # all seven projections of the one layer, A and B each
    assert len(trained) == 7 * 2
    assert model.peft_config["default"].r == 4 and model.peft_config["default"].lora_alpha == 32


def test_lora_names_the_modules_a_model_has_when_none_match(tokenizer, tmp_path) -> None:
    config = load_config(None, ["method.lora.target_modules=[c_attn]"])
    with pytest.raises(ConfigError, match="none of method.lora.target_modules") as error:
        Lora(config).prepare_model(tiny_llama(tokenizer), _context(config, tokenizer, tmp_path))
    assert "q_proj" in error.value.fix


def test_qlora_refuses_cpu_with_a_fix() -> None:
    config = load_config(None, ["method=[qlora]", "model.device=cpu"])
    with pytest.raises(RetainError, match="qlora cannot run here: model.device is cpu") as error:
        QLora(config).check()
    assert "use lora" in error.value.fix
    assert "CUDA" in qlora_unavailable("auto") or torch.cuda.is_available()


def test_qlora_loads_the_base_in_4_bits_as_configured() -> None:
    config = load_config(None, ["method=[qlora]", "model.device=cuda:1", "method.qlora.quant_type=fp4",
                                "method.qlora.double_quant=false", "method.qlora.compute_dtype=fp16"])
    options = QLora(config).load_kwargs()
    quantization = options["quantization_config"]
    assert quantization.load_in_4bit and not quantization.load_in_8bit
    assert quantization.bnb_4bit_quant_type == "fp4"
    assert quantization.bnb_4bit_use_double_quant is False
    assert quantization.bnb_4bit_compute_dtype == torch.float16
    assert options["device_map"] == {"": 1}
    defaults = QLora(load_config(None, ["method=[qlora]"])).load_kwargs()["quantization_config"]
    assert (defaults.bnb_4bit_quant_type, defaults.bnb_4bit_use_double_quant,
            defaults.bnb_4bit_compute_dtype) == ("nf4", True, torch.bfloat16)


class _Halve(Method):
    """A test method: halves the learning rate of one group and adds 1 to the loss."""

    name = "halve"
    paper = "none"

    def param_groups(self, groups, model, context):
        return [{**group, "lr": 0.5} if group["weight_decay"] else group for group in groups]

    def loss(self, loss, model, inputs, outputs, context):
        return loss + context.batch_share * 1.0


def _trainer(tokenizer, tmp_path, methods, **args) -> RetainTrainer:
    config = load_config(None, ["method=[full]"])
    model = tiny_llama(tokenizer).requires_grad_(True)
    arguments = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                  weight_decay=0.1, learning_rate=1.0, **args)
    return RetainTrainer(model=model, args=arguments, methods=methods,
                         context=_context(config, tokenizer, tmp_path))


def test_trainer_builds_groups_through_the_methods(tokenizer, tmp_path) -> None:
    trainer = _trainer(tokenizer, tmp_path, [])
    plain = trainer.create_optimizer()
    decayed, undecayed = plain.param_groups
    names = {id(parameter): name for name, parameter in trainer.model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and undecayed["weight_decay"] == 0.0
    assert all("norm" in names[id(parameter)] for parameter in undecayed["params"])
    assert "names" not in decayed

    halved = _trainer(tokenizer, tmp_path, [_Halve(load_config(None))]).create_optimizer()
    assert [group["lr"] for group in halved.param_groups] == [0.5, 1.0]


def test_trainer_loss_passes_through_methods_once_per_step(tokenizer, tmp_path) -> None:
    batch = tokenizer(["Q: What is 2 + 3?\nA: 5"], return_tensors="pt")
    batch["labels"] = batch["input_ids"].clone()
    trainer = _trainer(tokenizer, tmp_path, [_Halve(load_config(None))], gradient_accumulation_steps=4)
    plain = _trainer(tokenizer, tmp_path, [])
    plain.model.load_state_dict(trainer.model.state_dict())
    expected = plain.compute_loss(plain.model, dict(batch))
    # Without num_items_in_batch the trainer divides each micro-batch loss by the
    # accumulation steps itself: the method's term is added whole.
    assert trainer.compute_loss(trainer.model, dict(batch)).item() == pytest.approx(expected.item() + 1.0)
    assert trainer.context.batch_share == 1.0
    # With it, the loss is already normalised over the accumulated batch: the term is shared.
    trainer.current_gradient_accumulation_steps = 4
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=tokens)
    assert trainer.context.batch_share == pytest.approx(0.25)
    assert loss.item() == pytest.approx(expected.item() + 0.25, rel=1e-5)

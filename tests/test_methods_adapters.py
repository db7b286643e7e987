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


def _prompt_masked_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Two rows of different lengths, right-padded, with only the answers trained."""
    rows = [tokenizer("Q: What is 2 + 3?\nA: 5")["input_ids"], tokenizer("Q: Is water wet?\nA: yes it is")["input_ids"]]
    width = max(len(row) for row in rows)
    ids = torch.full((2, width), tokenizer.pad_token_id or 0)
    mask = torch.zeros((2, width), dtype=torch.long)
    labels = torch.full((2, width), -100)
    for index, row in enumerate(rows):
        ids[index, :len(row)] = torch.tensor(row)
        mask[index, :len(row)] = 1
        labels[index, len(row) - 2 - index:len(row)] = torch.tensor(row[len(row) - 2 - index:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(trainer, batch, head_rows: list[int]) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    handle = trainer._base_model().lm_head.register_forward_hook(
        lambda module, args, output: head_rows.append(args[0].shape[-2]))
    try:
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=int((batch["labels"] != -100).sum()))
    finally:
        handle.remove()
    loss.backward()
    grads = {name: parameter.grad.clone() for name, parameter in trainer.model.named_parameters()
             if parameter.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.mark.parametrize("lora", [False, True])
def test_training_computes_logits_only_where_a_token_is_trained(tokenizer, tmp_path, lora) -> None:
    # Issue 25: the vocabulary projection on the prompt was about a fifth of a LoRA step on
    # SmolLM2. Same loss and gradients with it skipped, and the head really sees fewer rows.
    batch = _prompt_masked_batch(tokenizer)
    fast, every = _trainer(tokenizer, tmp_path, []), _trainer(tokenizer, tmp_path, [_Halve(load_config(None))])
    every.model.load_state_dict(fast.model.state_dict())
    every.methods = []  # the same trainer as `fast`, but built knowing a method reads every logit
    if lora:
        from peft import LoraConfig, get_peft_model

        for trainer in (fast, every):
            torch.manual_seed(0)
            trainer.model = get_peft_model(trainer.model, LoraConfig(r=4, target_modules="all-linear",
                                                                     lora_dropout=0.0, init_lora_weights=False))
    assert fast.trained_logits_only and not every.trained_logits_only
    fast_rows, every_rows = [], []
    fast_loss, fast_grads = _loss_and_grads(fast, batch, fast_rows)
    every_loss, every_grads = _loss_and_grads(every, batch, every_rows)
    assert fast_loss == pytest.approx(every_loss, rel=1e-6)
    assert fast_grads.keys() == every_grads.keys() and fast_grads
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, every_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    width = batch["input_ids"].shape[1]
    trained = {position - 1 for row in batch["labels"].tolist() for position, label in enumerate(row) if label != -100}
    assert every_rows == [width] and fast_rows == [len(trained)] and len(trained) < width - 4
    # Evaluation (not training) and a method reading every logit keep them all.
    fast.model.eval()
    fast.compute_loss(fast.model, dict(batch))
    assert "logits_to_keep" not in batch


def test_a_method_with_a_loss_of_its_own_reads_every_logit_unless_it_says_not() -> None:
    from retain.methods.regularizers import Ewc
    from retain.methods.token_forget import TokenForget

    config = load_config(None)
    assert _Halve(config).needs_every_logit() and TokenForget(config).needs_every_logit()
    assert not Ewc(config).needs_every_logit() and not Lora(config).needs_every_logit()

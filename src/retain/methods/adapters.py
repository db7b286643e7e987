"""The base methods, which decide which weights train: ``full``, ``lora`` and ``qlora``."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import PreTrainedModel

from retain.errors import ConfigError, RetainError
from retain.methods.base import Method, MethodContext, ParamGroup
from retain.methods.registry import register

logger = logging.getLogger("retain.methods")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@register
class Full(Method):
    """Full fine-tuning: every weight trains (the baseline every mitigation is measured against)."""

    name = "full"
    paper = "Howard & Ruder, 2018, Universal Language Model Fine-tuning, https://arxiv.org/abs/1801.06146"

    def prepare_model(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        model.requires_grad_(True)
        return model


@register
class Lora(Method):
    """LoRA: the weights stay frozen and a low-rank update ``B A * alpha / r`` trains beside
    each adapted projection (Hu et al., 2021). retain's default: r=16, alpha=32, dropout
    0.05, on all seven attention and MLP projections (the QLoRA paper found adapting every
    projection necessary to match full fine-tuning)."""

    name = "lora"
    paper = "Hu et al., 2021, LoRA: Low-Rank Adaptation of Large Language Models, https://arxiv.org/abs/2106.09685"

    def prepare_model(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        from peft import get_peft_model

        return get_peft_model(model, lora_config(model, self.config))

    def param_groups(self, groups: list[ParamGroup], model: PreTrainedModel,
                     context: MethodContext) -> list[ParamGroup]:
        """LoRA+ (``method.lora.lr_ratio`` above 1): splits each group into its A side (and
        anything else) at the group's rate and its B matrices at that rate times the ratio
        (Hayou, Ghosh & Yu, 2024, LoRA+: Efficient Low Rank Adaptation of Large Models,
        https://arxiv.org/abs/2402.12354). With a ratio of 1 the groups pass unchanged.

        Written here rather than with peft's ``create_loraplus_optimizer``, which builds the
        optimizer itself; groups keep composing with llrd, which runs after and scales
        each group's own rate.
        """
        ratio = self.config.method.lora.lr_ratio
        if ratio == 1.0:
            return groups
        split: list[ParamGroup] = []
        for group in groups:
            lr = group.get("lr", self.config.train.lr)
            sides = {False: group | {"params": [], "names": [], "lr": lr},
                     True: group | {"params": [], "names": [], "lr": lr * ratio}}
            for name, parameter in zip(group["names"], group["params"], strict=True):
                side = sides[is_lora_b(name)]
                side["params"].append(parameter)
                side["names"].append(name)
            split += [side for side in sides.values() if side["params"]]
        b_count = sum(len(group["params"]) for group in split if any(map(is_lora_b, group["names"])))
        context.echo(f"lora+: {b_count} B matrices train at {ratio:g}x the learning rate of the A matrices")
        return split


def is_lora_b(name: str) -> bool:
    """True for a LoRA B matrix (``...lora_B.default.weight``, or an embedding's
    ``lora_embedding_B``), the side LoRA+ trains faster."""
    return ".lora_B." in name or ".lora_embedding_B." in name


def lora_config(model: torch.nn.Module, config) -> Any:
    """Returns peft's ``LoraConfig`` from ``method.lora``, adapting the named modules the
    model has (a warning names those it lacks).

    Raises:
        ConfigError: If the model has none of ``method.lora.target_modules``.
    """
    from peft import LoraConfig

    settings = config.method.lora
    # LoRA adapts linear layers: name those the model has (GPT-2's Conv1D counts as one).
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"}
    targets = [name for name in settings.target_modules if name in present]
    if not targets:
        raise ConfigError(
            f"none of method.lora.target_modules ({', '.join(settings.target_modules)}) is in "
            "this model", field="method.lora.target_modules",
            fix=f"name linear modules the model has: {', '.join(sorted(present)[:12])}",
        )
    missing = sorted(set(settings.target_modules) - set(targets))
    if missing:
        logger.warning("LoRA: this model has no %s; adapting %s", ", ".join(missing), ", ".join(targets))
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


@register
class QLora(Lora):
    """QLoRA: the base weights are loaded in 4 bits (NF4, double quantisation, bitsandbytes)
    and LoRA adapters of ``method.lora`` train on top (Dettmers et al., 2023). Needs a CUDA
    GPU and the bitsandbytes package; anywhere else it refuses before anything loads.
    LoRA+ (``method.lora.lr_ratio``) applies to its adapters as to LoRA's."""

    name = "qlora"
    paper = "Dettmers et al., 2023, QLoRA: Efficient Finetuning of Quantized LLMs, https://arxiv.org/abs/2305.14314"

    def check(self) -> None:
        problem = qlora_unavailable(self.config.model.device)
        if problem:
            raise RetainError(f"qlora cannot run here: {problem}", field="method.use",
                              fix="use lora (the same adapters on unquantised weights) or run on a CUDA GPU "
                              "with `pip install bitsandbytes`")

    def load_kwargs(self) -> dict[str, Any]:
        """Returns the ``from_pretrained`` options that load the base model in 4 bits."""
        from transformers import BitsAndBytesConfig

        settings = self.config.method.qlora
        device = self.config.model.device
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=settings.quant_type,
                bnb_4bit_use_double_quant=settings.double_quant,
                bnb_4bit_compute_dtype=_DTYPES[settings.compute_dtype],
            ),
            "device_map": {"": index},
        }

    def prepare_model(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        from peft import get_peft_model, prepare_model_for_kbit_training

        # Casts norms to fp32 and enables input gradients, as peft documents for k-bit training.
        model = prepare_model_for_kbit_training(model)
        return get_peft_model(model, lora_config(model, self.config))


def qlora_unavailable(device: str) -> str | None:
    """Returns why QLoRA cannot run on ``device`` (``model.device``), or None if it can."""
    if device in ("cpu", "mps"):
        return f"model.device is {device}; bitsandbytes 4-bit training needs a CUDA GPU"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible; bitsandbytes 4-bit training needs one"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "the bitsandbytes package is not installed"
    return None

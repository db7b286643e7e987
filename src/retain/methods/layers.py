"""Methods that treat the transformer layers unequally: ``freeze`` (the bottom layers do not
train at all) and ``llrd`` (each layer trains at a smaller learning rate than the one above).

Both rest on the same observation: the lower layers hold the general features the base model
learned in pre-training, so changing them less forgets less.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from retain.errors import ConfigError
from retain.methods.base import (
    Method,
    MethodContext,
    ParamGroup,
    base_model,
    decoder_layers,
    trainable,
)
from retain.methods.registry import register

logger = logging.getLogger("retain.methods")


@dataclass(frozen=True)
class LayerMap:
    """Where each parameter of a model sits: in which transformer layer, or in the embeddings.

    It walks the modules once per model, so each lookup is a dictionary access.

    Attributes:
        count: The number of transformer layers.
        prefixes: The module name of each layer (``model.layers.3``, under a peft wrapper
            ``base_model.model.model.layers.3``), mapped to its index, 0 the bottom.
        embeddings: The ids of the embedding parameters outside the layers: the input
            embeddings (with any adapters peft put on them) and other ``nn.Embedding``
            tables such as GPT-2's position embeddings.
    """

    count: int
    prefixes: dict[str, int]
    embeddings: frozenset[int]

    @classmethod
    def of(cls, model: torch.nn.Module) -> LayerMap:
        """Returns the map of ``model`` (a transformers model, possibly under a peft wrapper).

        Raises:
            RetainError: If the model has no recognisable list of layers.
        """
        layers = decoder_layers(model)
        index = {id(module): i for i, module in enumerate(layers)}
        prefixes = {name: index[id(module)] for name, module in model.named_modules() if id(module) in index}
        embedding_modules = [base_model(model).get_input_embeddings()]
        embedding_modules += [module for module in model.modules() if isinstance(module, torch.nn.Embedding)]
        embeddings = {id(parameter) for module in embedding_modules for parameter in module.parameters()}
        # Embedding tables inside a layer (rare) belong to their layer.
        inside = {id(parameter) for layer in layers for parameter in layer.parameters()}
        return cls(count=len(layers), prefixes=prefixes, embeddings=frozenset(embeddings - inside))

    def layer(self, name: str) -> int | None:
        """Returns the layer index of the parameter ``name``, or None outside the layers."""
        parts = name.split(".")
        for end in range(len(parts) - 1, 0, -1):
            found = self.prefixes.get(".".join(parts[:end]))
            if found is not None:
                return found
        return None


def _head_parameters(model: torch.nn.Module) -> set[int]:
    """Returns the ids of the output head's parameters (with any adapters peft put on it);
    under tied embeddings its weight is also one of the embedding parameters."""
    head = base_model(model).get_output_embeddings()
    if head is None:
        return set()
    ids = {id(parameter) for parameter in head.parameters()}
    # peft wraps an adapted head: the wrapper's own parameters (its adapters) count too.
    for module in model.modules():
        if getattr(module, "base_layer", None) is head:
            ids |= {id(parameter) for parameter in module.parameters()}
    return ids


@register
class Freeze(Method):
    """Freezes the bottom of the network: the bottom k transformer layers get no gradient
    for the whole run (Lee, Tang & Lin, 2019, who found that fine-tuning only the upper
    layers keeps most of the quality). k is ``method.freeze.layers``, or
    ``floor(fraction x layers)``. ``method.freeze.embeddings`` also freezes the input
    embeddings, and ``method.freeze.head`` the output head; a model that ties the two
    shares one weight, which is frozen when either asks (said in a warning), so that
    "layers only" really leaves the head training.

    It runs after the base method and freezes what that left trainable: the weights of the
    bottom layers under full fine-tuning, their LoRA adapters under lora and qlora.
    """

    name = "freeze"
    paper = ("Lee, Tang & Lin, 2019, What Would Elsa Do? Freezing Layers During Transformer "
             "Fine-Tuning, https://arxiv.org/abs/1911.03090")

    def prepare_model(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        """Freezes the bottom layers (and embeddings) of ``model`` in place.

        Raises:
            ConfigError: If ``method.freeze.layers`` exceeds the model's layers, or freezing
                would leave no parameter to train.
        """
        where = LayerMap.of(model)
        count = self._frozen_layers(where.count)
        settings = self.settings
        head = _head_parameters(model)
        tied = bool(head & where.embeddings)
        if tied and settings.embeddings != settings.head:
            logger.warning("freeze: the output head shares the input embeddings' weight (tied embeddings), so "
                           "freezing %s freezes %s too; set method.freeze.embeddings and method.freeze.head "
                           "both false to train the shared weight", *(("the embeddings", "the head")
                                                                      if settings.embeddings else
                                                                      ("the head", "the embeddings")))
        outside = (where.embeddings if settings.embeddings else frozenset()) | (head if settings.head else set())
        if tied and outside:
            outside = outside | where.embeddings | head
        frozen: list[tuple[str, torch.nn.Parameter]] = []
        kept: list[tuple[str, torch.nn.Parameter]] = []
        for name, parameter in trainable(model):
            layer = where.layer(name)
            bottom = layer is not None and layer < count
            (frozen if bottom or (layer is None and id(parameter) in outside) else kept).append((name, parameter))
        extra = [part for part, flag in (("the embeddings", settings.embeddings), ("the head", settings.head)) if flag]
        if not kept:
            raise ConfigError(
                f"freezing the bottom {count} of {where.count} layers"
                + "".join(f" and {part}" for part in extra) + " leaves nothing to train",
                field="method.freeze.layers",
                fix="freeze fewer layers (method.freeze.layers or method.freeze.fraction), or train weights "
                "outside them (full fine-tuning, or LoRA on more modules)",
            )
        for _, parameter in frozen:
            parameter.requires_grad_(False)
        parts = [part for part, ids in (("the input embeddings", where.embeddings), ("the output head", head))
                 if any(id(parameter) in ids for _, parameter in frozen)]
        total = sum(parameter.numel() for parameter in model.parameters())
        training = sum(parameter.numel() for _, parameter in kept)
        context.echo(f"freeze: bottom {count} of {where.count} layers" + "".join(f" and {part}" for part in parts)
                     + (" (one tied weight)" if len(parts) == 2 and tied else "")
                     + f" frozen; {training:,} of {total:,} parameters train")
        return model

    def _frozen_layers(self, available: int) -> int:
        """Returns how many bottom layers to freeze, of the model's ``available`` layers.

        Raises:
            ConfigError: If ``method.freeze.layers`` is more than ``available``.
        """
        layers = self.settings.layers
        if layers is None:
            return math.floor(self.settings.fraction * available)
        if layers > available:
            raise ConfigError(f"method.freeze.layers is {layers} but the model has {available} layers",
                              field="method.freeze.layers", fix=f"set it to at most {available}, or use "
                              "method.freeze.fraction")
        return layers


@register
class Llrd(Method):
    """Layer-wise learning-rate decay: each transformer layer trains at the learning rate of
    the layer above it times ``method.llrd.factor``, so the bottom layers move least.

    Howard & Ruder (2018) introduced per-layer rates as "discriminative fine-tuning"; the
    variant here is the geometric decay of Clark et al. (2020, ELECTRA): with L layers,
    layer i (0 the bottom) trains at ``lr x factor^(L-1-i)``, the input embeddings at
    ``lr x factor^L``, and the rest (final norm, head) at ``lr``, where ``lr`` is
    ``train.lr`` (or the group's own rate if an earlier method set one). The scheduler
    scales every group alike, so the ratios hold throughout training. With tied
    embeddings the shared weight trains at the embeddings' rate.
    """

    name = "llrd"
    paper = ("Clark, Luong, Le & Manning, 2020, ELECTRA: Pre-training Text Encoders as Discriminators "
             "Rather Than Generators, https://arxiv.org/abs/2003.10555; Howard & Ruder, 2018, Universal "
             "Language Model Fine-tuning for Text Classification, https://arxiv.org/abs/1801.06146")

    def param_groups(self, groups: list[ParamGroup], model: PreTrainedModel,
                     context: MethodContext) -> list[ParamGroup]:
        """Splits each group by layer, keeping its other settings (weight decay); empty
        groups are dropped."""
        where = LayerMap.of(model)
        factor = self.settings.factor
        split: list[ParamGroup] = []
        for group in groups:
            lr = group.get("lr", self.config.train.lr)
            # Depth below the top: 0 for the head and top layer, L for the embeddings.
            by_depth: dict[int, ParamGroup] = {}
            for name, parameter in zip(group["names"], group["params"], strict=True):
                layer = where.layer(name)
                if layer is not None:
                    depth = where.count - 1 - layer
                else:
                    depth = where.count if id(parameter) in where.embeddings else 0
                part = by_depth.setdefault(depth, group | {"params": [], "names": [], "lr": lr * factor**depth})
                part["params"].append(parameter)
                part["names"].append(name)
            split += [by_depth[depth] for depth in sorted(by_depth, reverse=True)]
        if split:
            rates = [group["lr"] for group in split]
            context.echo(f"llrd: {len(split)} parameter groups, learning rates {min(rates):.2e} "
                         f"(bottom) to {max(rates):.2e} (top)")
        return split

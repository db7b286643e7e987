"""Penalties that hold the trained weights near where training started: ``l2sp`` and ``ewc``.

Both penalise ``d = w_eff - w_start``, how far each trained weight has moved
(:meth:`TrainedWeight.deviation`), one definition for both:

- full fine-tuning: ``d = w - w_start``, ``w_start`` a copy of the weight taken before
  training (kept on the weight's device);
- LoRA and QLoRA: an adapted weight's effective value is ``W + B A * alpha / r`` with ``W``
  frozen, so ``d = B A * alpha / r`` (peft's ``get_delta_weight``), and no copy is needed.
  This is the papers' penalty on the weights the model computes with, which LoRA merely
  reparameterises; a penalty on ``A`` and ``B`` themselves would be a different method.
  Any other weight that trains beside the adapters is compared with a copy, as in full.

The copy is taken once per run and shared by the two methods (``MethodContext.store``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from retain.data.encoding import Encoded, encode_texts
from retain.errors import ConfigError, DataError
from retain.methods.base import Method, MethodContext, trainable, weights_digest
from retain.methods.registry import register

logger = logging.getLogger("retain.methods")

FISHER_VERSION = 2  # part of the Fisher cache key: bump it when the estimator changes
_STORE_KEY = "regularizers.trained_weights"


@dataclass
class TrainedWeight:
    """One weight the run trains, and the way to measure how far it has moved.

    Attributes:
        name: The weight's parameter name (for an adapted weight, its frozen base
            weight's, ``...base_layer.weight``).
        weight: The parameter (for an adapted weight, the frozen base weight).
        start: A copy of ``weight`` before training; None for an adapted weight.
        layer: The peft LoRA layer that adapts ``weight``, or None.
        adapters: The layer's adapters that train.
    """

    name: str
    weight: torch.nn.Parameter
    start: torch.Tensor | None = None
    layer: Any = None
    adapters: tuple[str, ...] = field(default_factory=tuple)

    def deviation(self) -> torch.Tensor:
        """Returns ``w_eff - w_start``, differentiable with respect to what trains."""
        if self.layer is None:
            return self.weight - self.start
        deltas = [self.layer.get_delta_weight(adapter) for adapter in self.adapters]
        return sum(deltas[1:], deltas[0])


def trained_weights(model: torch.nn.Module) -> list[TrainedWeight]:
    """Returns every weight ``model`` trains: the base weight of each LoRA layer whose
    adapters train, and each other trainable parameter with a copy of its current value.

    Call it after the methods that choose what trains (full/lora/qlora, freeze) and
    before training.
    """
    weights = []
    for module_name, layer in _lora_layers(model):
        adapters = tuple(adapter for adapter in layer.active_adapters if _adapter_trains(layer, adapter))
        if adapters:
            weights.append(TrainedWeight(name=f"{module_name}.base_layer.weight",
                                         weight=layer.get_base_layer().weight, layer=layer, adapters=adapters))
    adapter_ids = _adapter_parameter_ids(model)
    weights += [TrainedWeight(name=name, weight=parameter, start=parameter.detach().clone())
                for name, parameter in trainable(model) if id(parameter) not in adapter_ids]
    return weights


def starting_point(model: torch.nn.Module, context: MethodContext) -> list[TrainedWeight]:
    """Returns :func:`trained_weights` of ``model``, taken once per run and shared through
    ``context.store``, so that l2sp and ewc together keep one copy of the weights."""
    found = context.store.get(_STORE_KEY)
    if found is None or found[0] is not model:
        found = (model, trained_weights(model))
        context.store[_STORE_KEY] = found
    return found[1]


def weighted_squared_deviation(weights: list[TrainedWeight], importance: list[torch.Tensor] | None,
                               device: torch.device) -> torch.Tensor:
    """Returns ``sum_i F_i * d_i^2`` over every entry of every weight, in float32 on
    ``device`` (``F_i = 1`` when ``importance`` is None).

    Args:
        weights: The trained weights.
        importance: One tensor per weight, shaped like it (EWC's Fisher), or None.
        device: Where the loss is.
    """
    total = torch.zeros((), device=device)
    for index, weight in enumerate(weights):
        squared = weight.deviation().float().square()
        if importance is not None:
            squared = squared * importance[index]
        total = total + squared.sum().to(device)
    return total


class Penalty(Method):
    """A method that adds ``strength/2 * sum importance * (w_eff - w_start)^2`` to each
    batch's loss, ``strength`` from its settings; subclasses set ``weights`` (and
    ``importance``) in ``prepare_model``."""

    reads_logits = False  # the penalty reads the weights only
    weights: list[TrainedWeight]
    importance: list[torch.Tensor] | None = None
    _logged: tuple[torch.Tensor, int] | None = None  # penalties summed since the last log, and their count

    def penalty(self, device: torch.device) -> torch.Tensor:
        """Returns the penalty on the weights as they are now, on ``device``."""
        return self.settings.strength / 2 * weighted_squared_deviation(self.weights, self.importance, device)

    def loss(self, loss: torch.Tensor, model: PreTrainedModel, inputs: dict[str, torch.Tensor],
             outputs: Any, context: MethodContext) -> torch.Tensor:
        penalty = self.penalty(loss.device)
        total, count = self._logged or (torch.zeros((), device=loss.device), 0)
        self._logged = (total + penalty.detach(), count + 1)  # no sync with the device here
        return loss + context.batch_share * penalty

    def logs(self) -> dict[str, float]:
        """``<name>_penalty``: the mean penalty per micro-batch since the last log (the
        loss logged beside it includes it)."""
        if self._logged is None:
            return {}
        total, count = self._logged
        self._logged = None
        return {f"{self.name}_penalty": float(total) / count}


@register
class L2Sp(Penalty):
    """L2-SP: ``alpha/2 * sum ||w_eff - w_start||^2`` over the trained weights is added to
    each batch's loss, pulling them towards the starting point rather than towards zero
    (Li, Grandvalet & Davoine, 2018, Explicit Inductive Bias for Transfer Learning with
    Convolutional Networks, https://arxiv.org/abs/1802.01483).

    Variant: the paper's ``Omega(w) = alpha/2 ||w_S - w_S^0||^2`` on the pre-trained
    weights; its ``beta/2 ||w_S_bar||^2`` on newly added layers has no counterpart here (a
    language model is fine-tuned without new layers; ``train.weight_decay`` still applies).
    Under LoRA the deviation of an adapted weight is its LoRA update (module docstring).
    ``alpha`` is ``method.l2sp.strength``.
    """

    name = "l2sp"
    paper = ("Li, Grandvalet & Davoine, 2018, Explicit Inductive Bias for Transfer Learning with "
             "Convolutional Networks, https://arxiv.org/abs/1802.01483")

    def prepare_model(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        self.weights = starting_point(model, context)
        return model


@register
class Ewc(Penalty):
    """Elastic weight consolidation: ``lambda/2 * sum F * (w_eff - w_start)^2`` is added to
    each batch's loss, ``F`` the diagonal Fisher information of the base model on general
    data, so the weights general knowledge depends on most move least (Kirkpatrick et al.,
    2017, Overcoming catastrophic forgetting in neural networks,
    https://arxiv.org/abs/1612.00796).

    Variant: the diagonal empirical Fisher per token: ``F = sum_n g_n^2 / sum_n T_n``,
    ``g_n`` the gradient of general text ``n``'s summed token log-loss (its log-likelihood:
    its own tokens as targets, one text per backward pass) and ``T_n`` its predicted
    tokens, on the first ``method.ewc.samples`` texts of ``method.general``. Per token, so
    that the penalty is on the scale of the task's mean token loss: ``lambda = 1`` weighs
    the quadratic estimate of the rise of the general texts' loss per token as much as
    the task's loss per token. (Until FISHER_VERSION 2, ``g_n`` was the gradient of the
    text's mean token loss, which made F about ``T`` times smaller and the default
    strength barely act.) It is taken for the weights the run trains (under LoRA, the base
    weights of the adapted layers, with the adapters off) and cached under the run's
    cache directory. ``lambda`` is ``method.ewc.strength``. Under LoRA the deviation of an
    adapted weight is its LoRA update (module docstring).
    """

    name = "ewc"
    paper = ("Kirkpatrick et al., 2017, Overcoming catastrophic forgetting in neural networks, "
             "https://arxiv.org/abs/1612.00796")

    def check(self) -> None:
        if self.config.method.base == "qlora":
            raise ConfigError(
                "ewc needs the gradient of the base weights for its Fisher, and qlora's 4-bit "
                "weights have none", field="method.use",
                fix="use lora with ewc (the same adapters on unquantised weights), or l2sp with qlora",
            )

    def prepare_model(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        self.weights = starting_point(model, context)
        fisher = cached_fisher(model, self.weights, _fisher_rows(context, self.settings.samples), context)
        self.importance = [fisher[weight.name].to(weight.weight.device) for weight in self.weights]
        return model


# --- the Fisher information -----------------------------------------------------------


def estimate_fisher(model: torch.nn.Module, weights: list[TrainedWeight],
                    rows: list[Encoded]) -> dict[str, torch.Tensor]:
    """Returns the diagonal empirical Fisher per token of the base model for each trained
    weight, by name: ``sum_n g_n^2 / sum_n T_n`` (float32), ``g_n`` the gradient of row
    ``n``'s summed token loss and ``T_n`` the tokens it predicts, one row per backward pass.

    The model runs in eval mode (no dropout) with any peft adapters disabled; the
    weights' ``requires_grad`` and the model's mode are restored afterwards, and no
    ``.grad`` is written.
    """
    params = [weight.weight for weight in weights]
    needed = [parameter.requires_grad for parameter in params]
    was_training = model.training
    totals = [torch.zeros_like(parameter, dtype=torch.float32) for parameter in params]
    tokens = 0
    device = model.get_input_embeddings().weight.device
    try:
        model.eval()
        for parameter in params:
            parameter.requires_grad_(True)  # under LoRA the base weights are frozen
        with _adapters_off(model):
            for row in rows:
                ids = torch.tensor([row.input_ids], device=device)  # (1, seq)
                labels = torch.tensor([row.labels], device=device)
                predicted = int((labels[:, 1:] != -100).sum())  # the model's loss is their mean
                loss = model(input_ids=ids, labels=labels, use_cache=False).loss * predicted
                tokens += predicted
                # autograd.grad, not backward: the trainer's .grad buffers stay untouched.
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for total, grad in zip(totals, grads, strict=True):
                    if grad is not None:
                        total.add_(grad.float().square())
    finally:
        model.train(was_training)
        for parameter, flag in zip(params, needed, strict=True):
            parameter.requires_grad_(flag)
    return {weight.name: total / max(1, tokens) for weight, total in zip(weights, totals, strict=True)}


def cached_fisher(model: torch.nn.Module, weights: list[TrainedWeight], rows: list[Encoded],
                  context: MethodContext) -> dict[str, torch.Tensor]:
    """Returns :func:`estimate_fisher`, read from ``context.cache_dir`` when this model,
    these weights and these rows were seen before (an unreadable file is recomputed).

    The file is a safetensors file keyed by weight name, named by the SHA-256 of the
    model's name, a checksum of its base weights, the trained weights' names and shapes,
    and the rows' token ids (which cover the texts, ``samples``, ``data.max_length`` and
    the tokenizer).
    """
    from safetensors.torch import save_file

    path = context.cache_dir / "ewc" / f"fisher-{fisher_key(model, weights, rows, context)}.safetensors"
    fisher = _read_fisher(path, weights)
    if fisher is not None:
        context.echo(f"ewc: Fisher information read from the cache ({path.name})")
        return fisher
    started = time.perf_counter()
    fisher = estimate_fisher(model, weights, rows)
    context.echo(f"ewc: Fisher information of {len(weights)} weights estimated on {len(rows)} general "
                 f"texts in {time.perf_counter() - started:.1f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # whole files only, even with many processes
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in fisher.items()}, str(partial))
    os.replace(partial, path)
    return fisher


def fisher_key(model: torch.nn.Module, weights: list[TrainedWeight], rows: list[Encoded],
               context: MethodContext) -> str:
    """Returns the hex SHA-256 that names a Fisher in the cache (see :func:`cached_fisher`)."""
    digest = hashlib.sha256()
    digest.update(f"v{FISHER_VERSION}\0{context.config.model.name_or_path}\0".encode())
    weights_digest(model, digest, skip=_adapter_parameter_ids(model))  # adapters' random start: not the base's
    digest.update(json.dumps([(weight.name, list(weight.weight.shape)) for weight in weights]).encode())
    digest.update(json.dumps([(row.input_ids, row.labels) for row in rows]).encode())
    return digest.hexdigest()


def _read_fisher(path: Path, weights: list[TrainedWeight]) -> dict[str, torch.Tensor] | None:
    """Returns the cached Fisher at ``path``, or None if there is none or it is unusable."""
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        fisher = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - a damaged file raises whatever the parser meets
        logger.warning("ewc: the cached Fisher %s cannot be read (%s); estimating it again", path, error)
        return None
    if any(weight.name not in fisher or fisher[weight.name].shape != weight.weight.shape for weight in weights):
        logger.warning("ewc: the cached Fisher %s does not match the model; estimating it again", path)
        return None
    return fisher


def _fisher_rows(context: MethodContext, samples: int) -> list[Encoded]:
    """Returns the first ``samples`` general texts, encoded, that have a token to predict.

    Raises:
        DataError: If none has.
    """
    texts = context.general_texts()[:samples]
    rows = [row for row in encode_texts(texts, context.tokenizer, max_length=context.config.data.max_length)
            if len(row.input_ids) >= 2]
    if not rows:
        raise DataError("no general text has two tokens for the EWC Fisher to be estimated on",
                        field="method.general.source", fix="give general data with longer texts")
    if len(rows) < samples:
        logger.info("ewc: the Fisher is estimated on %d general texts (method.ewc.samples is %d)",
                    len(rows), samples)
    return rows


# --- peft's LoRA layers ---------------------------------------------------------------


def _lora_layers(model: torch.nn.Module) -> Iterator[tuple[str, Any]]:
    """Yields peft's LoRA layers in ``model``, with their module names."""
    from peft.tuners.lora import LoraLayer

    return ((name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer))


def _adapter_tensors(layer: Any, adapter: str | None = None) -> Iterator[torch.nn.Parameter]:
    """Yields a LoRA layer's adapter parameters (of one ``adapter``, or of all)."""
    for attribute in layer.adapter_layer_names:
        container = getattr(layer, attribute, None)
        if not isinstance(container, (torch.nn.ModuleDict, torch.nn.ParameterDict)):
            continue
        for name, item in container.items():
            if adapter is None or name == adapter:
                yield from ([item] if isinstance(item, torch.nn.Parameter) else item.parameters())


def _adapter_trains(layer: Any, adapter: str) -> bool:
    return any(parameter.requires_grad for parameter in _adapter_tensors(layer, adapter))


def _adapter_parameter_ids(model: torch.nn.Module) -> set[int]:
    return {id(parameter) for _, layer in _lora_layers(model) for parameter in _adapter_tensors(layer)}


def _adapters_off(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Returns a context in which a peft model computes as its base model."""
    from peft import PeftModel

    return model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()

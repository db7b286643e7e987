"""Forgetting-aware pruning of the task vector after training: ``fapm``."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from retain.errors import ConfigError
from retain.methods.base import Method, MethodContext, trainable
from retain.methods.registry import register

EPSILON = 1e-12
"""Stands in for ``|W_pre|`` where a base weight is exactly 0, so that the relative change
``|dW| / |W_pre|`` stays finite (huge, so such a change scores low and is pruned)."""


@register
class Fapm(Method):
    """FAPM: after training, keep only the share ``method.fapm.keep`` of each weight matrix's
    task vector ``dW = W_ft - W_pre`` that scores highest on
    ``S = |dW| - mean(|W_pre|) * |dW| / |W_pre|`` and reset the rest to the base weights
    (Huang, Cheng & Wang, 2025, Mitigating Catastrophic Forgetting in Large Language Models
    with Forgetting-aware Pruning, EMNLP 2025, https://arxiv.org/abs/2509.08255).

    The score favours large changes (``|dW|``) that are small relative to the weight they
    change: the paper finds the relative change is what forgets. The mean runs over the
    whole matrix, and the top ``keep`` share is chosen within each matrix.

    Variant implemented:

    - full fine-tuning: every 2-D weight that trains is pruned, the embeddings and LM head
      included (a tied embedding/head is one parameter, pruned once); 1-D weights (norms,
      biases) keep their trained values. ``prepare_model`` snapshots the starting value of
      those matrices on their own device, so the run holds a second copy of the trained
      matrices until ``finish`` (twice their memory, plus the optimizer's).
    - LoRA: ``dW`` is each adapted layer's merged LoRA delta (peft's ``get_delta_weight``)
      and ``W_pre`` the frozen base weight. A pruned delta is no longer low-rank, so
      ``finish`` writes ``W_pre + pruned dW`` into the base weights and removes the
      adapters: it returns a plain transformers model, and the run saves full weights.
    - QLoRA is refused: 4-bit base weights cannot hold a sparse delta (requantising would
      round most of it away).
    """

    name = "fapm"
    paper = ("Huang, Cheng & Wang, 2025, Mitigating Catastrophic Forgetting in Large Language Models with "
             "Forgetting-aware Pruning, https://arxiv.org/abs/2509.08255")

    def __init__(self, config) -> None:
        super().__init__(config)
        self._base_weights: dict[str, torch.Tensor] = {}

    def check(self) -> None:
        if self.config.method.base == "qlora":
            raise ConfigError(
                "fapm cannot prune a qlora run: the pruned task vector must be added to the base "
                "weights, which are 4-bit and cannot hold it", field="method.use",
                fix="use lora with fapm (or drop fapm)")

    def prepare_model(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        if not self.config.method.adapters:
            self._base_weights = {name: parameter.detach().clone()
                                  for name, parameter in trainable(model) if parameter.dim() == 2}
        return model

    def finish(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        keep = self.settings.keep
        if self.config.method.adapters:
            model, (matrices, reset, total) = _prune_adapters(model, keep)
        else:
            matrices, reset, total = _prune_full(model, self._base_weights, keep)
            self._base_weights = {}
        context.echo(f"fapm: kept {keep:.0%} of the task vector of each of {matrices} weight matrices; "
                     f"{reset:,} of {total:,} entries reset to the base weights")
        return model


def fapm_score(delta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Returns FAPM's score ``|dW| - mean(|W_pre|) * |dW| / |W_pre|`` of every entry, in fp32.

    Args:
        delta: The task vector of one matrix, ``W_ft - W_pre``.
        base: The matrix's starting weights ``W_pre`` (the mean runs over all of it).
    """
    change = delta.detach().abs().float()
    magnitude = base.detach().abs().float()
    return change - magnitude.mean() * change / magnitude.clamp_min(EPSILON)


def fapm_mask(delta: torch.Tensor, base: torch.Tensor, keep: float) -> torch.Tensor:
    """Returns a boolean mask of ``delta``'s shape, True on the ``round(keep * numel)``
    entries with the highest :func:`fapm_score` (the entries whose change is kept)."""
    score = fapm_score(delta, base).flatten()
    mask = torch.zeros_like(score, dtype=torch.bool)
    mask[score.topk(round(keep * score.numel())).indices] = True
    return mask.view_as(delta)


@torch.no_grad()
def _prune_full(model: torch.nn.Module, base_weights: dict[str, torch.Tensor],
                keep: float) -> tuple[int, int, int]:
    """Resets the pruned entries of each snapshotted matrix to its starting value.

    Returns:
        The matrices pruned, the entries reset, and the entries of those matrices.
    """
    reset = total = matrices = 0
    for name, parameter in model.named_parameters():
        base = base_weights.get(name)
        if base is None:
            continue
        mask = fapm_mask(parameter - base, base, keep)
        parameter.copy_(torch.where(mask, parameter, base))
        matrices += 1
        total += mask.numel()
        reset += mask.numel() - int(mask.sum())
    return matrices, reset, total


@torch.no_grad()
def _prune_adapters(model: torch.nn.Module, keep: float) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """Adds each LoRA layer's pruned delta to its base weight, then drops the adapters.

    Returns:
        The plain model (peft's ``unload``: adapters removed, nothing else merged), and the
        matrices pruned, the entries reset, and the entries of those matrices.
    """
    from peft.tuners.lora import LoraLayer

    reset = total = matrices = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        adapters = [name for name in module.active_adapters
                    if name in module.lora_A or name in module.lora_embedding_A]
        if not adapters:
            continue
        weight = module.get_base_layer().weight
        delta = sum(module.get_delta_weight(name).float() for name in adapters)  # (out, in), as weight
        mask = fapm_mask(delta, weight, keep)
        # What peft's merge does (W += dW), with the pruned delta in place of dW.
        weight.add_((delta * mask).to(weight.dtype))
        matrices += 1
        total += mask.numel()
        reset += mask.numel() - int(mask.sum())
    return model.unload(), (matrices, reset, total)

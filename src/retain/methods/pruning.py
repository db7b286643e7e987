"""Forgetting-aware pruning of the task vector after training: ``fapm``."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from retain.errors import ConfigError
from retain.methods.base import Method, MethodContext
from retain.methods.registry import register
from retain.methods.regularizers import TrainedWeight, starting_point

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
      biases) keep their trained values. The starting values are the copy l2sp and ewc
      measure from too (:func:`retain.methods.regularizers.starting_point`, one per run,
      on each weight's device), so the run holds a second copy of the trained weights
      until it ends (twice their memory, plus the optimizer's).
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
        self._weights: list[TrainedWeight] = []

    def check(self) -> None:
        if self.config.method.base == "qlora":
            raise ConfigError(
                "fapm cannot prune a qlora run: the pruned task vector must be added to the base "
                "weights, which are 4-bit and cannot hold it", field="method.use",
                fix="use lora with fapm (or drop fapm)")

    def prepare_model(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        # The starting point l2sp and ewc measure from too: one copy of the weights per run.
        self._weights = [weight for weight in starting_point(model, context) if weight.weight.dim() == 2]
        return model

    def finish(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        keep = self.settings.keep
        matrices, reset, total = _prune(self._weights, keep)
        self._weights = []
        if self.config.method.adapters:
            model = model.unload()  # peft: adapters removed, nothing else merged (done above)
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
def _prune(weights: list[TrainedWeight], keep: float) -> tuple[int, int, int]:
    """Keeps the top ``keep`` share of each matrix's task vector and resets the rest.

    A weight trained directly is reset entry by entry to its starting copy; an adapted
    weight gets ``W_pre + pruned dW`` written into its frozen base weight (what peft's
    merge does, with the pruned delta in place of ``dW``), and the caller drops the adapters.

    Returns:
        The matrices pruned, the entries reset, and the entries of those matrices.
    """
    reset = total = 0
    for weight in weights:
        delta = weight.deviation().float()  # (out, in), shaped as the weight
        base = weight.start if weight.layer is None else weight.weight
        mask = fapm_mask(delta, base, keep)
        if weight.layer is None:
            weight.weight.copy_(torch.where(mask, weight.weight, weight.start))
        else:
            weight.weight.add_((delta * mask).to(weight.weight.dtype))
        total += mask.numel()
        reset += mask.numel() - int(mask.sum())
    return len(weights), reset, total

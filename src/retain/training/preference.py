"""Preference tuning under the guards: ``train.objective: dpo`` with TRL's ``DPOTrainer``.

Direct preference optimisation (Rafailov et al., 2023, https://arxiv.org/abs/2305.18290)
raises the likelihood of each pair's chosen answer over its rejected one, relative to a
reference model. ``retain train`` runs it through the same steps as SFT
(:mod:`retain.training.run`): the audit and the doctor, the base measured, the guards'
checks, checkpoints and ``--resume``, the best checkpoint restored, the final evaluation,
the summary and the model card. What differs is here:

- :class:`PreferenceTrainer`: TRL's ``DPOTrainer`` with retain's method hooks
  (:class:`~retain.training.trainer.MethodHooks`), fed the pairs retain encoded
  (:mod:`retain.data.pairs`), so TRL does not tokenise them again;
- the reference: under LoRA (or QLoRA) the policy with its adapters off (TRL's own way),
  else a frozen copy of the model as training starts (after ``freeze``), held in memory
  beside it;
- the methods that combine with DPO: those that choose or group the trained weights
  (full, lora, qlora, freeze, llrd), penalties on the weights (ewc, l2sp) and
  post-processing (fapm). A method that changes the training rows (replay, self_augment
  and token_forget blend or mark SFT rows) or reads the logits of a loss is refused
  (:func:`retain.training.preflight.check_objective`).

TRL is an optional dependency: this module is imported only for ``dpo`` runs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel
from trl import DPOConfig, DPOTrainer

from retain.config import RetainConfig
from retain.data.pairs import EncodedPair
from retain.evaluation.preference import PairLogps, reward_figures
from retain.training.trainer import MethodHooks


class PreferenceTrainer(MethodHooks, DPOTrainer):
    """TRL's ``DPOTrainer`` with the run's methods in its optimizer and loss.

    The dataset holds the pairs as ``prompt_ids``/``chosen_ids``/``rejected_ids`` (and
    their ``length``, which ``train.group_by_length`` groups by), encoded by retain; TRL's
    own preparation (prompt extraction, EOS, tokenisation) is skipped.
    """

    def _prepare_dataset(self, dataset: Dataset, processing_class: Any, args: DPOConfig, dataset_name: str) -> Dataset:
        return dataset  # encoded by retain.data.pairs, as the audit and the doctor read it

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """DPO's loss, then each method's ``loss`` hook (with no model outputs: DPO's fused
        head computes log-probabilities, not logits)."""
        self._set_batch_context(num_items_in_batch)
        loss = super().compute_loss(model, inputs, return_outputs=False, num_items_in_batch=num_items_in_batch)
        loss = self._methods_loss(loss, model, inputs, None)
        return (loss, None) if return_outputs else loss


def preference_dataset(pairs: Sequence[EncodedPair]) -> Dataset:
    """Returns the pairs as the dataset :class:`PreferenceTrainer` trains on."""
    return Dataset.from_dict({
        "prompt_ids": [pair.prompt_ids for pair in pairs],
        "chosen_ids": [pair.chosen_ids for pair in pairs],
        "rejected_ids": [pair.rejected_ids for pair in pairs],
        "length": [pair.length for pair in pairs],
    })


def dpo_config(config: RetainConfig, arguments: dict[str, Any]) -> DPOConfig:
    """Returns TRL's ``DPOConfig``: the run's ``TrainingArguments`` (``arguments``) and
    ``train.dpo``; gradient checkpointing off unless ``train.trainer_args`` turns it on
    (TRL's default is on, transformers' off)."""
    settings = config.train.dpo
    arguments = dict(arguments)
    if "activation_checkpointing" in {field.name for field in dataclasses.fields(DPOConfig)}:
        # transformers 5.2x: gradient_checkpointing is the deprecated alias
        arguments.setdefault("activation_checkpointing", bool(arguments.pop("gradient_checkpointing", False)))
    else:
        arguments.setdefault("gradient_checkpointing", False)
    return DPOConfig(**arguments, beta=settings.beta, loss_type=[settings.loss_type],
                     label_smoothing=settings.label_smoothing, disable_dropout=settings.disable_dropout,
                     max_length=config.data.max_length, precompute_ref_log_probs=False)


def reference_model(model: PreTrainedModel) -> PreTrainedModel | None:
    """Returns DPO's reference: None under peft (TRL turns the adapters off to compute it),
    else a frozen copy of ``model`` as training starts."""
    if hasattr(model, "peft_config"):
        return None
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def add_reward_figures(final: dict[str, Any], base: dict[str, Any], beta: float) -> None:
    """Adds DPO's ``reward_accuracy`` and ``reward_margin`` (relative to the base, the
    reference) to each preference split of the final evaluation ``final``, in place
    (:func:`retain.evaluation.preference.reward_figures`)."""
    for split, score in (final.get("task") or {}).items():
        before = (base.get("task") or {}).get(split) or {}
        if score.get("kind") != "preference" or before.get("kind") != "preference":
            continue
        policy = PairLogps(tuple(score["chosen_logps"]), tuple(score["rejected_logps"]))
        reference = PairLogps(tuple(before["chosen_logps"]), tuple(before["rejected_logps"]))
        if len(policy.chosen) == len(reference.chosen):
            score["reward_accuracy"], score["reward_margin"] = reward_figures(policy, reference, beta)

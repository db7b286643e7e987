"""The Hugging Face ``Trainer`` with retain's methods wired into its optimizer and loss."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import Trainer

from retain.data.encoding import IGNORE_INDEX
from retain.methods import Method, MethodContext, ParamGroup
from retain.training.sampling import MixedSourceSampler

EXTRA_INPUTS = ("negative_labels",)
"""Batch keys that methods read and the model must not be given."""


class MethodHooks:
    """The methods' hooks in a ``Trainer`` subclass: the optimizer's parameter groups, the
    terms each method adds to a batch's loss, the figures it logs, and batches that mix
    the methods' blended rows. :class:`RetainTrainer` (SFT) and
    :class:`retain.training.preference.PreferenceTrainer` (TRL's ``DPOTrainer``) put it
    before their trainer class, so both objectives run the same methods the same way.

    Args:
        methods: The run's methods, in hook order.
        context: What the methods share; its ``step`` and ``batch_share`` are set here
            before each batch's loss.
    """

    methods: list[Method]
    context: MethodContext

    def __init__(self, *args: Any, methods: list[Method], context: MethodContext, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.methods = methods
        self.context = context

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        """Mixes every batch when methods blended rows of other sources in (a dataset with
        ``sources``, see :class:`MixedSourceSampler`); otherwise the trainer's own sampler
        (``train_sampling_strategy``)."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        sources = getattr(dataset, "sources", None)
        if not sources or len(set(sources)) < 2:
            return super()._get_train_sampler(train_dataset)
        return MixedSourceSampler(
            sources, dataset.lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            group_by_length=self.args.train_sampling_strategy == "group_by_length",
        )

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """Builds the optimizer from the methods' parameter groups (weight decay as the
        trainer's default: none on biases and norms)."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: list[ParamGroup] = []
        for decayed in (True, False):
            named = [(name, parameter) for name, parameter in model.named_parameters()
                     if parameter.requires_grad and (name in decay) is decayed]
            groups.append({"params": [parameter for _, parameter in named],
                           "names": [name for name, _ in named],
                           "weight_decay": self.args.weight_decay if decayed else 0.0})
        for method in self.methods:
            groups = method.param_groups(groups, model, self.context)
        groups = [{key: value for key, value in group.items() if key != "names"}
                  for group in groups if group["params"]]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The trainer's log, with each method's figures (:meth:`Method.logs`) beside the
        training loss."""
        if "loss" in logs:
            for method in self.methods:
                logs.update(method.logs())
        super().log(logs, start_time)

    def _set_batch_context(self, num_items_in_batch: torch.Tensor | int | None) -> None:
        """Sets the methods' step and ``batch_share`` for the coming batch.

        The trainer divides a micro-batch's loss by the accumulation steps unless it was
        already normalised over the whole accumulated batch; terms the methods add per
        micro-batch are scaled to match (``batch_share``), so each counts once per step.
        """
        scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
            or self.compute_loss_func is not None)
        self.context.batch_share = 1.0 / self.current_gradient_accumulation_steps if scaled else 1.0
        self.context.step = self.state.global_step
        self.context.max_steps = max(1, self.state.max_steps)

    def _methods_loss(self, loss: torch.Tensor, model: torch.nn.Module, inputs: dict[str, Any],
                      outputs: Any) -> torch.Tensor:
        """Returns ``loss`` after each method's ``loss`` hook in turn."""
        for method in self.methods:
            loss = method.loss(loss, model, inputs, outputs, self.context)
        return loss


class RetainTrainer(MethodHooks, Trainer):
    """``Trainer`` whose parameter groups and loss pass through the run's methods
    (:class:`MethodHooks`): supervised fine-tuning, ``train.objective: sft``.

    In training, the model's vocabulary projection and cross-entropy run only at the
    positions whose next token is trained (``logits_to_keep`` with the shifted labels as
    ``shift_labels``, both transformers' own arguments), when the model takes them, no
    method reads every logit (:meth:`Method.needs_every_logit`) and the trainer computes
    the loss from the labels itself: the same loss and gradients, without the logits of
    the prompt, which on a short answer are most of them (SmolLM2's 49,152-word
    vocabulary: about a fifth of a LoRA step's time).
    """

    def __init__(self, *args: Any, methods: list[Method], context: MethodContext, **kwargs: Any) -> None:
        super().__init__(*args, methods=methods, context=context, **kwargs)
        self.trained_logits_only = (
            not any(method.needs_every_logit() for method in methods)
            and "logits_to_keep" in inspect.signature(type(self._base_model()).forward).parameters)

    def _base_model(self) -> torch.nn.Module:
        """The transformers model under peft's wrappers, if any."""
        model = self.model
        while hasattr(model, "get_base_model") and model.get_base_model() is not model:
            model = model.get_base_model()
        return model

    def _keep_trained_logits(self, model: torch.nn.Module, inputs: dict[str, Any]) -> None:
        """Adds ``logits_to_keep`` (the positions at which any row's next token is trained)
        and ``shift_labels`` (their targets) to a training batch, where that saves work."""
        labels = inputs.get("labels")
        if (not self.trained_logits_only or not model.training or labels is None or labels.ndim != 2
                or "shift_labels" in inputs or self.label_smoother is not None
                or self.compute_loss_func is not None):
            return
        shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
        keep = (shifted != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
        if 0 < keep.numel() < labels.shape[1]:
            inputs["logits_to_keep"] = keep
            inputs["shift_labels"] = shifted[:, keep].contiguous()

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """The trainer's loss, then each method's ``loss`` hook in turn."""
        extra = {key: inputs.pop(key) for key in EXTRA_INPUTS if key in inputs}
        self._keep_trained_logits(model, inputs)
        self._set_batch_context(num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        inputs.pop("logits_to_keep", None)
        inputs.pop("shift_labels", None)
        inputs.update(extra)
        loss = self._methods_loss(loss, model, inputs, outputs)
        return (loss, outputs) if return_outputs else loss

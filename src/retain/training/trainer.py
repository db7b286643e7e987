"""The Hugging Face ``Trainer`` with retain's methods wired into its optimizer and loss."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from retain.methods import Method, MethodContext, ParamGroup
from retain.training.sampling import MixedSourceSampler

EXTRA_INPUTS = ("negative_labels",)
"""Batch keys that methods read and the model must not be given."""


class RetainTrainer(Trainer):
    """``Trainer`` whose parameter groups and loss pass through the run's methods.

    Args:
        methods: The run's methods, in hook order.
        context: What the methods share; its ``step`` and ``batch_share`` are set here
            before each batch's loss.
    """

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

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """The trainer's loss, then each method's ``loss`` hook in turn."""
        extra = {key: inputs.pop(key) for key in EXTRA_INPUTS if key in inputs}
        # The trainer divides a micro-batch's loss by the accumulation steps unless it was
        # already normalised over the whole accumulated batch; terms the methods add per
        # micro-batch are scaled to match (``batch_share``), so each counts once per step.
        scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
            or self.compute_loss_func is not None)
        self.context.batch_share = 1.0 / self.current_gradient_accumulation_steps if scaled else 1.0
        self.context.step = self.state.global_step
        self.context.max_steps = max(1, self.state.max_steps)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        inputs.update(extra)
        for method in self.methods:
            loss = method.loss(loss, model, inputs, outputs, self.context)
        return (loss, outputs) if return_outputs else loss

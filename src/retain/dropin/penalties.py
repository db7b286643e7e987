"""EWC and L2-SP for a trainer of your own: :func:`ewc` and :func:`l2sp` return a
callback that adds the penalty to training in any ``transformers.Trainer``, TRL's
``SFTTrainer`` and ``DPOTrainer`` included, with no subclass.

The penalty is ``retain train``'s own: the callback runs the registered ``ewc`` or
``l2sp`` method (:mod:`retain.methods.regularizers`): its ``prepare_model`` takes the
starting weights (and EWC's Fisher, estimated and cached as ``retain train`` does), and
its ``penalty`` is ``strength/2 x sum F (w_eff - w_start)^2``.

How it enters training, and why there. ``retain train`` adds the penalty to every
micro-batch's loss, scaled so that it counts once per optimizer step. A callback cannot
reach the loss, and the loss hooks a user could pass do not fit: ``compute_loss_func``
replaces the model's loss with one the user must compute, is deprecated in TRL's
``SFTTrainer`` and never called by ``DPOTrainer``, which computes its own loss; and how a
loss is divided under gradient accumulation depends on the trainer
(``loss_is_scaled_for_ga``, ``num_items_in_batch``). So the callback adds the penalty's
gradient instead, once per optimizer step, in ``on_step_begin``: transformers calls it
before the step's first micro-batch, after the previous step's ``zero_grad``, so the
micro-batches' backward passes add their gradients to it. What the optimizer then sees is
the gradient of ``loss + penalty`` whatever the accumulation and however the trainer
normalises its loss, and clipping (``max_grad_norm``) acts on that sum, as in ``retain
train``. Under fp16 the gradients are scaled until the trainer unscales them to clip, so
the penalty's gradient is multiplied by the grad scaler's current scale.

Limits: DeepSpeed and FSDP keep gradients in shards of their own, so the callback refuses
them; a trainer that zeroes gradients inside its own step (none of transformers' or TRL's
does) would drop the penalty; the logged loss is the trainer's, without the penalty
(``callback.penalties`` holds the penalty at every step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from retain.config import RetainConfig
from retain.data.prompting import PromptFormat
from retain.dropin.rows import General, general_config, general_texts, row_text
from retain.errors import ConfigError
from retain.methods.base import MethodContext
from retain.methods.regularizers import Ewc, L2Sp, Penalty
from retain.paths import cache_dir


class PenaltyCallback(TrainerCallback):
    """Adds ``retain train``'s ``ewc`` or ``l2sp`` penalty to any trainer's training
    (module docstring: how, and its limits). Build it with :func:`ewc` or :func:`l2sp`.

    Args:
        method: ``ewc`` or ``l2sp``.
        config: The settings, as ``retain train`` reads them (``method.<method>``,
            ``method.general``).
        general: Texts or rows given directly for EWC's Fisher, or None to read
            ``method.general``.
        echo: Prints what is measured when training begins (None: silent).

    Attributes:
        penalties: ``(step, penalty)`` at every optimizer step, before its update.
        method: The ``Ewc`` or ``L2Sp`` method, prepared when training begins.
    """

    def __init__(self, method: type[Penalty], config: RetainConfig, general: General = None,
                 echo: Callable[[str], None] | None = print) -> None:
        self.method = method(config)
        self.method.check()
        self.general = general
        self.echo = echo or (lambda line: None)
        self.penalties: list[tuple[int, float]] = []
        self._trained: list[torch.nn.Parameter] = []

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: PreTrainedModel | None = None, processing_class: Any = None, **kwargs: Any) -> None:
        """Takes the starting weights of what trains (and EWC's Fisher on the model as
        training finds it: with peft, the base weights of the adapted layers)."""
        if model is None:
            return
        if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
            raise ConfigError(f"retain.{self.method.name} adds its gradient to the parameters' .grad, which "
                              "DeepSpeed and FSDP keep in shards of their own",
                              fix=f"train without DeepSpeed/FSDP, or use retain train with method: [{self.method.name}]")
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if isinstance(self.method, Ewc) and not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise ConfigError("retain.ewc needs the model's tokenizer to estimate the Fisher on general texts",
                              fix="give the trainer processing_class=tokenizer")
        config = self.method.config
        name = getattr(model, "name_or_path", None)
        if name:  # a family's general texts, and the Fisher's cache key, follow the model
            config = config.model_copy(update={"model": config.model.model_copy(update={"name_or_path": str(name)})})
            self.method.config = config
        given = None  # a source by name is read by method.general, as in retain train
        if self.general is not None and not isinstance(self.general, (str, Path)):
            given = [item if isinstance(item, str) else row_text(item) for item in general_texts(self.general, config)]
        context = MethodContext(config=config, tokenizer=tokenizer, prompt_format=PromptFormat.raw(),
                                cache_dir=cache_dir() / "methods", echo=self.echo, _general=given)
        self.method.prepare_model(model, context)
        self._trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
        self.penalties = []

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      optimizer: Any = None, **kwargs: Any) -> None:
        """Adds the penalty's gradient to the parameters' ``.grad``, once per optimizer step."""
        if not self._trained or not self.method.weights:
            return
        scaler = getattr(optimizer, "scaler", None)  # accelerate's AcceleratedOptimizer under fp16
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        penalty = add_penalty_gradient(self.method, self._trained, scale)
        self.penalties.append((state.global_step, penalty))


def add_penalty_gradient(method: Penalty, parameters: Sequence[torch.nn.Parameter], scale: float = 1.0) -> float:
    """Adds ``scale x`` the gradient of ``method.penalty`` to each parameter's ``.grad``
    (creating it where there is none), without calling any hook that ``backward`` would
    (``autograd.grad`` does not accumulate, so DDP's gradient hooks do not fire).

    Returns:
        The penalty, as a float.
    """
    device = parameters[0].device
    penalty = method.penalty(device)  # ()
    if not penalty.requires_grad:
        return float(penalty)
    grads = torch.autograd.grad(penalty * scale, list(parameters), allow_unused=True)
    with torch.no_grad():
        for parameter, grad in zip(parameters, grads, strict=True):
            if grad is None:
                continue
            if parameter.grad is None:
                parameter.grad = grad.to(parameter.dtype)
            else:
                parameter.grad.add_(grad.to(parameter.grad.dtype))
    return float(penalty.detach())


def ewc(strength: float | None = None, *, general: General = None, samples: int | None = None,
        text_field: str = "text", limit: int | None = None,
        echo: Callable[[str], None] | None = print) -> PenaltyCallback:
    """Returns a callback that adds ``retain train``'s EWC penalty,
    ``strength/2 x sum F (w_eff - w_start)^2``, to any ``transformers`` or TRL trainer
    (Kirkpatrick et al., 2017, https://arxiv.org/abs/1612.00796). ``F`` is the diagonal
    empirical Fisher per token of the model as training begins, on ``samples`` general
    texts, cached in retain's cache as ``retain train`` caches it.

    Args:
        strength: ``method.ewc.strength``, lambda (None: its default, 100).
        general: The general texts of the Fisher: what ``method.general.source`` takes (a
            file, ``hf:NAME``, ``instructions``, a family's name such as ``lab``), a list
            of texts or rows; None: the model family's texts.
        samples: ``method.ewc.samples``, texts the Fisher is estimated on (None: 256).
        text_field: ``method.general.text_field``.
        limit: ``method.general.limit``.
        echo: Prints the Fisher's estimate or cache read (None: silent).

    Raises:
        ConfigError: A setting out of range.
    """
    config = general_config(general, method="ewc", settings={"strength": strength, "samples": samples},
                            text_field=text_field, limit=limit)
    return PenaltyCallback(Ewc, config, general, echo)


def l2sp(strength: float | None = None, *, echo: Callable[[str], None] | None = print) -> PenaltyCallback:
    """Returns a callback that adds ``retain train``'s L2-SP penalty,
    ``strength/2 x sum (w_eff - w_start)^2`` over every trained weight, to any
    ``transformers`` or TRL trainer (Li, Grandvalet & Davoine, 2018,
    https://arxiv.org/abs/1802.01483).

    Args:
        strength: ``method.l2sp.strength``, alpha (None: its default, 0.01).
        echo: Unused by L2-SP, accepted as :func:`ewc` accepts it.

    Raises:
        ConfigError: A setting out of range.
    """
    return PenaltyCallback(L2Sp, general_config(None, method="l2sp", settings={"strength": strength}), None, echo)


__all__ = ["PenaltyCallback", "add_penalty_gradient", "ewc", "l2sp"]

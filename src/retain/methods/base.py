"""The interface every forgetting mitigation implements, and what a method may use.

A method is a small class with up to five hooks, called by ``retain train`` in this order
(each is a no-op unless the method overrides it):

1. :meth:`Method.check` and :meth:`Method.load_kwargs`: refuse early what cannot work
   here (QLoRA without a GPU), and say how the base model is loaded (in 4 bits);
2. :meth:`Method.transform_rows`: change the encoded training rows, with the base model at
   hand (replay and self-augmentation blend rows in; token-level forgetting marks tokens);
3. :meth:`Method.prepare_model`: make the model ready to train (LoRA adapters, frozen
   layers) or record what a penalty needs (EWC's Fisher, the starting weights);
4. :meth:`Method.param_groups` and :meth:`Method.loss`: shape the optimizer's parameter
   groups (layer-wise learning rates) and the loss of each batch (penalties, token terms);
5. :meth:`Method.finish`: post-process the trained model (FAPM's pruning).

:meth:`Method.logs` adds figures to the trainer's log at every logged step (the penalties
report their size there).

Methods compose: every method of ``method.use`` runs its hooks, in the order of
:func:`retain.config.methods.method_names` (the base method that picks the trainable weights
first), whatever order the config lists them in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from retain.errors import RetainError
from retain.methods.general import load_general_texts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from retain.config import RetainConfig
    from retain.config.section import Section
    from retain.data.encoding import Encoded
    from retain.data.prompting import PromptFormat

logger = logging.getLogger("retain.methods")


# The integer type as wide as each element, to read a tensor's bits as integers.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def weights_digest(model: torch.nn.Module, digest: Any, skip: Collection[int] = frozenset()) -> None:
    """Feeds ``digest`` (a ``hashlib`` hash) the identity of ``model``'s weights: each
    tensor's name, shape, dtype and the sum of its elements' bits read as integers, cheap on
    any model and moved by any real change; parameters whose ``id`` is in ``skip`` are left
    out (adapters' random start).

    The sum is an integer one because integer addition is exact: a float sum's last bits
    follow the order of the reduction, which changes with the number of threads, so a
    cache keyed by it missed whenever a run used another thread count."""
    for name, parameter in model.named_parameters():
        if id(parameter) in skip:
            continue
        data = parameter.detach().contiguous()
        bits = data.view(_BITS[data.element_size()]).sum(dtype=torch.int64).item()
        digest.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype}:{bits}\0".encode())


ParamGroup = dict[str, Any]
"""An optimizer parameter group: ``params`` and ``names`` (parallel lists), ``weight_decay``,
and optionally ``lr``; :class:`retain.training.trainer.RetainTrainer` drops ``names``."""


@dataclass
class MethodContext:
    """What the methods of one run share.

    Attributes:
        config: The run's config.
        tokenizer: The model's tokenizer, after ``prepare_tokenizer``.
        prompt_format: How prompts are rendered (the one training and evaluation use).
        cache_dir: Where a method may cache what is costly to recompute (EWC's Fisher).
        echo: Prints one line for the user.
        step: The optimizer step being taken (set by the trainer before each batch).
        max_steps: The run's total optimizer steps.
        batch_share: What one micro-batch's own term must be multiplied by so that it
            counts once per optimizer step under gradient accumulation (set by the
            trainer; 1 without accumulation).
        store: Free space for methods to hand values to their later hooks.
    """

    config: RetainConfig
    tokenizer: PreTrainedTokenizerBase
    prompt_format: PromptFormat
    cache_dir: Path
    echo: Callable[[str], None] = print
    step: int = 0
    max_steps: int = 1
    batch_share: float = 1.0
    store: dict[str, Any] = field(default_factory=dict)
    _general: list[str] | None = None

    def general_texts(self) -> list[str]:
        """Returns the general data of ``method.general`` (read once, then kept).

        Raises:
            ConfigError: If no source is set and the model is not the lab model, or the
                source cannot be read.
        """
        if self._general is None:
            self._general = load_general_texts(self.config)
        return self._general


class Method:
    """A forgetting mitigation; subclasses override the hooks they need.

    Class attributes:
        name: The name ``method.use`` lists it by.
        paper: The paper it implements, as a citation with a link.
        settings_class: Its section of the config, ``method.<name>`` (None: no settings).
            The built-in methods' sections are in :mod:`retain.config.methods`; a method
            added in a file of its own defines its section there and names it here.
        after: The method whose hooks run just before this one's (None: after every other);
            read for a method :mod:`retain.config.methods` does not list.
        chooses_weights: True for a method that decides which weights train, as full,
            lora and qlora do (a run names at most one).
        reads_logits: Whether the method's ``loss`` reads ``outputs.logits``. Training
            computes the vocabulary's logits only where a token is trained (see
            :class:`retain.training.trainer.RetainTrainer`) unless a method whose ``loss``
            is its own says it reads them, which is the safe default for a method added
            in a file of its own.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    settings_class: ClassVar[type[Section] | None] = None
    after: ClassVar[str | None] = None
    chooses_weights: ClassVar[bool] = False
    reads_logits: ClassVar[bool] = True

    def __init__(self, config: RetainConfig) -> None:
        self.config = config

    @property
    def settings(self) -> Any:
        """This method's section of ``method`` (``method.<name>``), if it has one."""
        return getattr(self.config.method, self.name, None)

    def check(self) -> None:
        """Raises a :class:`retain.errors.RetainError` if the method cannot run here; called
        before anything is loaded."""

    def load_kwargs(self) -> dict[str, Any]:
        """Returns options for the base model's ``from_pretrained`` (QLoRA's 4-bit loading)."""
        return {}

    def transform_rows(self, rows: list[Encoded], model: PreTrainedModel,
                       context: MethodContext) -> list[Encoded]:
        """Returns the training rows to use; ``model`` is the base model, not yet prepared."""
        return rows

    def prepare_model(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        """Returns the model to train (it may wrap ``model`` or change it in place)."""
        return model

    def param_groups(self, groups: list[ParamGroup], model: PreTrainedModel,
                     context: MethodContext) -> list[ParamGroup]:
        """Returns the optimizer's parameter groups, given those built so far."""
        return groups

    def loss(self, loss: torch.Tensor, model: PreTrainedModel, inputs: dict[str, torch.Tensor],
             outputs: Any, context: MethodContext) -> torch.Tensor:
        """Returns the loss of one batch, given the loss so far (the trainer's, or the
        previous method's). ``outputs.logits`` holds every position only for a method
        with ``reads_logits`` (see the class attributes)."""
        return loss

    def needs_every_logit(self) -> bool:
        """Whether training must compute the logits at every position for this method: it
        has a ``loss`` of its own and ``reads_logits``."""
        return self.reads_logits and type(self).loss is not Method.loss

    def finish(self, model: PreTrainedModel, context: MethodContext) -> PreTrainedModel:
        """Returns the trained model after post-processing (called once, after training
        and after any restore of the best checkpoint)."""
        return model

    def logs(self) -> dict[str, float]:
        """Returns figures to log beside the trainer's loss (``metrics.jsonl``, trackers),
        each a mean since the previous log: e.g. a penalty's size, so that its share of
        the loss can be read."""
        return {}


# --- helpers the methods share --------------------------------------------------------


def trainable(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """Yields the parameters that train, with their names."""
    return ((name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """Returns the transformers model under a peft wrapper (or ``model`` itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Returns the transformer blocks, bottom first, for the usual decoder layouts.

    Raises:
        RetainError: If the model has no recognisable list of layers.
    """
    inner = base_model(model)
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
                 "transformer.blocks"):
        found: Any = inner
        for part in path.split("."):
            found = getattr(found, part, None)
            if found is None:
                break
        if isinstance(found, torch.nn.ModuleList) and len(found):
            return list(found)
    raise RetainError(f"cannot find the transformer layers of {type(inner).__name__}",
                      fix="freeze and llrd support Llama/Mistral/Qwen/GPT-2/GPT-NeoX style models")

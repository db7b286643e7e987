"""The memory a training needs on a CPU, estimated from the config and the weights'
headers alone, and a run refused before anything loads when the machine has less."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
)

from retain.config import RetainConfig
from retain.errors import ModelLoadError, RetainError
from retain.hardware import available_memory
from retain.modelfiles import json_object, safetensors_shapes, weight_files
from retain.models import resolve_device, resolve_dtype, resolve_model_path

logger = logging.getLogger("retain.models")


class InsufficientMemory(RetainError):
    """Training the model on this machine's CPU needs more memory than it has available."""


_GIB = 1024**3

# Activations at the small batches a CPU trains with, the allocator's slack, Python and
# the libraries: a margin on top of what the parameters themselves take.
_MARGIN = 0.2


@dataclass(frozen=True)
class MemoryEstimate:
    """What training a model on the CPU needs, from its parameter count.

    Attributes:
        model: The model, as the config names it.
        parameters: Its parameter count (the base model's, for adapters).
        dtype: The dtype the weights load in.
        weights: Bytes of the weights.
        training_state: Bytes of gradients, optimizer moments and copies of the weights
            that the config's methods keep (for LoRA, its adapters with theirs).
        needed: Weights plus training state plus the margin.
        available: What this machine has available, if known.
    """

    model: str
    parameters: int
    dtype: torch.dtype
    weights: int
    training_state: int
    needed: int
    available: int | None

    def describe(self) -> str:
        """Returns the estimate in one phrase."""
        dtype = str(self.dtype).removeprefix("torch.")
        count = (f"{self.parameters / 1e9:.2f}B" if self.parameters >= 1e9
                 else f"{self.parameters / 1e6:.1f}M")
        return (f"about {_in_bytes(self.needed)} ({count} parameters: {_in_bytes(self.weights)} of {dtype} "
                f"weights, {_in_bytes(self.training_state)} of gradients, optimizer state and weight "
                f"copies, +{_MARGIN:.0%} for activations and the runtime)")


def _in_bytes(size: int) -> str:
    """Returns a byte count in GiB, or in MiB below one GiB."""
    return f"{size / _GIB:.1f} GiB" if size >= _GIB else f"{size / (1 << 20):.1f} MiB"


def estimate_training_memory(config: RetainConfig, *, merge: bool = False) -> MemoryEstimate | None:
    """Estimates the memory ``retain train`` needs for ``config`` on the CPU, loading nothing.

    Per parameter: the weights in the load dtype; under full fine-tuning also a gradient
    and AdamW's two moments in that dtype; a copy of the starting weights for l2sp, ewc
    or fapm and a Fisher estimate for ewc (under full fine-tuning); a second model with
    its own optimizer while token_forget fits its reference model (full fine-tuning); a
    copy of the weights when ``merge`` (``--merge`` merges the adapters into a copy, so
    that the trained model stays as it is); under LoRA the adapters (rank x inputs and
    outputs of each targeted weight), their gradients and AdamW's two moments, in float32.
    A margin of 20% covers activations and the runtime.

    Returns:
        The estimate, or None when the model does not train on the CPU or its parameter
        count cannot be found without loading it (a hub id not in the local cache).
    """
    device = resolve_device(config.model.device)
    if device != "cpu":
        return None
    shapes = parameter_shapes(config.model.name_or_path, revision=config.model.revision,
                              trust_remote_code=config.model.trust_remote_code)
    if shapes is None:
        return None
    parameters = sum(math.prod(shape) for shape in shapes.values())
    dtype = resolve_dtype(config.model.dtype, device)
    size = torch.tensor([], dtype=dtype).element_size()
    copies = 0  # extra values per parameter, each of the load dtype's size
    if config.method.base == "full":
        copies += 3  # the gradient and AdamW's two moments
        use = set(config.method.use)
        copies += 1 if use & {"l2sp", "ewc", "fapm"} else 0  # one shared copy of the start
        copies += 1 if "ewc" in use else 0  # the Fisher information
        copies += 4 if "token_forget" in use else 0  # the reference model, its gradient and moments
    elif merge:
        copies += 1  # training.finish.save_merged merges into a deep copy
    weights, state = parameters * size, parameters * size * copies
    if config.method.base in ("lora", "qlora"):  # the adapters in float32: values, gradient, two moments
        lora = config.method.lora
        state += lora_parameters(shapes, lora.r, lora.target_modules) * 4 * 4
    return MemoryEstimate(config.model.name_or_path, parameters, dtype, weights, state,
                          needed=math.ceil((weights + state) * (1 + _MARGIN)), available=available_memory())


def check_training_memory(config: RetainConfig, *, merge: bool = False) -> MemoryEstimate | None:
    """Refuses a CPU training that cannot fit in the memory this machine has available.

    Args:
        config: The run's config.
        merge: ``--merge`` was asked for (a second copy of the weights, for adapters).

    Returns:
        The estimate (logged), or None when there is none (see
        :func:`estimate_training_memory`) or the available memory is unknown.

    Raises:
        InsufficientMemory: If the estimate exceeds the available memory; the message
            carries the estimate.
    """
    estimate = estimate_training_memory(config, merge=merge)
    if estimate is None or estimate.available is None:
        logger.info("memory check skipped: %s", "no CPU estimate for this model" if estimate is None
                    else "this system does not say how much memory is available")
        return None
    logger.info("training %s on the CPU needs %s; %s available", estimate.model, estimate.describe(),
                _in_bytes(estimate.available))
    if estimate.needed > estimate.available:
        raise InsufficientMemory(
            f"training '{estimate.model}' on the CPU needs {estimate.describe()}, and this machine has "
            f"{_in_bytes(estimate.available)} available",
            field="model.name_or_path",
            fix="train LoRA adapters (method.use: [lora]) or a smaller model, use a GPU (model.device), "
            "free memory, or pass --force to try anyway",
        )
    return estimate


def count_parameters(name_or_path: str, *, revision: str | None = None,
                     trust_remote_code: bool = False) -> int | None:
    """Returns a model's parameter count without loading its weights (of the base, for adapters).

    Read from the safetensors headers of a local model, else from its config by building
    the model on the meta device (no memory). None when neither is at hand.

    Raises:
        ModelLoadError: A file it reads is damaged or not what it claims (a header longer
            than its file, an index without ``weight_map``, an adapter whose base is itself);
            the error names the file.
    """
    shapes = parameter_shapes(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    return None if shapes is None else sum(math.prod(shape) for shape in shapes.values())


def parameter_shapes(name_or_path: str, *, revision: str | None = None,
                     trust_remote_code: bool = False) -> dict[str, tuple[int, ...]] | None:
    """Returns the shape of each of a model's weights by name, loading none of them (of
    the base, for adapters), as :func:`count_parameters` reads them; None when neither
    the headers nor the config are at hand."""
    return _shapes(name_or_path, revision=revision, trust_remote_code=trust_remote_code, seen=set())


def lora_parameters(shapes: dict[str, tuple[int, ...]], rank: int, targets: list[str]) -> int:
    """Returns the number of LoRA adapter values for weights of ``shapes``: ``rank`` x
    (inputs + outputs) for each 2-D weight of a module named in ``targets``."""
    total = 0
    for name, shape in shapes.items():
        module = name.removesuffix(".weight")
        if len(shape) == 2 and module != name and module.rsplit(".", 1)[-1] in targets:
            total += rank * (shape[0] + shape[1])
    return total


def _shapes(name_or_path: str, *, revision: str | None, trust_remote_code: bool,
            seen: set[Path]) -> dict[str, tuple[int, ...]] | None:
    try:
        path = resolve_model_path(name_or_path, progress=False)
    except ModelLoadError:
        return None
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        if path.resolve() in seen:
            raise ModelLoadError("the adapter's base model is the adapter itself", file=adapter_config,
                                 field="base_model_name_or_path", fix="set it to the base model the adapter was trained on")
        seen.add(path.resolve())
        base = json_object(adapter_config).get("base_model_name_or_path") or ""
        if not isinstance(base, str):
            raise ModelLoadError("base_model_name_or_path is not a name or path", file=adapter_config,
                                 field="base_model_name_or_path", fix="set it to the base model's name or folder")
        return _shapes(base, revision=None, trust_remote_code=trust_remote_code, seen=seen) if base else None
    files = weight_files(path) if path.is_dir() else []
    if files:
        return {name: shape for file in files for name, shape in safetensors_shapes(file).items()}
    try:
        config = AutoConfig.from_pretrained(str(path), revision=revision, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as error:
        logger.info("cannot count the parameters of %s without loading it: %s", name_or_path, error)
        return None
    return {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}

"""Loading the model a command works on: a registered name, a directory, a hub id, adapters.

One entry point, :func:`load_model`, so that ``retain eval``, ``retain baseline`` and
``retain train`` all resolve a registered model name (:mod:`retain.sources`), a saved
model directory, a PEFT adapter directory (its base model is loaded first, adapters on
top) or a Hugging Face Hub id the same way,
with safetensors only (weights and adapters: no pickle is ever unpickled) and remote code
off unless the user turns it on, which is logged as a warning.

:func:`check_training_memory` estimates, from the config and the weights' headers alone,
the memory a CPU training needs and refuses it before anything is loaded when the
machine has less.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from retain.errors import ModelLoadError
from retain.ggufmodels import SUFFIX as GGUF_SUFFIX
from retain.ggufmodels import gguf_file_in, load_gguf
from retain.hardware import default_device
from retain.modelfiles import damaged_file, json_object
from retain.sources import model_family

logger = logging.getLogger("retain.models")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Where a run directory keeps its final model, in order of preference (see issue 5).
_RUN_MODEL_DIRS = ("model", "adapter", "final")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to evaluate or train.

    Attributes:
        model: The causal LM (a ``PeftModel`` when adapters were loaded).
        tokenizer: Its tokenizer, with a pad token.
        source: What the user named (a registered name, a path or a hub id).
        base: The base model's name or path (itself, unless adapters were loaded).
        is_adapter: True when ``model`` is a base model with PEFT adapters on top.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    base: str
    is_adapter: bool


@dataclass(frozen=True)
class ModelParts:
    """A model's tokenizer and configs, without its weights (what ``retain doctor`` reads).

    Attributes:
        tokenizer: The tokenizer as saved (no pad token added).
        config: The model config (of the base model, for adapters).
        generation: What ``model.generate()`` uses when given no arguments, as a dict.
        generation_error: Why transformers rejects those settings, if it does.
        path: The directory or hub id the configs came from.
    """

    tokenizer: PreTrainedTokenizerBase
    config: PretrainedConfig
    generation: dict[str, Any]
    generation_error: str | None
    path: str

    @property
    def context_window(self) -> int | None:
        """Returns the model's longest sequence, if its config says."""
        return getattr(self.config, "max_position_embeddings", None)


def resolve_device(device: str) -> str:
    """Returns the device for ``auto`` (GPU if visible) or the one named."""
    return default_device() if device == "auto" else device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """Returns the load dtype; ``auto`` is float32 on CPU and bfloat16 on a bf16 GPU."""
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_name(name_or_path: str, progress: bool = True) -> str:
    """Returns the model directory a registered model name stands for (built on first
    use; :mod:`retain.sources`), or ``name_or_path`` as it is."""
    family = model_family(name_or_path)
    return str(family.build(progress)) if family is not None else name_or_path


def load_model(
    name_or_path: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    load_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Loads a registered model, a model directory, an adapter directory, a run directory or a hub id.

    ``load_kwargs`` go to ``from_pretrained`` of a plain model (QLoRA's quantisation
    config); a quantised model is placed by its ``device_map``, not moved.

    Raises:
        ModelLoadError: If nothing loadable is found, with what was looked for and a fix.
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    _warn_if_remote_code(name_or_path, trust_remote_code)
    path = resolve_model_path(name_or_path, progress)
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        return _load_adapter(path, adapter_config, name_or_path, device, torch_dtype, trust_remote_code)
    model, tokenizer = _load_plain(str(path), revision, device, torch_dtype, trust_remote_code,
                                   load_kwargs or {})
    return LoadedModel(model, tokenizer, name_or_path, str(path), is_adapter=False)


def load_model_parts(
    name_or_path: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> ModelParts:
    """Loads tokenizer, config and generation config of a model, resolved as :func:`load_model`.

    Raises:
        ModelLoadError: If nothing loadable is found, with what was looked for and a fix.
    """
    _warn_if_remote_code(name_or_path, trust_remote_code)
    path = resolve_model_path(name_or_path, progress)
    tokenizer_source = str(path)
    adapter_config = path / "adapter_config.json"
    folders = [path]
    if adapter_config.is_file():
        base = _base_name(adapter_config)
        if not any(path.glob("tokenizer*.json")):
            tokenizer_source = base
        path = Path(resolve_name(base, progress))
        folders.append(path)
    for folder in folders:
        _refuse_remote_code(name_or_path, folder, trust_remote_code)
    options = {"revision": revision, "trust_remote_code": trust_remote_code}
    with guarded_load(name_or_path, folders):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, **options)
        config = AutoConfig.from_pretrained(str(path), **options)
    return ModelParts(tokenizer, config, *_generation_settings(path, config, revision), str(path))


def _generation_settings(
    path: Path, config: PretrainedConfig, revision: str | None
) -> tuple[dict[str, Any], str | None]:
    """Returns the generation settings ``generate()`` will use, and why they are invalid.

    Read as plain JSON where possible: transformers refuses to load an invalid file (e.g.
    ``max_new_tokens: 0``), and the doctor must still say what is in it.
    """
    local = path / "generation_config.json"
    settings = json_object(local) if local.is_file() else {}  # a damaged file is named here
    try:
        return GenerationConfig.from_pretrained(str(path), revision=revision).to_dict(), None
    except OSError:  # no generation_config.json: generate() derives one from the config
        return GenerationConfig.from_model_config(config).to_dict(), None
    except ValueError as error:
        return settings, str(error)


_WARNED_REMOTE_CODE: set[str] = set()


def _warn_if_remote_code(name_or_path: str, trust_remote_code: bool) -> None:
    """Logs, once per model and process, that the model's own Python code may run."""
    if trust_remote_code and name_or_path not in _WARNED_REMOTE_CODE:
        _WARNED_REMOTE_CODE.add(name_or_path)
        logger.warning(
            "model.trust_remote_code is on: Python code shipped with '%s' may run on this machine "
            "with your permissions; turn it off unless you have read that code or trust its authors",
            name_or_path,
        )


def resolve_model_path(name_or_path: str, progress: bool = True) -> Path:
    """Returns a registered model's directory, the model directory in a path (a GGUF file,
    or a folder holding one, converted once into the cache: :mod:`retain.ggufmodels`), or
    a hub id as is."""
    family = model_family(name_or_path)
    if family is not None:
        return family.build(progress)
    path = Path(name_or_path)
    if path.suffix.lower() == GGUF_SUFFIX and not path.exists():
        raise ModelLoadError(f"there is no GGUF file {path}", file=path,
                             fix="check the path; a GGUF model is a file ending in .gguf")
    gguf = gguf_file_in(path)
    if gguf is not None:
        return load_gguf(gguf, progress)
    return _model_dir_in(path) if path.is_dir() else path


def _model_dir_in(path: Path) -> Path:
    """Returns the directory holding the weights: ``path`` itself or a run's model dir."""
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    for name in _RUN_MODEL_DIRS:
        if (path / name / "config.json").is_file() or (path / name / "adapter_config.json").is_file():
            return path / name
    raise ModelLoadError(
        f"'{path}' holds no model: no config.json or adapter_config.json in it or in "
        f"{', '.join(name + '/' for name in _RUN_MODEL_DIRS)}",
        file=path,
        fix="point at a directory saved with save_pretrained, or at a finished run directory",
    )


@contextlib.contextmanager
def guarded_load(name: str, folders: list[Path]) -> Iterator[None]:
    """Turns any failure of transformers or peft to load ``name`` into one
    :class:`ModelLoadError`: the damaged file in ``folders`` when one is
    (:func:`retain.modelfiles.damaged_file`), else :func:`load_error`'s reading of the error.

    Every ``from_pretrained`` of a model, tokenizer, config or adapter runs inside it: a
    damaged file fails deep inside those libraries in any way (a ``KeyError`` for a
    tokenizer.json without its vocabulary, a ``TypeError`` for a list), and each means
    the same to the user.
    """
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001 (see the docstring)
        for folder in folders:
            damaged = damaged_file(folder)
            if damaged is not None:
                raise damaged from None
        raise load_error(name, error) from None


def _ships_code(name: str, file: Path | None = None) -> ModelLoadError:
    return ModelLoadError(f"model '{name}' ships its own Python code (its config's auto_map), which retain "
                          "does not run unless told to", file=file, field="model.trust_remote_code",
                          fix=f"set model.trust_remote_code: true only if you trust the code in {name}")


def _refuse_remote_code(name: str, folder: Path, trust_remote_code: bool) -> None:
    """Raises before transformers reads ``folder`` if its config or tokenizer config names
    code to run (an ``auto_map``) and retain was not told to trust it; transformers would
    fail later, after a warning, with an error about whichever file it read first."""
    if trust_remote_code or not folder.is_dir():
        return
    for file in (folder / "config.json", folder / "tokenizer_config.json"):
        if file.is_file() and "auto_map" in json_object(file):
            raise _ships_code(name, file)


def _base_name(adapter_config: Path) -> str:
    """Returns the base model an adapter names; raises :class:`ModelLoadError` if it names none."""
    base = json_object(adapter_config).get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise ModelLoadError(
            "adapter_config.json names no base_model_name_or_path",
            file=adapter_config,
            field="base_model_name_or_path",
            fix="set it to the base model's directory or hub id",
        )
    if Path(base).resolve() == adapter_config.parent.resolve():
        raise ModelLoadError("the adapter's base model is the adapter itself", file=adapter_config,
                             field="base_model_name_or_path", fix="set it to the base model the adapter was trained on")
    return base


def load_error(name: str, error: Exception) -> ModelLoadError:
    """Returns transformers' refusal to load ``name`` as one error with the fix for its cause:
    code the model ships (an ``auto_map``) that retain was not told to trust, an invalid
    ``generation_config.json``, or a path, hub id or file that cannot be read."""
    first = (str(error).splitlines() or [type(error).__name__])[0]
    text = str(error)
    if "trust_remote_code" in text or "custom code" in text:
        return _ships_code(name)
    if "generation" in text.lower() and isinstance(error, ValueError):
        return ModelLoadError(f"cannot load model '{name}': {first}",
                              fix="fix generation_config.json in the model directory; `retain doctor` lists "
                              "every generation setting that would stop the model from answering")
    return ModelLoadError(f"cannot load model '{name}': {first}",
                          fix="check the path or hub id; hub models need network access or a local copy "
                          "(HF_HUB_OFFLINE=1 uses only the local cache); retain loads safetensors weights only "
                          "(convert .bin checkpoints with save_pretrained)")


def _load_plain(
    name: str, revision: str | None, device: str, dtype: torch.dtype, trust_remote_code: bool,
    extra: dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    extra = extra or {}
    _refuse_remote_code(name, Path(name), trust_remote_code)
    with guarded_load(name, [Path(name)]):
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            name,
            revision=revision,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,  # never unpickle .bin weights
            **extra,
        )
    _ensure_pad_token(tokenizer)
    if "quantization_config" in extra:  # placed by its device_map; a quantised model cannot move
        return model.eval(), tokenizer
    return model.to(device).eval(), tokenizer


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Hides the FutureWarning peft triggers in transformers 5 on every call
    (``is_gradient_checkpointing`` is deprecated): noise the user cannot act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _load_adapter(
    path: Path,
    adapter_config: Path,
    source: str,
    device: str,
    dtype: torch.dtype,
    trust_remote_code: bool,
) -> LoadedModel:
    from peft import PeftModel

    base_name = _base_name(adapter_config)
    if not (path / "adapter_model.safetensors").is_file():
        raise ModelLoadError(
            f"'{path}' has no adapter_model.safetensors"
            + (" (only adapter_model.bin, a pickle that could run code when loaded)"
               if (path / "adapter_model.bin").is_file() else ""),
            file=path,
            fix="retain loads safetensors weights only: save the adapters with peft's "
            "save_pretrained (safe_serialization is its default)",
        )
    base_path = resolve_name(base_name, progress=False)
    model, tokenizer = _load_plain(base_path, None, device, dtype, trust_remote_code)
    with guarded_load(source, [path]):
        if any(path.glob("tokenizer*.json")):
            tokenizer = AutoTokenizer.from_pretrained(path)
            _ensure_pad_token(tokenizer)
        with quiet_peft():
            peft_model = PeftModel.from_pretrained(model, path).to(device).eval()
    return LoadedModel(peft_model, tokenizer, source, base_path, is_adapter=True)


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Gives a tokenizer without a pad token one for batched inference.

    Padding is masked and on the left at inference, so reusing EOS is harmless here; it
    is training that must not use EOS as padding (``retain doctor`` checks that).
    """
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token

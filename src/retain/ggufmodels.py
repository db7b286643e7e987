"""GGUF files as models: each converted once into a safetensors directory in the cache.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=NAME)`` with the
``gguf`` package) by dequantising every tensor to float32: about 20 s for 135M
parameters on 2 cores, at every load, and a model loaded so refuses ``save_pretrained``.
retain converts a GGUF file once into a plain directory (``config.json``,
``model.safetensors``, the tokenizer with its chat template, ``generation_config.json``)
under ``$RETAIN_CACHE_DIR/gguf/``; every command then loads that directory in under a
second, and adapters trained on it name it as their base. The conversion is keyed by the
file's path, size and modification time, so an edited file is converted again.

Nothing here names an architecture: whatever transformers reads from GGUF
(``GGUF_SUPPORTED_ARCHITECTURES``: llama, qwen2, gemma3, ...) converts the same way, and
anything else is refused in one line listing what is supported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from retain.errors import ModelLoadError
from retain.paths import cache_dir

SUFFIX = ".gguf"
# Written last into a converted directory: what it came from. A directory without it is
# a conversion that did not finish, never used.
MARKER = "retain_gguf.json"
_INSTALL = "pip install gguf (or make setup, which installs retain's gguf extra)"


def gguf_file_in(path: Path) -> Path | None:
    """Returns the GGUF file ``path`` names: the file itself, or the only ``.gguf`` file of
    a folder that holds no ``config.json`` (a folder with both is a plain model directory).

    Raises:
        ModelLoadError: The folder holds several GGUF files (which one is meant?).
    """
    if path.suffix.lower() == SUFFIX and path.is_file():
        return path
    if not path.is_dir() or (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return None
    files = sorted(file for file in path.glob("*") if file.suffix.lower() == SUFFIX and file.is_file())
    if len(files) > 1:
        raise ModelLoadError(f"{path} holds {len(files)} GGUF files ({', '.join(file.name for file in files[:4])})",
                             file=path, fix=f"name one of them, e.g. model.name_or_path: {files[0]}")
    return files[0] if files else None


def converted_dir(gguf: Path) -> Path:
    """Returns where the conversion of ``gguf`` lives (whether or not it exists yet)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf.stem}-{key}"


def load_gguf(gguf: Path, progress: bool = True) -> Path:
    """Returns the safetensors directory converted from ``gguf``, converting it first
    (once; later calls find it in the cache).

    Raises:
        ModelLoadError: The ``gguf`` package is missing, the file is damaged or not GGUF,
            or it holds an architecture or tensor type transformers cannot read; one line
            naming the file and what is supported.
    """
    target = converted_dir(gguf)
    if (target / MARKER).is_file():
        return target
    return convert(gguf, target, progress=progress)


def supported_architectures() -> list[str]:
    """Returns the model architectures transformers reads from GGUF files."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(GGUF_SUPPORTED_ARCHITECTURES)


def read_architecture(gguf: Path) -> str:
    """Returns the architecture a GGUF file's header names (``general.architecture``).

    Raises:
        ModelLoadError: The ``gguf`` package is missing, or the file is not a readable GGUF file.
    """
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelLoadError(f"reading {gguf.name} needs the gguf package, which is not installed",
                             file=gguf, fix=_INSTALL) from None
    try:
        reader = GGUFReader(str(gguf))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    # A damaged file fails inside the reader in many ways (a bad magic ValueError, a short
    # read, a memory map of a truncated file, a header without the key); each means the same.
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(f"{gguf.name} is not a readable GGUF file ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:160] if str(error) else 'no detail'})",
                             file=gguf, fix="download the file again; it is damaged or not GGUF") from None


def convert(gguf: Path, target: Path, progress: bool = True, about: dict | None = None) -> Path:
    """Converts ``gguf`` into the safetensors directory ``target``: written beside it
    under a temporary name, marked complete, then renamed into place, so that an
    interrupted conversion is never taken for a model and two processes converting the
    same file both end with one complete directory. ``about`` joins what the marker file
    records (where a packaged model came from).

    Raises:
        ModelLoadError: As :func:`load_gguf`.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    architecture = read_architecture(gguf)
    supported = supported_architectures()
    if architecture not in supported:
        raise ModelLoadError(
            f"{gguf.name} holds a '{architecture}' model, which transformers {transformers.__version__} "
            "cannot read from GGUF", file=gguf,
            fix=f"use a GGUF file of a supported architecture ({', '.join(supported)}), or the model's "
            "safetensors release")
    if progress:  # a status line, as the progress bars are: on stderr, only when asked for
        print(f"converting {gguf.name} ({architecture}) once into {target}: about 20 s per 100M parameters "
              "on 2 cores; later loads take a second", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # Dequantised on load, the weights are plain float32; what is left of the GGUF
        # quantiser only makes save_pretrained refuse them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / MARKER).write_text(json.dumps({
            "source": str(gguf.resolve()), "size": gguf.stat().st_size, "architecture": architecture,
            "parameters": sum(parameter.numel() for parameter in model.parameters()),
            "transformers": transformers.__version__, **(about or {}),
        }, indent=2) + "\n")
    except ModelLoadError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as error:  # noqa: BLE001 - a tensor type or layout the readers cannot take
        shutil.rmtree(staging, ignore_errors=True)
        first = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise ModelLoadError(f"cannot convert {gguf.name} ({architecture}): {type(error).__name__}: {first}",
                             file=gguf, fix="use a complete export of the model (llama.cpp's convert_hf_to_gguf "
                             "writes one) in a tensor type the gguf package reads (F32, F16, BF16, Q4_0 to Q8_0, "
                             "the K quants), or the model's safetensors release") from None
    except BaseException:  # Ctrl-C: no half-written directory left behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists() and not (target / MARKER).is_file():
        shutil.rmtree(target, ignore_errors=True)  # a directory some earlier version left unmarked
    try:
        staging.rename(target)
    except OSError:  # another process finished the same conversion first: keep its directory
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / MARKER).is_file():
            raise
    return target

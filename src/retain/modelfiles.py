"""The files of a model directory, read by retain itself, within bounds.

Two readers need them: the memory estimate (:mod:`retain.memory`) counts parameters
from the safetensors headers before anything is loaded, and :mod:`retain.models`, when
transformers or peft fail to load a directory, names the damaged file instead of
passing on a ``KeyError`` from deep inside a tokenizer. Every check here reads JSON
through :func:`retain.io.decode_json` (nesting, huge numbers and repeated keys refused)
and a safetensors header only after its length is checked against the file.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

from retain.errors import ModelLoadError
from retain.io import decode_json

DAMAGED = "re-download or re-save the model (this file is damaged or not what its name says)"

# The JSON files transformers and peft read from a model or adapter directory, and the
# key each must hold to be what its name says (None: any object).
JSON_FILES = {
    "config.json": None,
    "adapter_config.json": None,
    "generation_config.json": None,
    "tokenizer_config.json": None,
    "special_tokens_map.json": None,
    "tokenizer.json": "model",
    "model.safetensors.index.json": "weight_map",
}
# tokenizer.json of large vocabularies runs to tens of megabytes; past this a "JSON"
# model file is not one (and decoding it would take the memory of a model).
_MAX_JSON_BYTES = 512 * 2**20


def json_object(path: Path, required: str | None = None) -> dict:
    """Returns the JSON object in a model file.

    Raises:
        ModelLoadError: Naming the file, if it cannot be read, is not JSON, is not an
            object or lacks ``required``.
    """
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise ModelLoadError(f"{path.name} is {path.stat().st_size:,} bytes, too large for a JSON model file",
                                 file=path, fix=DAMAGED)
        value = decode_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise ModelLoadError(f"cannot read {path.name}: {error}", file=path, fix=DAMAGED) from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path.name} is not a JSON object", file=path, fix=DAMAGED)
    if required is not None and not isinstance(value.get(required), (dict, list)):
        raise ModelLoadError(f"{path.name} has no '{required}' section, so it is not a {path.name}",
                             file=path, field=required, fix=DAMAGED)
    return value


def weight_files(path: Path) -> list[Path]:
    """Returns a model directory's safetensors files, by its shard index when it has one
    (some repositories ship the same weights twice, e.g. ``consolidated.safetensors``)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
            raise ModelLoadError("the shard index has no weight_map of file names", file=index,
                                 field="weight_map", fix=DAMAGED)
        files = sorted({path / name for name in weight_map.values()})
        missing = [file for file in files if not file.is_file()]
        if missing:
            raise ModelLoadError(f"the shard index names {missing[0].name}, which is not there", file=index,
                                 fix="download every shard of the model")
        return files
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    return sorted(path.glob("*.safetensors"))


def safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Returns each tensor's shape in a safetensors file, from its JSON header alone
    (8 bytes of little-endian length, then that many bytes of JSON)."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            raise ModelLoadError(f"{file.name} is too short to be safetensors ({size} bytes)", file=file, fix=DAMAGED)
        (length,) = struct.unpack("<Q", start)
        if length > size - 8:
            raise ModelLoadError(f"{file.name}'s header claims {length:,} bytes; the file has {size:,}",
                                 file=file, fix=DAMAGED)
        try:
            header = decode_json(handle.read(length).decode("utf-8"))
        except ValueError as error:
            raise ModelLoadError(f"{file.name}'s header is not JSON: {error}", file=file, fix=DAMAGED) from None
    try:
        return {key: tuple(int(dim) for dim in entry["shape"])
                for key, entry in header.items() if key != "__metadata__"}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ModelLoadError(f"{file.name}'s header does not list tensors with shapes", file=file,
                             fix=DAMAGED) from None


def safetensors_parameters(file: Path) -> int:
    """Returns the number of values in a safetensors file, from its header alone."""
    return sum(math.prod(shape) for shape in safetensors_shapes(file).values())


def damaged_file(folder: Path) -> ModelLoadError | None:
    """Returns what is wrong with the first damaged file in a model or adapter folder
    (its JSON files, then the safetensors headers), or None when each reads as what its
    name says: the diagnosis of a load that failed."""
    if not folder.is_dir():
        return None
    try:
        for name, required in JSON_FILES.items():
            if (folder / name).is_file():
                json_object(folder / name, required)
        for file in weight_files(folder) + sorted(folder.glob("adapter_model.safetensors")):
            safetensors_parameters(file)
    except ModelLoadError as error:
        return error
    return None

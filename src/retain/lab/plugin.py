"""The lab as a plugin: what the name ``lab`` stands for, registered in
:mod:`retain.sources` (the ``retain.sources`` entry point in ``pyproject.toml`` imports
this module). The core never imports the lab; it asks the registry.

- the model family ``lab``: the default lab base model (built on first use, cached), the
  model directories that carry ``retain_lab.json``, their probe suite (``lab``), their
  rehearsal corpus (each world's pretraining documents less those that state a probed
  fact) and their tokenizer without building a model;
- the probe suite ``lab``, with the world's held-out sentences as its drift reference.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from retain.lab.base import METADATA_FILE, build_base, lab_size, load_cached
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import WorldSpec, build_world
from retain.sources import ModelFamily, SuiteSource, register_model, register_suite

NAME = "lab"


def default_model(progress: bool = True) -> Path:
    """Returns the default lab base model's directory, building it on first use."""
    return build_base(lab_size("default"), progress=progress).path


def _cached_model() -> Path | None:
    cached = load_cached(lab_size("default"))
    return cached.path if cached is not None else None


def _owns(path: Path) -> bool:
    return (path / METADATA_FILE).is_file()


def world_of(path: Path) -> WorldSpec:
    """Returns the world a lab model directory was built from (its ``retain_lab.json``)."""
    return WorldSpec(**json.loads((path / METADATA_FILE).read_text())["size"]["world"])


def rehearsal_texts(name_or_path: str) -> list[str]:
    """Returns the rehearsal corpus (no probed fact in it) of the default lab model's world
    or of a lab model directory's own world (the micro and default labs differ)."""
    world = lab_size("default").world if name_or_path == NAME else world_of(Path(name_or_path))
    return list(build_world(world).rehearsal)


def tokenizer() -> PreTrainedTokenizerBase:
    """Returns the lab tokenizer: the cached base model's, or trained afresh (seconds).

    Training is deterministic, so both give the same tokenizer; the audit never waits
    minutes for the base model to be built just to count tokens.
    """
    size = lab_size("default")
    cached = load_cached(size)
    if cached is not None:
        return AutoTokenizer.from_pretrained(cached.path)
    return train_tokenizer(build_world(size.world).documents, size.model.vocab_size, size.model.max_positions)


register_model(ModelFamily(name=NAME, build=default_model, find=_cached_model, owns=_owns, suites=(NAME,),
                           general_texts=rehearsal_texts, tokenizer=tokenizer))
register_suite(SuiteSource(name=NAME, load=lambda: build_world().probes,
                           reference=lambda: "\n".join(build_world().reference)))

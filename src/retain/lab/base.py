"""The lab base model: a tiny Llama pretrained by retain on the general world, cached.

``build_base`` trains the tokenizer and the model from scratch with the Hugging Face
``Trainer`` and saves an ordinary model directory (safetensors) that
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load. The
directory is cached under a key derived from every setting that changes the weights, so a
second call returns at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)

import retain
from retain import paths
from retain.errors import RetainError
from retain.evaluation.generation import score_probes_by_generation
from retain.hardware import resolve_precision
from retain.io import atomic_write_json
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import WORLD_VERSION, WorldSpec, build_world
from retain.progress import quiet_trainer

logger = logging.getLogger("retain.lab")

METADATA_FILE = "retain_lab.json"


@dataclass(frozen=True)
class ModelSpec:
    """Shape of the tiny Llama.

    The default (4 layers, width 128, 1.0M parameters) was chosen by measurement on a
    2-core CPU without native bf16: it trains about 2.5x more tokens per second than width
    256 and, in development trials, learned the world in about as many optimizer steps,
    so it reaches the probe targets in a fraction of the time. The vocabulary of 1,536
    leaves room for the domain's words after the general world's (1,024 did not: a
    domain row took 86 tokens instead of 79, " maybe" two); the larger output layer costs
    about 7% more per token.
    """

    vocab_size: int = 1536
    hidden_size: int = 128
    intermediate_size: int = 344
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 512


@dataclass(frozen=True)
class PretrainSpec:
    """How the base model is pretrained.

    Attributes:
        steps: Optimizer steps.
        batch_size: Packed blocks per step.
        block_size: Tokens per block.
        lr: Peak AdamW learning rate.
        warmup_steps: Linear warmup.
        min_lr_ratio: Cosine decay ends at ``lr * min_lr_ratio``.
        weight_decay: AdamW weight decay.
        precision: ``auto``, ``bf16`` or ``fp32``; ``auto`` is resolved on the building
            machine (:func:`retain.hardware.resolve_precision`) and recorded in the metadata.
            ``fp32`` by default: bf16 does not make the lab model train faster even on a
            CPU with native bf16 (``python benchmarks/run.py batch``), and with ``auto`` a
            CPU with native bf16 built a different base model under the same cache key.
    """

    steps: int = 1000
    batch_size: int = 16
    block_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    precision: str = "fp32"


@dataclass(frozen=True)
class LabSize:
    """A named preset: world, model and pretraining together."""

    name: str
    world: WorldSpec = field(default_factory=WorldSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)


SIZES: dict[str, LabSize] = {
    "default": LabSize(name="default"),
    # Builds in about ten seconds, for tests: a world with six facts per table and a
    # model that learns part of it (enough for forgetting to be visible). Its accuracy
    # is not a target.
    "micro": LabSize(
        name="micro",
        world=WorldSpec(
            add_min=10, add_max=14, held_out_sums=5, comparison_pairs=20,
            comparison_probes=6, counting_probes=4, n_fillers=30, n_reference=10, n_health=60,
            fact_limit=6, greeting_repeats=2, digit_sum_repeats=0,
        ),
        model=ModelSpec(vocab_size=512, hidden_size=64, intermediate_size=172, num_layers=2,
                        # Rotary positions cost no weights; 512 fits the domain task's rows,
                        # which this small vocabulary spells in up to ~200 tokens.
                        num_heads=2, max_positions=512),
        pretrain=PretrainSpec(steps=300, batch_size=16, block_size=64, lr=3e-3, warmup_steps=20,
                              precision="fp32"),
    ),
}


def lab_size(name: str, seed: int = 0) -> LabSize:
    """Returns the preset ``name`` with its world seeded by ``seed``.

    Raises:
        RetainError: If ``name`` is not a preset.
    """
    if name not in SIZES:
        raise RetainError(
            f"unknown lab size {name!r}", fix=f"use one of: {', '.join(SIZES)}", field="size"
        )
    preset = SIZES[name]
    world = WorldSpec(**{**preset.world.to_dict(), "seed": seed})
    return LabSize(name=preset.name, world=world, model=preset.model, pretrain=preset.pretrain)


def cache_key(size: LabSize) -> str:
    """Returns a short hash of everything that determines the base model's weights."""
    payload = json.dumps(
        {"world_version": WORLD_VERSION, "size": asdict(size)}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def base_model_dir(size: LabSize, cache_dir: Path | None = None) -> Path:
    """Returns where the base model for ``size`` lives (or will live) in the cache."""
    root = cache_dir if cache_dir is not None else paths.cache_dir()
    return root / "lab" / f"base-{size.name}-seed{size.world.seed}-{cache_key(size)}"


@dataclass(frozen=True)
class BaseModel:
    """A built lab base model.

    Attributes:
        path: The Hugging Face model directory (model, tokenizer, generation config).
        metadata: Contents of its ``retain_lab.json``: specs, build figures, probe accuracy.
        reused: True when it came from the cache.
    """

    path: Path
    metadata: dict[str, object]
    reused: bool


def load_cached(size: LabSize, cache_dir: Path | None = None) -> BaseModel | None:
    """Returns the cached base model for ``size``, or None if it was never built."""
    path = base_model_dir(size, cache_dir)
    meta_file = path / METADATA_FILE
    if not meta_file.is_file():
        return None
    return BaseModel(path=path, metadata=json.loads(meta_file.read_text()), reused=True)


def build_base(
    size: LabSize,
    cache_dir: Path | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> BaseModel:
    """Returns the lab base model for ``size``, building it unless it is cached.

    The model is written to a temporary sibling directory and renamed into place only
    when complete, so an interrupted build never leaves a cache entry that loads.

    Args:
        size: The preset (see :func:`lab_size`).
        cache_dir: Cache root; ``retain.paths.cache_dir()`` when None.
        force: Rebuild even when cached.
        progress: Show the training progress bar.

    Returns:
        The model directory with its metadata.
    """
    if not force and (cached := load_cached(size, cache_dir)) is not None:
        return cached
    target = base_model_dir(size, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        metadata = _build_into(size, staging, progress=progress)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return BaseModel(path=target, metadata=metadata, reused=False)


def _build_into(size: LabSize, out_dir: Path, *, progress: bool) -> dict[str, object]:
    """Trains tokenizer and model for ``size`` and saves both into ``out_dir``."""
    started = time.perf_counter()
    set_seed(size.world.seed)
    world = build_world(size.world)
    tokenizer = train_tokenizer(world.documents, size.model.vocab_size, size.model.max_positions)
    model = LlamaForCausalLM(_llama_config(size.model, tokenizer))
    encoded = encode_documents(world.documents, tokenizer)
    blocks = pack_blocks(encoded, size.pretrain, size.world.seed)
    train_seconds, losses = _pretrain(model, blocks, size, progress=progress)
    model.generation_config = GenerationConfig(
        max_new_tokens=64,
        do_sample=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    score = score_probes_by_generation(model, tokenizer, world.probes)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    tokens_trained = size.pretrain.steps * size.pretrain.batch_size * size.pretrain.block_size
    metadata: dict[str, object] = {
        "retain_version": retain.__version__,
        "world_version": WORLD_VERSION,
        "cache_key": cache_key(size),
        "size": asdict(size),
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "tokens_per_epoch": sum(len(ids) for ids in encoded),
        "tokens_trained": tokens_trained,
        "train_seconds": round(train_seconds, 2),
        "train_tokens_per_second": round(tokens_trained / train_seconds, 1),
        "build_seconds": round(time.perf_counter() - started, 2),
        "torch_threads": torch.get_num_threads(),
        "precision": resolve_precision(size.pretrain.precision),
        "loss_curve": losses,
        "probe_suite": {"name": score.suite, "version": score.version},
        "probe_accuracy": score.accuracy,
        "probe_counts": score.counts,
    }
    atomic_write_json(out_dir / METADATA_FILE, metadata)
    return metadata


def _llama_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def encode_documents(
    documents: Sequence[str], tokenizer: PreTrainedTokenizerBase
) -> list[list[int]]:
    """Returns each document as token ids ``<s> text </s>``: EOS ends every answer."""
    return [ids + [tokenizer.eos_token_id] for ids in tokenizer(list(documents))["input_ids"]]


def pack_blocks(encoded: Sequence[list[int]], spec: PretrainSpec, seed: int) -> list[list[int]]:
    """Returns enough fixed-length token blocks for ``spec.steps`` steps of training.

    Documents are concatenated in a fresh shuffled order for each pass over the corpus and
    cut into ``spec.block_size`` blocks, so block boundaries differ between passes.
    """
    needed = spec.steps * spec.batch_size
    rng = random.Random(f"{seed}:pack")
    blocks: list[list[int]] = []
    stream: list[int] = []
    while len(blocks) < needed:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for index in order:
            stream.extend(encoded[index])
        while len(stream) >= spec.block_size and len(blocks) < needed:
            blocks.append(stream[: spec.block_size])
            stream = stream[spec.block_size :]
    return blocks


class _Blocks(torch.utils.data.Dataset):
    """Packed blocks as a map-style dataset; labels equal inputs (the model shifts)."""

    def __init__(self, blocks: list[list[int]]) -> None:
        self.blocks = torch.tensor(blocks, dtype=torch.long)  # (n_blocks, block_size)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = self.blocks[index]
        return {"input_ids": block, "labels": block}


def _pretrain(
    model: LlamaForCausalLM,
    blocks: list[list[int]],
    size: LabSize,
    *,
    progress: bool,
) -> tuple[float, list[dict[str, float]]]:
    """Runs the pretraining steps; returns the seconds spent and the logged losses."""
    spec = size.pretrain
    scratch = tempfile.mkdtemp(prefix="retain-pretrain-")  # Trainer wants a folder; saves nothing
    args = TrainingArguments(
        output_dir=scratch,
        per_device_train_batch_size=spec.batch_size,
        max_steps=spec.steps,
        learning_rate=spec.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": spec.min_lr_ratio},
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        max_grad_norm=1.0,
        bf16=resolve_precision(spec.precision) == "bf16",
        logging_steps=max(1, spec.steps // 20),
        save_strategy="no",
        report_to="none",
        seed=size.world.seed,
        data_seed=size.world.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Blocks(blocks))
    quiet_trainer(trainer, f"pretraining lab base ({size.name})" if progress else None)
    started = time.perf_counter()
    try:
        trainer.train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - started
    losses = [
        {"step": entry["step"], "loss": entry["loss"]}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    return seconds, losses


"""`retain lab`: the embedded default, end to end on the tiny lab model.

At this stage the lab builds (or reuses) its base model, reloads it from disk as any
user's model would be loaded, and measures its general ability per category. Each run
leaves a run directory with the lab settings, the metrics and a summary.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from retain.evaluation.generation import score_probes_by_generation
from retain.evaluation.probes import ProbeScore
from retain.lab.base import BaseModel, LabSize, build_base
from retain.lab.world import build_world
from retain.rundir import RunDir

logger = logging.getLogger("retain.lab")


@dataclass(frozen=True)
class LabResult:
    """What one lab run found.

    Attributes:
        base: The base model used (built or reused).
        probes: Its probe accuracy by generation, measured after reloading it from disk.
        run_dir: Where the run's files are.
    """

    base: BaseModel
    probes: ProbeScore
    run_dir: Path


def load_model(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a saved model directory the way a user would, with no remote code."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
    return model, tokenizer


def run_lab(
    size: LabSize, run: RunDir, cache_dir: Path | None = None, *, progress: bool = True
) -> LabResult:
    """Runs the lab into ``run`` and returns what it found.

    Args:
        size: Lab preset (see :func:`retain.lab.base.lab_size`).
        run: A freshly created run directory.
        cache_dir: Where base models are cached; the default cache when None.
        progress: Show progress bars.

    Returns:
        The base model, its probe scores and the run directory.
    """
    with run:
        run.write_config(yaml.safe_dump({"lab": asdict(size)}, sort_keys=False))
        run.write_meta({"command": "lab", "size": size.name})
        base = build_base(size, cache_dir, progress=progress)
        logger.info("base model %s (%s)", base.path, "reused" if base.reused else "built")
        if not base.reused:
            for step_loss in _loss_records(base):
                run.append_metrics(step_loss)
        model, tokenizer = load_model(base.path)
        world = build_world(size.world)
        score = score_probes_by_generation(model, tokenizer, world.probes)
        run.append_metrics({"event": "probes", "suite": score.suite, "version": score.version,
                            "accuracy": score.accuracy})
        run.write_summary({
            "base_model": str(base.path),
            "base_reused": base.reused,
            "parameters": base.metadata.get("parameters"),
            "build_seconds": base.metadata.get("build_seconds"),
            "train_tokens_per_second": base.metadata.get("train_tokens_per_second"),
            "probe_suite": {"name": score.suite, "version": score.version},
            "probe_accuracy": score.accuracy,
        })
    return LabResult(base=base, probes=score, run_dir=run.path)


def _loss_records(base: BaseModel) -> list[dict[str, object]]:
    """Returns the pretraining loss curve stored with the base model as metric records."""
    curve = base.metadata.get("loss_curve") or []
    return [{"event": "pretrain_loss", **point} for point in curve]

"""`retain lab data`: the lab world as ordinary files a user (or a test) can inspect.

Writes the domain task splits as prompt/response JSONL, the lab probe suite as JSONL,
the general texts (``general.txt``: the rehearsal corpus, which states no probed fact;
``pretraining.txt``: everything the base model read), the drift reference text, and a
manifest with the specs and counts, so every file can be regenerated exactly.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from retain.evaluation.suites import write_suite
from retain.io import atomic_write_json, atomic_write_text
from retain.lab.base import lab_size
from retain.lab.domain import DOMAIN_VERSION, TRAIN_ROWS, DomainSpec, build_domain, write_jsonl
from retain.lab.world import WORLD_VERSION, build_world

# Every file export_lab_data writes into its folder.
LAB_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "ood.jsonl", "probes.jsonl", "general.txt",
             "pretraining.txt", "reference.txt", "config.yaml", "manifest.json")


def export_lab_data(
    out_dir: Path,
    *,
    size: str = "default",
    seed: int = 0,
    n_train: int = TRAIN_ROWS,
    duplicates: float = 0.0,
    conflicts: float = 0.0,
    contamination: float = 0.0,
    n_eval: int | None = None,
) -> dict[Path, int]:
    """Writes the lab data into ``out_dir`` and returns each data file with its row count.

    ``n_eval`` sets the rows of the validation, test and OOD splits (their defaults when None).

    Also writes ``config.yaml``, the default lab config on these files, and
    ``manifest.json``, which records how to regenerate them.

    Raises:
        RetainError: If ``size`` is not a lab preset.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    world = build_world(lab_size(size, seed).world)
    domain_spec = DomainSpec(
        seed=seed, n_train=n_train, duplicates=duplicates, conflicts=conflicts,
        contamination=contamination,
        **({"n_validation": n_eval, "n_test": n_eval, "n_ood": n_eval} if n_eval else {}),
    )
    task = build_domain(domain_spec)
    written: dict[Path, int] = {}
    for split, examples in task.splits().items():
        path = out_dir / f"{split}.jsonl"
        written[path] = write_jsonl(examples, path)
    probes_path = out_dir / "probes.jsonl"
    written[probes_path] = write_suite(world.probes, probes_path)
    for name, lines in (("general.txt", world.rehearsal), ("pretraining.txt", world.documents),
                        ("reference.txt", world.reference)):
        # One document per line; the corpus has multi-line Q/A documents, so escape newlines.
        text = "".join(line.replace("\n", "\\n") + "\n" for line in lines)
        atomic_write_text(out_dir / name, text)
        written[out_dir / name] = len(lines)
    atomic_write_text(out_dir / "config.yaml", lab_config_yaml(out_dir))
    atomic_write_json(out_dir / "manifest.json", {
        "world_version": WORLD_VERSION,
        "domain_version": DOMAIN_VERSION,
        "world_spec": world.spec.to_dict(),
        "domain_spec": asdict(domain_spec),
        "files": {path.name: count for path, count in written.items()},
    })
    return written


def lab_config_yaml(data_dir: Path) -> str:
    """Returns the default lab config: the lab model on the domain task in ``data_dir``."""
    data_dir = data_dir.resolve()
    return (
        "# The default lab config: retain's defaults on the lab domain task.\n"
        "# Try: retain doctor config.yaml, retain train config.yaml\n"
        "model:\n  name_or_path: lab\n"
        f"data:\n  train: {data_dir / 'train.jsonl'}\n  validation: {data_dir / 'validation.jsonl'}\n"
        f"  eval: {data_dir / 'test.jsonl'}\n"
        f"  ood: {data_dir / 'ood.jsonl'}\n"
        "train:\n"
        "  # The lab model is too small for bf16 to pay on a CPU (python benchmarks/run.py batch),\n"
        "  # and fp32 gives the same figures on CPUs with and without native bf16.\n"
        "  precision: fp32\n"
        "audit:\n"
        "  task: classification\n"
        "  # The size rule of thumb (5,000 rows) is for real models and data; the lab's tiny\n"
        f"  # model learns its toy task from {TRAIN_ROWS:,}. Keep the rule on for your own data.\n"
        "  allow_small_data: true\n"
    )

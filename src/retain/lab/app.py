"""``retain lab``: the lab's command line (its story, one step, the base model, its data,
the methods comparison), added to the ``retain`` command by :mod:`retain.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from retain.console import (
    STATE,
    console,
    errors,
    print_accuracy,
    table_of_markdown,
)
from retain.errors import ConfigError
from retain.lab.domain import TRAIN_ROWS

lab_app = typer.Typer(
    help="The embedded default: a tiny model and world, offline, on a CPU, in minutes.",
    invoke_without_command=True,
)

SizeOption = Annotated[str, typer.Option("--size", help="Lab preset: default or micro (tests).")]

SeedOption = Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the world and the model.")]

CacheOption = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="Model cache (default $RETAIN_CACHE_DIR or ~/.cache/retain)."),
]

LabNameOption = Annotated[Optional[str], typer.Option("--name", help="Lab run name (default lab-<time>).")]

OutputDirOption = Annotated[Path, typer.Option("--output-dir", help="Folder of run directories.")]

ModelOption = Annotated[Optional[str], typer.Option(
    "--model", help="Tell the story on this model instead of the lab's (a packaged name such as "
    "smollm2-135m-instruct, a directory or a GGUF file): the domain task in its chat template, the "
    "general suite calibrated to it, trainings sized for a CPU.")]

LabWorkersOption = Annotated[Optional[int], typer.Option("--workers", min=1, help="Trainings run at once, each in its own process (default: 2 on a CPU with 2+ cores, 1 with a GPU).")]


@lab_app.callback()
def lab(
    ctx: typer.Context,
    size: SizeOption = "default",
    seed: SeedOption = 0,
    cache_dir: CacheOption = None,
    output_dir: OutputDirOption = Path("runs"),
    name: LabNameOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted lab run --name: finished steps and trainings are kept.")] = False,
    workers: LabWorkersOption = None,
    model: ModelOption = None,
) -> None:
    """The whole story on the lab model (or --model): base, audit, baseline, trap, aggressive, recipe, report."""
    if ctx.invoked_subcommand is not None:
        return
    from retain.lab.story import STEPS
    from retain.rundir import RunDir, default_run_name

    if resume and not name:
        raise ConfigError("--resume needs the name of the lab run to continue", field="--name",
                          fix="pass --name NAME (the folder under --output-dir)")
    _run_lab_steps(lambda: RunDir.create(output_dir, name or default_run_name("lab"), overwrite=overwrite,
                                         resume=resume),
                   STEPS, size, seed, cache_dir, workers, resume=resume, model=model)


@lab_app.command("step")
def lab_step(
    step: Annotated[str, typer.Argument(help="Step number 1-7 or name: base, audit, baseline, trap, aggressive, recipe, report.")],
    name: Annotated[str, typer.Option("--name", help="The lab run to add the step to (created if missing).")] = "lab",
    output_dir: OutputDirOption = Path("runs"),
    size: SizeOption = "default",
    seed: SeedOption = 0,
    cache_dir: CacheOption = None,
    workers: LabWorkersOption = None,
    model: ModelOption = None,
) -> None:
    """Run one step of the lab's story in the lab run NAME (earlier steps are not rerun)."""
    from retain.lab.story import step_named
    from retain.rundir import RunDir

    chosen = step_named(step)
    _run_lab_steps(lambda: RunDir.create(output_dir, name, resume=(output_dir / name).is_dir()),
                   (chosen,), size, seed, cache_dir, workers, model=model)


def _run_lab_steps(open_run, steps, size: str, seed: int, cache_dir: Optional[Path], workers: Optional[int],
                   resume: bool = False, model: Optional[str] = None) -> None:
    """Checks the lab size and model, then opens the lab's run directory with ``open_run``
    (so a mistake leaves none behind), runs ``steps`` in it and prints each finding, then
    the table if it was made. Ctrl-C ends with the command that continues the run."""
    import yaml

    from retain.lab.runs import SCALES, STEPS, Lab, default_workers, real_scale
    from retain.lab.story import markdown_table, run_story

    if size not in SCALES:
        raise ConfigError(f"unknown lab size {size!r}", field="--size", fix=f"use one of: {', '.join(SCALES)}")
    if model is not None and size != "default":
        raise ConfigError("--size picks the lab model's preset, and --model replaces that model", field="--size",
                          fix="leave out --size with --model")
    scale = real_scale(model) if model is not None else SCALES[size]
    if model is not None:
        _real_model(model)
    run = open_run()
    # A real model keeps both cores busy in one process: its trainings run one at a time.
    lab = Lab(scale, seed, run.path, cache_dir, progress=not STATE["quiet"],
              echo=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
              workers=workers or (1 if model is not None else default_workers()), resume=resume)
    settings = {"size": size, "seed": seed, **({"model": model} if model is not None else {})}
    with run:
        if not run.config_path.is_file():
            run.write_config(yaml.safe_dump({"lab": settings}, sort_keys=False))
            run.write_meta({"command": "lab", **settings, "workers": lab.workers})
        elif resume:
            _check_lab_settings(run, settings)
        try:
            results = run_story(lab, steps)
        except KeyboardInterrupt:
            kept = [step for step in STEPS if lab.step_file(step).is_file()]
            errors.print(f"{len(kept)} of {len(STEPS)} steps finished and are kept in {run.path}"
                         f"{' (' + ', '.join(kept) + ')' if kept else ''}; continue with: retain lab "
                         f"--name {run.path.name} --output-dir {run.path.parent} --resume",
                         markup=False, highlight=False, soft_wrap=True)
            raise
        summary = run.read_summary() if run.summary_path.is_file() else {}
        summary.setdefault("steps", {}).update({result.step: result.to_dict() for result in results})
        run.write_summary(summary)
    for result in results:
        if result.step == "base":
            print_accuracy("general ability of the base model (greedy exact match)",
                            result.figures["accuracy"], result.figures["counts"])
        if result.step == "report":
            console.print(table_of_markdown(markdown_table(result.figures["rows"])))
    console.print(f"lab run directory: {run.path}", markup=False, highlight=False, soft_wrap=True)


def _real_model(model: str) -> Path:
    """Returns where ``model`` is; one that is not there stops here, before a run directory
    is made: a packaged name not fetched yet says which command fetches it, a missing local
    path says so."""
    from retain.models import resolve_model_path

    found = resolve_model_path(model, progress=not STATE["quiet"])
    if not found.exists() and (found.is_absolute() or model.startswith(".")):
        raise ConfigError(f"there is no model at {model}", field="--model",
                          fix="give a model directory, a GGUF file, a packaged name (retain model list) or a hub id")
    return found


def _check_lab_settings(run, settings: dict) -> None:
    """Resuming, the lab run's size, seed and model must be the ones it started with."""
    from retain import yamlfile

    try:
        document = yamlfile.load(run.config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yamlfile.YamlProblem) as problem:
        raise ConfigError(f"cannot read the lab run's settings: {problem}", file=run.config_path,
                          fix="start a new run with another --name (this one's config.yaml is damaged)") from None
    saved = (document.get("lab") if isinstance(document, dict) else None) or {}
    saved = saved if isinstance(saved, dict) else {}
    if {key: saved.get(key) for key in ("size", "seed", "model")} != {"model": None, **settings}:
        started = f"--size {saved.get('size')} --seed {saved.get('seed')}" + (
            f" --model {saved['model']}" if saved.get("model") else "")
        raise ConfigError(f"the lab run {run.path} started with {started}",
                          file=run.config_path, field="--size/--seed/--model",
                          fix=f"resume with {started}, or start a new run with another --name")


@lab_app.command("build-base")
def lab_build_base(
    size: SizeOption = "default",
    seed: SeedOption = 0,
    cache_dir: CacheOption = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if cached.")] = False,
) -> None:
    """Pretrain the lab's tiny Llama and tokenizer on the general world (cached)."""
    from retain.lab.base import build_base, lab_size

    preset = lab_size(size, seed)
    base = build_base(preset, cache_dir, force=force, progress=not STATE["quiet"])
    meta = base.metadata
    if base.reused:
        console.print(f"reused cached base model: {base.path}")
    else:
        console.print(
            f"built base model in {meta['build_seconds']:.0f} s "
            f"({meta['train_tokens_per_second']:,.0f} training tokens/s): {base.path}"
        )
    print_accuracy("probe accuracy at build time (greedy exact match)", meta["probe_accuracy"],
                    meta["probe_counts"])


@lab_app.command("data")
def lab_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the lab data into.")],
    seed: SeedOption = 0,
    n_train: Annotated[int, typer.Option("--n-train", min=0, help="Clean training items.")] = TRAIN_ROWS,
    duplicates: Annotated[float, typer.Option(min=0, max=1, help="Share of train rows duplicated.")] = 0.0,
    conflicts: Annotated[float, typer.Option(min=0, max=1, help="Share of train rows copied with another label.")] = 0.0,
    contamination: Annotated[float, typer.Option(min=0, max=1, help="Share of test rows leaked into train.")] = 0.0,
    size: SizeOption = "default",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace lab files already in the folder.")] = False,
) -> None:
    """Write the lab's domain task splits, probe suite and general corpus as files."""
    from retain.lab.export import LAB_FILES, export_lab_data

    there = [name for name in LAB_FILES if (out_dir / name).exists()]
    if there and not overwrite:
        raise ConfigError(f"the folder already holds lab files ({', '.join(there[:3])}"
                          f"{', ...' if len(there) > 3 else ''}), which may have been edited", file=str(out_dir),
                          fix="pass --overwrite to write them again, or give another folder")
    written = export_lab_data(
        out_dir, size=size, seed=seed, n_train=n_train,
        duplicates=duplicates, conflicts=conflicts, contamination=contamination,
    )
    for path, count in written.items():
        console.print(f"{count:>7,}  {path}")
    console.print(f"config: {out_dir / 'config.yaml'} (try: retain doctor {out_dir / 'config.yaml'})")


@lab_app.command("compare")
def lab_compare(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the lab data, the runs and compare.json.")],
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Runs per method.")] = 3,
    first_seed: Annotated[int, typer.Option("--first-seed", min=0, help="Seed of the first run (train.seed); the others follow.")] = 0,
    method: Annotated[Optional[list[str]], typer.Option("--method", help="Only this recipe (repeatable; by its table name).")] = None,
    data_size: Annotated[Optional[int], typer.Option("--data-size", min=1, help="Train on the first N rows (data.size).")] = None,
    n_train: Annotated[int, typer.Option("--n-train", min=1, help="Training rows the lab data is written with.")] = TRAIN_ROWS,
    quick: Annotated[bool, typer.Option("--quick", help="CI-sized: micro lab, 3 recipes, 1 seed, 20 steps.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Runs trained at once, each in its own process (2 suits a 2-core CPU; 1 on a GPU).")] = 1,
    size: SizeOption = "default",
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Compare on this model instead of the lab's (a packaged name such as smollm2-135m-instruct, "
        "a directory or a GGUF file): the lab task at `retain lab --model`'s scale, judged on the general suite "
        "calibrated to the model, and the methods at settings for a real model.")] = None,
) -> None:
    """Train each method on the lab task from one base, over seeds, and print the table."""
    from retain.lab.comparison import DEFAULT_RECIPES, QUICK_RECIPES, REAL_RECIPES, markdown_table, run_compare
    from retain.lab.runs import REAL

    if model is not None and (quick or size != "default"):
        raise ConfigError("--quick and --size pick the lab model's preset, and --model replaces that model",
                          field="--model", fix="leave out --quick and --size with --model")
    recipes = QUICK_RECIPES if quick else REAL_RECIPES if model is not None else DEFAULT_RECIPES
    if method:
        known = {recipe.name: recipe for recipe in recipes}
        unknown = [name for name in method if name not in known]
        if unknown:
            raise ConfigError(f"no recipe named {unknown[0]!r}", field="--method",
                              fix=f"use one of: {', '.join(known)}")
        recipes = tuple(known[name] for name in method)
    # A real model: its trainings at the real story's scale, judged on its calibrated probes.
    real = {"model": str(_real_model(model)), "n_eval": REAL.n_eval} if model is not None else {}
    extra = ("train.max_steps=20",) if quick else (*REAL.probes, *REAL.train) if model is not None else ()
    try:
        rows = run_compare(
            out_dir, recipes, seeds=1 if quick else seeds, first_seed=first_seed, size="micro" if quick else size,
            n_train=200 if quick else n_train, data_size=data_size, extra=extra, workers=workers,
            progress=not STATE["quiet"] and workers == 1, echo=console.print, **real,
        )
    except KeyboardInterrupt:
        finished = len(list((out_dir / "runs").glob("*/summary.json")))
        errors.print(f"{finished} finished runs are kept in {out_dir / 'runs'}; the same command continues "
                     "(a finished run is read back, not trained again)", markup=False, highlight=False,
                     soft_wrap=True)
        raise
    console.print(table_of_markdown(markdown_table(rows)))
    console.print(f"table data: {out_dir / 'compare.json'}")

"""The ``retain`` command line: parse, call the library, print. No logic lives here.

User mistakes (:class:`~retain.errors.RetainError`) become one line on stderr and exit
code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import retain
from retain.errors import ConfigError, RetainError
from retain.lab.domain import TRAIN_ROWS

app = typer.Typer(
    name="retain",
    help="Fine-tune LLMs without silently forgetting.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
lab_app = typer.Typer(
    help="The embedded default: a tiny model and world, offline, on a CPU, in minutes.",
    invoke_without_command=True,
)
app.add_typer(config_app, name="config")
app.add_typer(lab_app, name="lab")

# click's exceptions, as typer raises them (its vendored click from typer 0.2x, click before).
_click_errors = sys.modules[typer.BadParameter.__module__]
# Abort is not among them in the vendored click: typer keeps it in typer.exceptions.
_Abort = getattr(_click_errors, "Abort", None) or sys.modules["typer.exceptions"].Abort
INTERRUPTED = 130  # the exit code of Ctrl-C (typer turns KeyboardInterrupt into it)

console = Console()
errors = Console(stderr=True)

# Global options of this invocation, set by the root callback before any command runs.
_STATE: dict[str, bool] = {"quiet": False}


def _setup_logging() -> None:
    """Warnings go to stderr; the run directory's log.txt gets everything from INFO up."""
    from transformers.utils import logging as hf_logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
    hf_logging.disable_progress_bar()  # retain shows its own bars


def _version(value: bool) -> None:
    if value:
        console.print(f"retain {retain.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Fine-tune LLMs without silently forgetting."""
    _setup_logging()
    _STATE["quiet"] = quiet


def _output_file(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """Refuses an output file that cannot be written, before the command does any work."""
    if value is None:
        return value
    option = param.opts[0] if param.opts else param.name
    if value.is_dir():
        raise ConfigError(f"{value} is a folder", file=option, fix="give the path of a file to write")
    if not value.parent.is_dir():
        raise ConfigError(f"no folder {value.parent} to write {value.name} into", file=option,
                          fix="create the folder first, or give a path in an existing folder")
    return value


def _usage_error(error: Exception) -> RetainError:
    """Returns click's complaint about the command line as one line naming the option."""
    context = getattr(error, "ctx", None)
    command = context.command_path if context is not None else "retain"
    param = getattr(error, "param", None)
    option = (param.opts[0] if param.opts else param.name) if param is not None else None
    # A bad value's message follows its option; other usage errors say what is wrong whole.
    plain = isinstance(error, _click_errors.BadParameter) and type(error) is _click_errors.BadParameter
    message = error.message if plain and option else error.format_message()
    return ConfigError(message[:1].lower() + message[1:].rstrip("."), file=option, fix=f"see '{command} --help'")


SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a setting: section.key=value (repeatable)."),
]


# --- config ---------------------------------------------------------------------------


@config_app.command("show")
def config_show(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config; defaults if omitted.")] = None,
    set_: SetOption = None,
) -> None:
    """Validate a config, apply overrides and print the fully resolved YAML."""
    from retain.config import dump_config, load_config

    console.print(dump_config(load_config(config, set_ or [])), end="", markup=False, highlight=False, soft_wrap=True)


@config_app.command("reference")
def config_reference(
    write: Annotated[Optional[Path], typer.Option("--write", callback=_output_file, help="Write the reference document (docs/CONFIG.md) to this file instead of printing the tables.")] = None,
) -> None:
    """Print every setting with its type, default and meaning, as Markdown."""
    from retain.config import config_reference_markdown
    from retain.config.reference import config_reference_document
    from retain.io import atomic_write_text

    if write is not None:
        atomic_write_text(write, config_reference_document())
        console.print(f"wrote {write}")
        return
    console.print(config_reference_markdown(), end="", markup=False, highlight=False, soft_wrap=True)


# --- audit ----------------------------------------------------------------------------


@app.command("audit")
def audit(
    data: Annotated[str, typer.Argument(help="Training data: JSONL, CSV, Parquet or a datasets directory.")],
    eval_data: Annotated[Optional[str], typer.Option("--eval", help="Evaluation data, checked for overlap with training.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (data fields, max_length, model tokenizer, probes).")] = None,
    set_: SetOption = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Task kind for the size rule: classification, qa, generation, chat (default audit.task, qa).")] = None,
    domain: Annotated[Optional[str], typer.Option("--domain", help="Domain for the size rule: general, medical, legal, finance, code (default audit.domain, general).")] = None,
    allow_small_data: Annotated[bool, typer.Option("--allow-small-data", help="Too little data is a warning, not a blocker (also audit.allow_small_data).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when there are warnings.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_output_file, help="Write the machine-readable report.")] = None,
) -> None:
    """Audit training data before training: exit 0 go, 1 warnings (--strict), 2 blockers."""
    from retain.audit.runner import run_audit
    from retain.config import load_config
    from retain.evaluation.commands import default_suites
    from retain.evaluation.suites import load_suite
    from retain.io import atomic_write_json

    resolved = load_config(config, set_ or [])
    suites = [load_suite(name) for name in (resolved.probes.suites or default_suites(resolved.model.name_or_path))]
    try:
        report = run_audit(resolved, data, eval_data=eval_data, task=task, domain=domain,
                           allow_small=allow_small_data, probes=suites)
    except ValueError as error:
        raise ConfigError(str(error), fix="see retain audit --help for the valid names") from None
    code = _print_findings(f"audit of {data}: {report.rows:,} rows", report, strict)
    if json_out is not None:
        atomic_write_json(json_out, report.to_dict())
        console.print(f"wrote {json_out}")
    raise typer.Exit(code)


@app.command("doctor")
def doctor(
    config: Annotated[Path, typer.Argument(help="YAML config naming the model and data.train.")],
    set_: SetOption = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when there are warnings.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_output_file, help="Write the machine-readable report.")] = None,
) -> None:
    """Check the training pipeline on real batches: labels, EOS, masking, template, generation."""
    from retain.audit.doctor import run_doctor
    from retain.config import load_config
    from retain.io import atomic_write_json

    report = run_doctor(load_config(config, set_ or []))
    if report.sample:
        trained = "".join(text for text, loss in report.sample if loss)
        console.print("first row as the loss sees it (bold: trained on):")
        console.print("  " + "".join(f"[{'bold' if loss else 'dim'}]{escape(text)}[/]"
                                     for text, loss in report.sample), soft_wrap=True)
        console.print(f"  trained on: {trained!r}", markup=False, highlight=False, soft_wrap=True)
    code = _print_findings(f"doctor: {report.model} on {report.data}, {report.rows:,} rows", report, strict)
    if json_out is not None:
        atomic_write_json(json_out, report.to_dict())
        console.print(f"wrote {json_out}")
    raise typer.Exit(code)


def _print_findings(title: str, report, strict: bool) -> int:
    """Prints a report's findings as a table with examples and returns its exit code."""
    table = Table(title=title)
    for column in ("severity", "finding", "count", "fix"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for finding in report.findings:
        style = {"blocker": "bold red", "warning": "yellow"}.get(finding.severity)
        table.add_row(finding.severity, finding.title, f"{finding.count:,}", finding.fix, style=style)
    console.print(table)
    for finding in report.findings:
        for example in finding.examples[:3]:
            console.print(f"  {finding.code} line {example.get('line')}: {str(example.get('text', ''))[:100]!r}",
                          markup=False, highlight=False)
    counts = ", ".join(f"{report.count(s)} {s}s" for s in ("blocker", "warning", "info"))
    code = report.exit_code(strict)
    console.print(f"{counts}: {('go', 'warnings (--strict)', 'stop: fix the blockers first')[code]}")
    return code


# --- train ----------------------------------------------------------------------------


@app.command("train")
def train(
    config: Annotated[Path, typer.Argument(help="YAML config naming the model and data.train.")],
    set_: SetOption = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Run name (default output.name, else train-<UTC time>).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory of this name.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the named run from its last complete checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Train even when the audit or the doctor finds blockers.")] = False,
    merge: Annotated[bool, typer.Option("--merge", help="Also save the model with LoRA adapters merged in (merged/).")] = False,
) -> None:
    """Fine-tune with guards: audit, doctor, baseline, training, final evaluation, verdict."""
    from retain.config import load_config
    from retain.summary import rehearsal_note
    from retain.training.run import run_train

    overrides = list(set_ or []) + ([f"output.name={name}"] if name else [])
    outcome = run_train(load_config(config, overrides), overwrite=overwrite, resume=resume, force=force,
                        merge=merge, progress=not _STATE["quiet"],
                        echo=lambda line: console.print(line, markup=False, highlight=False))
    summary = outcome.summary
    if not summary:  # another process of `accelerate launch`: the main one reports
        return
    console.print(f"run directory: {outcome.run_dir}")
    table = Table(title=f"retain train: {summary['status']}")
    for column in ("measure", "base", "final"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row("general probes", _percent(summary["base_probe_accuracy"]), _percent(summary["final_probe_accuracy"]))
    for split, score in summary["task"].items():
        table.add_row(f"task ({split})", "", _percent(score["accuracy"]))
    console.print(table)
    if summary["forgetting_relative"] is not None:
        console.print(f"forgetting, relative: {summary['forgetting_relative']:+.1%}{rehearsal_note(summary)}",
                      markup=False)
    verdict = summary["verdict"]
    console.print("verdict: safe to ship" if verdict["ship"] else "verdict: not safe to ship: " + "; ".join(verdict["reasons"]),
                  markup=False, highlight=False)


# --- eval and baseline ----------------------------------------------------------------

ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config (model, data, probes, eval settings).")
]


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="`lab`, a model or adapter directory, a run directory, or a hub id.")],
    suite: Annotated[Optional[list[str]], typer.Option("--suite", help="Probe suite: lab, general, lmeval:TASK or a file (repeatable; default probes.suites, else lab for lab models, general otherwise).")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Held-out task examples (default data.eval).")] = None,
    ood: Annotated[Optional[str], typer.Option("--ood", help="Out-of-distribution task examples (default data.ood).")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Base model to measure forgetting against (adapters: default is adapters off).")] = None,
    compare_to: Annotated[Optional[Path], typer.Option("--compare-to", help="A previous `retain eval --json` result to compare against.")] = None,
    reference: Annotated[Optional[str], typer.Option("--reference", help="Reference text file for drift (default eval.reference).")] = None,
    no_drift: Annotated[bool, typer.Option("--no-drift", help="Skip KL and perplexity.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_output_file, help="Write the full result, per item, as JSON.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Measure a model: probe accuracy per category, task accuracy, drift, generation health."""
    from retain.config import load_config
    from retain.evaluation.commands import run_eval
    from retain.io import atomic_write_json

    resolved = load_config(config, set_ or [])
    outcome = run_eval(
        resolved, model, suites=suite, task=task, ood=ood, reference=reference, drift=not no_drift,
        base=base, compare_to=compare_to, progress=not _STATE["quiet"],
    )
    _print_eval(outcome)
    if json_out is not None:
        atomic_write_json(json_out, outcome.to_dict())
        console.print(f"wrote {json_out}")


@app.command("baseline")
def baseline(
    config: Annotated[Path, typer.Argument(help="YAML config naming model, data.train and data.eval.")],
    set_: SetOption = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=_output_file, help="Write the result as JSON.")] = None,
) -> None:
    """Zero- and few-shot accuracy of the base model: is fine-tuning needed at all?"""
    from retain.config import load_config
    from retain.evaluation.commands import run_baseline_command
    from retain.io import atomic_write_json

    result = run_baseline_command(load_config(config, set_ or []), progress=not _STATE["quiet"])
    table = Table(title="base model on the task")
    for column in ("prompt", "n", "accuracy", "by log-likelihood", "no answer", "health failures"):
        table.add_column(column, justify="left" if column == "prompt" else "right")
    for score in result.scores.values():
        table.add_row(score.name, str(score.n), f"{score.accuracy:.1%}", _percent(score.loglik_accuracy),
                      _percent(score.unparsed), _percent(score.health.failures if score.health else None))
    console.print(table)
    console.print(result.verdict())
    if json_out is not None:
        atomic_write_json(json_out, result.to_dict())
        console.print(f"wrote {json_out}")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print_eval(outcome) -> None:
    result = outcome.result
    for suite, methods in result.probes.items():
        table = Table(title=f"probes: {suite} (version {next(iter(methods.values())).version})")
        table.add_column("category")
        table.add_column("items", justify="right")
        for method in methods:
            table.add_column(method, justify="right")
        reports = outcome.forgetting.get(suite, {})
        if reports:
            table.add_column("forgetting (generation)" if "generation" in reports else "forgetting", justify="right")
        first = next(iter(methods.values()))
        rows = [*first.counts, "overall"]
        for category in rows:
            count = sum(first.counts.values()) if category == "overall" else first.counts[category]
            cells = [_percent(score.accuracy.get(category)) for score in methods.values()]
            if reports:
                report = reports.get("generation") or next(iter(reports.values()))
                figure = report.categories.get(category)
                cells.append(
                    "-" if figure is None else
                    f"{figure.absolute_drop:+.1%} [{figure.absolute_drop_ci[0]:+.1%}, {figure.absolute_drop_ci[1]:+.1%}]"
                )
            table.add_row(category, str(count), *cells, style="bold" if category == "overall" else None)
        console.print(table)
    if outcome.base_source:
        console.print(f"forgetting = accuracy of the base ({outcome.base_source}) minus this model's; "
                      "positive means forgotten, 95% bootstrap interval in brackets")
    if result.task:
        table = Table(title="task")
        for column in ("split", "n", "accuracy", "by log-likelihood", "exact match", "no answer", "predicted", "health failures"):
            table.add_column(column, justify="left" if column in ("split", "predicted") else "right")
        for score in result.task.values():
            predicted = ", ".join(f"{label} {share:.0%}" for label, share in score.predicted.items())
            table.add_row(score.name, str(score.n), f"{score.accuracy:.1%}", _percent(score.loglik_accuracy),
                          f"{score.exact_match:.1%}", _percent(score.unparsed), predicted or "-",
                          _percent(score.health.failures if score.health else None))
        console.print(table)
    if result.brittleness:
        table = Table(title="brittleness: the eval set perturbed")
        for column in ("perturbation", "n", "accuracy before", "after", "answers changed"):
            table.add_column(column, justify="left" if column == "perturbation" else "right")
        for entry in result.brittleness:
            table.add_row(entry.name, str(entry.n), f"{entry.accuracy_original:.1%}",
                          f"{entry.accuracy_perturbed:.1%}", f"{entry.flipped:.1%}")
        console.print(table)
    if result.drift:
        kl = "-" if result.drift.kl is None else f"{result.drift.kl:.4f} nats/token (top-{result.drift.k} + rest)"
        console.print(f"drift on the reference text ({result.drift.tokens:,} tokens): perplexity "
                      f"{result.drift.perplexity:.2f}, KL(base || model) {kl}")
    if result.smoke:
        smoke = result.smoke
        console.print(f"smoke test ({smoke.n} prompts): {smoke.failures:.0%} broken "
                      f"(empty {smoke.empty:.0%}, whitespace {smoke.whitespace_only:.0%}, echo {smoke.echo:.0%}, "
                      f"loop {smoke.loop:.0%}), no EOS {smoke.no_eos:.0%}, mean {smoke.mean_new_tokens:.1f} new tokens")
    console.print(f"evaluated in {result.seconds:.1f} s")


# --- lab ------------------------------------------------------------------------------

SizeOption = Annotated[str, typer.Option("--size", help="Lab preset: default or micro (tests).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the world and the model.")]
CacheOption = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="Model cache (default $RETAIN_CACHE_DIR or ~/.cache/retain)."),
]


LabNameOption = Annotated[Optional[str], typer.Option("--name", help="Lab run name (default lab-<time>).")]
OutputDirOption = Annotated[Path, typer.Option("--output-dir", help="Folder of run directories.")]
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
) -> None:
    """The whole story on the lab model: base, audit, baseline, trap, aggressive, recipe, report."""
    if ctx.invoked_subcommand is not None:
        return
    from retain.lab.story import STEPS
    from retain.rundir import RunDir, default_run_name

    if resume and not name:
        raise ConfigError("--resume needs the name of the lab run to continue", field="--name",
                          fix="pass --name NAME (the folder under --output-dir)")
    _run_lab_steps(lambda: RunDir.create(output_dir, name or default_run_name("lab"), overwrite=overwrite,
                                         resume=resume),
                   STEPS, size, seed, cache_dir, workers, resume=resume)


@lab_app.command("step")
def lab_step(
    step: Annotated[str, typer.Argument(help="Step number 1-7 or name: base, audit, baseline, trap, aggressive, recipe, report.")],
    name: Annotated[str, typer.Option("--name", help="The lab run to add the step to (created if missing).")] = "lab",
    output_dir: OutputDirOption = Path("runs"),
    size: SizeOption = "default",
    seed: SeedOption = 0,
    cache_dir: CacheOption = None,
    workers: LabWorkersOption = None,
) -> None:
    """Run one step of the lab's story in the lab run NAME (earlier steps are not rerun)."""
    from retain.lab.story import step_named
    from retain.rundir import RunDir

    chosen = step_named(step)
    _run_lab_steps(lambda: RunDir.create(output_dir, name, resume=(output_dir / name).is_dir()),
                   (chosen,), size, seed, cache_dir, workers)


def _run_lab_steps(open_run, steps, size: str, seed: int, cache_dir: Optional[Path], workers: Optional[int],
                   resume: bool = False) -> None:
    """Checks the lab size, then opens the lab's run directory with ``open_run`` (so a
    mistake leaves none behind), runs ``steps`` in it and prints each finding, then the
    table if it was made. Ctrl-C ends with the command that continues the run."""
    import yaml

    from retain.lab.story import SCALES, STEPS, Lab, default_workers, markdown_table, run_story

    if size not in SCALES:
        raise ConfigError(f"unknown lab size {size!r}", field="--size", fix=f"use one of: {', '.join(SCALES)}")
    run = open_run()
    lab = Lab(SCALES[size], seed, run.path, cache_dir, progress=not _STATE["quiet"],
              echo=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
              workers=workers or default_workers(), resume=resume)
    with run:
        if not run.config_path.is_file():
            run.write_config(yaml.safe_dump({"lab": {"size": size, "seed": seed}}, sort_keys=False))
            run.write_meta({"command": "lab", "size": size, "seed": seed, "workers": lab.workers})
        elif resume:
            _check_lab_settings(run, size, seed)
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
            _print_accuracy("general ability of the base model (greedy exact match)",
                            result.figures["accuracy"], result.figures["counts"])
        if result.step == "report":
            console.print(markdown_table(result.figures["rows"]), markup=False)
    console.print(f"lab run directory: {run.path}", markup=False, highlight=False, soft_wrap=True)


def _check_lab_settings(run, size: str, seed: int) -> None:
    """Resuming, the lab run's size and seed must be the ones it started with."""
    import yaml

    saved = (yaml.safe_load(run.config_path.read_text()) or {}).get("lab") or {}
    if (saved.get("size"), saved.get("seed")) != (size, seed):
        raise ConfigError(f"the lab run {run.path} started with --size {saved.get('size')} --seed {saved.get('seed')}",
                          file=run.config_path, field="--size/--seed",
                          fix=f"resume with --size {saved.get('size')} --seed {saved.get('seed')}, or start a new "
                          "run with another --name")


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
    base = build_base(preset, cache_dir, force=force, progress=not _STATE["quiet"])
    meta = base.metadata
    if base.reused:
        console.print(f"reused cached base model: {base.path}")
    else:
        console.print(
            f"built base model in {meta['build_seconds']:.0f} s "
            f"({meta['train_tokens_per_second']:,.0f} training tokens/s): {base.path}"
        )
    _print_accuracy("probe accuracy at build time (greedy exact match)", meta["probe_accuracy"],
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
) -> None:
    """Write the lab's domain task splits, probe suite and general corpus as files."""
    from retain.lab.export import export_lab_data

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
) -> None:
    """Train each method on the lab task from one base, over seeds, and print the table."""
    from retain.lab.comparison import DEFAULT_RECIPES, QUICK_RECIPES, markdown_table, run_compare

    recipes = QUICK_RECIPES if quick else DEFAULT_RECIPES
    if method:
        known = {recipe.name: recipe for recipe in recipes}
        unknown = [name for name in method if name not in known]
        if unknown:
            raise ConfigError(f"no recipe named {unknown[0]!r}", field="--method",
                              fix=f"use one of: {', '.join(known)}")
        recipes = tuple(known[name] for name in method)
    try:
        rows = run_compare(
            out_dir, recipes, seeds=1 if quick else seeds, first_seed=first_seed, size="micro" if quick else size,
            n_train=200 if quick else n_train, data_size=data_size,
            extra=("train.max_steps=20",) if quick else (), workers=workers,
            progress=not _STATE["quiet"] and workers == 1, echo=console.print,
        )
    except KeyboardInterrupt:
        finished = len(list((out_dir / "runs").glob("*/summary.json")))
        errors.print(f"{finished} finished runs are kept in {out_dir / 'runs'}; the same command continues "
                     "(a finished run is read back, not trained again)", markup=False, highlight=False,
                     soft_wrap=True)
        raise
    console.print(markdown_table(rows), markup=False)
    console.print(f"table data: {out_dir / 'compare.json'}")


# --- report ---------------------------------------------------------------------------


@app.command("report")
def report(
    paths: Annotated[list[Path], typer.Argument(help="Run directories, sweep directories, `retain lab compare` folders or `retain eval --json` files.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The HTML file (default: report.html inside a single run or sweep directory, else ./retain-report.html); the Markdown summary goes beside it.")] = None,
) -> None:
    """One self-contained HTML report (plots, findings, answers) and a Markdown summary."""
    from retain.report import build_report

    files = build_report(paths, out)
    console.print(f"report: {files.html}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"summary: {files.markdown}", markup=False, highlight=False, soft_wrap=True)


# --- sweep ----------------------------------------------------------------------------


@app.command("sweep")
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML: base config, search space, mode, budget (docs/SWEEP.md).")],
    set_: SetOption = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Sweep name (default: the file's name); the same name resumes.")] = None,
    worker: Annotated[bool, typer.Option("--worker", help="Join the study as one more worker: run trials, then stop without waiting or summarising.")] = False,
    trials: Annotated[Optional[int], typer.Option("--trials", help="Trial budget (replaces the file's trials).")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Optuna storage URL, e.g. postgresql+psycopg2://user:pw@host/db (default: SQLite in the sweep directory).")] = None,
) -> None:
    """Search configs (grid or Optuna): Pareto table of task accuracy vs forgetting, recommended config."""
    from retain.sweep import load_sweep, run_sweep
    from retain.sweep.results import redact_url

    spec = load_sweep(sweep_file, overrides=set_ or [], name=name, trials=trials, storage=storage)
    console.print(f"sweep {spec.name}: {spec.directory} (storage {redact_url(spec.storage)})", markup=False)
    outcome = run_sweep(spec, worker=worker, echo=lambda line: console.print(line, markup=False, highlight=False))
    results = outcome.results
    if results is None:
        console.print(f"worker done: {outcome.ran} trial(s) run here; summarise with: retain sweep {sweep_file}"
                      + (f" --storage {storage}" if storage else ""), markup=False)
        return
    table = Table(title=f"Pareto-optimal trials ({len(results.records)} trials in all)")
    keys = [axis.key for axis in spec.axes]
    for column in ("trial", *keys, f"task ({spec.task_split})", "forgetting", "general"):
        table.add_column(column, justify="right")
    for record in results.pareto:
        table.add_row(str(record.number), *(str(record.params.get(key, "")) for key in keys),
                      _percent(record.task_accuracy), f"{record.forgetting:+.1%}", _percent(record.general_accuracy))
    console.print(table)
    best = results.recommended
    if best is not None:
        console.print(f"recommended: trial {best.number} (task {_percent(best.task_accuracy)}, forgetting "
                      f"{best.forgetting:+.1%}): {results.files['recommended']}", markup=False)
    else:
        console.print(f"no trial stayed within the forgetting limit of {spec.forgetting_limit:.1%}: no recommended "
                      "config (see pareto.md)", markup=False)
    console.print(f"tables: {results.files['markdown']}, {results.files['csv']}, {results.files['json']}",
                  markup=False)


def _print_accuracy(title: str, accuracy: dict[str, float], counts: dict[str, int]) -> None:
    console.print(title)
    table = Table()
    table.add_column("category")
    table.add_column("items", justify="right")
    table.add_column("accuracy", justify="right")
    for name, value in accuracy.items():
        if name != "overall":
            table.add_row(name, str(counts.get(name, "")), f"{value:.1%}")
    table.add_row("overall", str(sum(counts.values())), f"{accuracy['overall']:.1%}", style="bold")
    console.print(table)


def main() -> None:
    """Entry point of the ``retain`` script.

    A user mistake, in the files or on the command line, is one ``error:`` line on stderr
    and exit code 2 (``retain`` alone still prints the help).
    """
    try:
        code = app(prog_name="retain", standalone_mode=False)
    except RetainError as error:
        if "--debug" in sys.argv:
            raise
        _fail(error)
    except getattr(_click_errors, "NoArgsIsHelpError", ()) as error:
        error.show()
        sys.exit(error.exit_code)
    except _click_errors.UsageError as error:
        _fail(_usage_error(error))
    except _click_errors.ClickException as error:  # e.g. a file click was asked to open
        errors.print(f"error: {error.format_message()}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except _Abort:
        errors.print("Aborted!", markup=False, highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:  # outside a command (typer turns one inside into the exit code)
        code = INTERRUPTED
    if code == INTERRUPTED:
        errors.print("interrupted (Ctrl-C)", markup=False, highlight=False)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(error: RetainError) -> None:
    errors.print(f"error: {error.render()}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(2)


if __name__ == "__main__":
    main()

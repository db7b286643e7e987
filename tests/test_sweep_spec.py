"""The sweep file: every mistake is one ConfigError naming the file, line, field and a fix,
found before any training; and the pure parts of the results (recommendation, grid order)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from retain.config import load_config
from retain.errors import ConfigError
from retain.sweep import load_sweep
from retain.sweep.results import TrialRecord, data_size_curve, recommend


@pytest.fixture
def base(tmp_path: Path) -> Path:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(f'{{"prompt": "q{i}", "response": "a{i}"}}\n' for i in range(10)))
    (tmp_path / "config.yaml").write_text(
        f"data:\n  train: {train}\n  eval: {train}\noutput:\n  dir: {tmp_path / 'runs'}\n")
    return tmp_path / "config.yaml"


def write(base: Path, text: str) -> Path:
    path = base.parent / "sweep.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_sweep(path, **kwargs)
    return caught.value


def test_a_valid_sweep_resolves_its_base_space_and_defaults(base) -> None:
    path = write(base, "base: config.yaml\nspace:\n  train.lr: [1.0e-4, 1e-3]\n"
                       "  method: [[lora], [lora, replay]]\n  data.size: {choices: [5, 10]}\n")
    sweep = load_sweep(path)
    assert sweep.name == "sweep" and sweep.mode == "grid" and sweep.budget is None
    assert sweep.directory == base.parent / "runs" / "sweep-sweep"
    assert sweep.storage == f"sqlite:///{(sweep.directory / 'study.db').resolve()}"
    assert sweep.forgetting_limit == 0.03  # the base's guards.forgetting.threshold
    assert len(sweep.grid()) == 8
    # Lists are Optuna choices as inline YAML and come back as lists in the trial's config.
    point = {"train.lr": 1e-3, "method": "[lora, replay]", "data.size": 5}
    values = {axis.key: axis.decode(point[axis.key]) for axis in sweep.axes}
    config = sweep.trial_config(values, "trial-0003")
    assert config.method.use == ["lora", "replay"] and config.train.lr == 1e-3 and config.data.size == 5
    assert Path(config.output.dir) == sweep.trials_dir and config.output.name == "trial-0003"


def test_a_cut_grid_is_a_seeded_shuffle_whose_larger_budgets_extend_smaller_ones(base) -> None:
    path = write(base, "base: config.yaml\nspace:\n  train.lr: [1.0e-5, 1.0e-4, 1.0e-3]\n  train.seed: [0, 1, 2]\n")
    full = load_sweep(path).grid()
    three, five = load_sweep(path, trials=3).grid(), load_sweep(path, trials=5).grid()
    assert len(full) == 9 and five[:3] == three and all(point in full for point in five)
    assert three != full[:3]  # not just the first learning rate


@pytest.mark.parametrize(("text", "line", "field", "words", "fix"), [
    ("base: config.yaml\nspace:\n  train.lr: [1.0e-4]\ntrails: 3\n", 4, "trails", "unknown key 'trails'",
     "did you mean 'trials'"),
    ("base: config.yaml\ntrials: many\nspace:\n  train.lr: [1.0e-4]\n", 2, "trials", "valid integer", "SWEEP.md"),
    ("base: config.yaml\ntrials: 0\nspace:\n  train.lr: [1.0e-4]\n", 2, "trials", "greater than or equal to 1",
     "SWEEP.md"),
    ("base: config.yaml\nspace: {}\n", 2, "space", "search space is empty", "name at least one setting"),
    ("base: config.yaml\nspace:\n  train.lrr: [1.0e-4]\n", 3, "space.train.lrr", "not a config setting",
     "did you mean 'train.lr'"),
    ("base: config.yaml\nspace:\n  train.lr:\n    - 1.0e-4\n    - -1\n", 5, "space.train.lr",
     "value -1 is refused: must be greater than 0", "set it to a value greater than 0"),
    ("base: config.yaml\nspace:\n  method: [[lora], [lora, full]]\n", 3, "space.method", "exclude each other",
     "name one of full"),
    ("base: config.yaml\nspace:\n  train.lr: 1.0e-4\n", 3, "space.train.lr", "expected a list of values or a range",
     "write [a, b, c]"),
    ("base: config.yaml\nspace:\n  train.lr: {low: 1.0e-5, high: 1.0e-3}\n", 3, "space.train.lr",
     "grid mode needs values", "add step"),
    ("base: config.yaml\nmode: optuna\ntrials: 4\nspace:\n  train.lr: {low: 1.0e-3, high: 1.0e-5}\n", 5,
     "space.train.lr", "must be below high", "swap them"),
    ("base: config.yaml\nmode: optuna\nspace:\n  train.lr: {low: 1.0e-5, high: 1.0e-3}\n", 2, "trials",
     "needs a trial budget", "trials: N"),
    ("base: config.yaml\nspace:\n  output.name: [a, b]\n", 3, "space.output.name", "set by the sweep", "remove it"),
    ("base: config.yaml\nspace:\n  data.size: [5, 50]\n", 3, "space.data.size", "exceeds the 10 rows",
     "subsets are nested"),
    ("base: config.yaml\nstorage: not a url\nspace:\n  train.lr: [1.0e-4]\n", 2, "storage", "not a database URL",
     "postgresql+psycopg2"),
    ("base: config.yaml\nstorage: nosuchdb://host/db\nspace:\n  train.lr: [1.0e-4]\n", 2, "storage",
     "no database driver", "postgresql+psycopg2"),
    ("base: config.yaml\nobjectives: {task: ood}\nspace:\n  train.lr: [1.0e-4]\n", 2, "objectives.task",
     "sets no data.ood", "set data.ood"),
    ("base: config.yaml\nset: [train.lr=1e-4, train.epoch=2]\nspace:\n  train.seed: [0]\n", 2, "set.1",
     "unknown setting 'train.epoch'", "did you mean 'train.epochs'"),
    ("base: missing.yaml\nspace:\n  train.lr: [1.0e-4]\n", 1, "base", "not found", "relative to the sweep file"),
])
def test_every_mistake_names_the_file_line_field_and_a_fix(base, text, line, field, words, fix) -> None:
    path = write(base, text)
    error = error_of(path)
    assert (error.file, error.line, error.field) == (str(path), line, field), error.render()
    assert words in error.message, error.render()
    assert fix in (error.fix or ""), error.render()


def test_command_line_budget_and_storage_are_checked_too(base) -> None:
    path = write(base, "base: config.yaml\nspace:\n  train.lr: [1.0e-4]\n")
    assert error_of(path, trials=0).file == "--trials"
    assert error_of(path, storage="://").file == "--storage"
    assert error_of(path, name="../up").field == "name"


def test_the_cli_prints_one_line_and_exits_2(base) -> None:
    path = write(base, "base: config.yaml\nspace:\n  train.lrr: [1.0e-4]\n")
    result = subprocess.run([sys.executable, "-m", "retain.cli", "sweep", str(path)], check=False, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {path}:3: space.train.lrr: 'train.lrr' is not a config setting Fix: did you mean 'train.lr'?"]


def record(number: int, task: float | None, forgetting: float | None, state: str = "complete", **params) -> TrialRecord:
    return TrialRecord(number=number, state=state, params=params, task_accuracy=task, forgetting=forgetting)


def test_the_recommendation_is_the_best_task_accuracy_within_the_forgetting_limit() -> None:
    records = [record(0, 0.90, 0.10), record(1, 0.80, 0.02), record(2, 0.80, 0.01), record(3, 0.95, None),
               record(4, 0.99, 0.0, state="failed"), record(5, 0.70, -0.05)]
    assert recommend(records, 0.03).number == 2  # 0 forgets too much; 1 and 2 tie on task, 2 forgets less
    assert recommend(records, 0.2).number == 0
    assert recommend([record(0, 0.9, 0.5)], 0.03) is None


def test_the_data_size_curve_takes_each_sizes_best_trial() -> None:
    records = [record(0, 0.5, 0.01, **{"data.size": 200}), record(1, 0.6, 0.09, **{"data.size": 200}),
               record(2, 0.8, 0.02, **{"data.size": 1000}), record(3, None, None, state="failed",
                                                                   **{"data.size": 5000})]
    curve = data_size_curve(records, 0.03)
    assert [row["data.size"] for row in curve] == [200, 1000, 5000]
    assert curve[0]["best_task_accuracy"] == 0.6 and curve[0]["best_within_limit"] == 0.5
    assert curve[1]["best_within_limit_trial"] == 2 and curve[2]["trials"] == 0


def test_a_recommended_config_loads_as_a_retain_config(base) -> None:
    from retain.sweep.results import recommended_yaml

    sweep = load_sweep(write(base, "base: config.yaml\nspace:\n  method: [[lora, replay]]\n"))
    text = recommended_yaml(sweep, record(3, 0.8, 0.01, method=["lora", "replay"]))
    target = base.parent / "recommended.yaml"
    target.write_text(text)
    config = load_config(target)
    assert config.method.use == ["lora", "replay"] and config.output.name is None
    assert config.output.dir == str(base.parent / "runs")

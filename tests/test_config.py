"""Tests for retain.config: defaults, YAML errors with lines and fixes, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from retain.config import (
    RetainConfig,
    apply_overrides,
    config_reference_markdown,
    dotted_fields,
    dump_config,
    load_config,
)
from retain.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "retain.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> ConfigError:
    """Loads ``text`` as a config file and returns the ConfigError it must raise."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), overrides)
    return caught.value


# --- defaults -------------------------------------------------------------------------


def test_defaults_are_the_recipe() -> None:
    cfg = load_config(None)
    assert cfg.model.name_or_path == "lab"
    assert cfg.method.use == ["lora"]
    assert (cfg.method.lora.r, cfg.method.lora.alpha, cfg.method.lora.dropout) == (16, 32.0, 0.05)
    assert len(cfg.method.lora.target_modules) == 7
    assert cfg.train.lr == 1e-4
    assert cfg.train.epochs == 2
    assert cfg.train.max_grad_norm == 1.0
    assert cfg.train.warmup_ratio > 0
    assert cfg.guards.forgetting.threshold == 0.03
    assert cfg.guards.forgetting.action == "restore_best"
    assert cfg.probes.suites is None  # lab for the lab model, general otherwise


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "train:\n", "guards:\n  smoke:\n"])
def test_empty_file_and_empty_sections_mean_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text)) == RetainConfig()


def test_values_from_file(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "train:\n  lr: 5e-5\n  batch_size: 4\nmodel:\n  revision: 1234567\n")
    )
    assert cfg.train.lr == 5e-5  # YAML reads "5e-5" as text; it must still be a float
    assert cfg.train.batch_size == 4
    assert cfg.model.revision == "1234567"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("method: lora\n", ["lora"]), ("method: [full]\n", ["full"])],
)
def test_method_shorthand(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert load_config(write(tmp_path, text)).method.use == expected


def test_assignment_is_validated() -> None:
    cfg = RetainConfig()
    with pytest.raises(ValueError):
        cfg.train.lr = -1.0


# --- errors in the file ---------------------------------------------------------------


def assert_complete(error: ConfigError, *, file: str, line: int | None, field: str) -> None:
    """Checks that the error carries its location and fix, and renders them."""
    assert error.file is not None and error.file.endswith(file)
    assert error.line == line
    assert error.field == field
    assert error.fix
    rendered = error.render()
    for part in (file, field, error.fix):
        assert part in rendered
    if line is not None:
        assert f":{line}:" in rendered
    assert "pydantic" not in rendered and "Input should" not in rendered


def test_unknown_nested_key_suggests_the_nearest(tmp_path: Path) -> None:
    error = config_error(
        tmp_path, "model:\n  name_or_path: lab\ntrain:\n  epochs: 1\n  lrr: 1e-4\n"
    )
    assert_complete(error, file="retain.yaml", line=5, field="train.lrr")
    assert "unknown key 'lrr'" in error.message
    assert "did you mean 'lr'?" in error.fix
    assert "epochs" in error.fix  # lists the valid keys of the section


def test_unknown_top_level_key_suggests_the_nearest(tmp_path: Path) -> None:
    error = config_error(tmp_path, "model:\n  dtype: auto\ntrian:\n  lr: 1e-4\n")
    assert_complete(error, file="retain.yaml", line=3, field="trian")
    assert "did you mean 'train'?" in error.fix


def test_key_in_the_wrong_section_points_to_the_right_one(tmp_path: Path) -> None:
    error = config_error(tmp_path, "lr: 1e-4\n")
    assert "train.lr" in error.fix


def test_wrong_type_names_field_and_line(tmp_path: Path) -> None:
    error = config_error(tmp_path, "train:\n  epochs: 1\n  lr: fast\n")
    assert_complete(error, file="retain.yaml", line=3, field="train.lr")
    assert error.message == "expected a number, got 'fast'"


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("train:\n  lr: -1\n", "train.lr", "greater than 0"),
        ("method:\n  lora:\n    dropout: 1.5\n", "method.lora.dropout", "less than 1"),
        ("train:\n  batch_size: 0\n", "train.batch_size", "greater than 0"),
        ("train:\n  precision: fp8\n", "train.precision", "bf16"),
        ("train:\n  batch_size: 2.5\n", "train.batch_size", "whole number"),
        ("model:\n  device: gpu\n", "model.device", "cuda"),
        ("method:\n  use: []\n", "method.use", "empty"),
        ("method: [lora, lora]\n", "method.use", "more than once"),
        ("model:\n  trust_remote_code: maybe\n", "model.trust_remote_code", "true or false"),
        ("train: 5\n", "train", "section"),
    ],
)
def test_bad_values_give_clear_errors(tmp_path: Path, text: str, field: str, words: str) -> None:
    error = config_error(tmp_path, text)
    assert_complete(error, file="retain.yaml", line=text.count("\n"), field=field)
    assert words in error.message + error.fix


def test_several_errors_report_the_first_and_count_the_rest(tmp_path: Path) -> None:
    error = config_error(tmp_path, "train:\n  lr: fast\n  batch_size: 0\n")
    assert error.field == "train.lr"
    assert error.message.endswith("(and 1 more)")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    error = config_error(tmp_path, "train:\n  lr: 1e-4\n  epochs: [1, 2\n")
    assert error.file is not None and error.file.endswith("retain.yaml")
    assert error.line == 4
    assert "invalid YAML" in error.message and error.fix


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    error = config_error(tmp_path, "train:\n  lr: 1e-4\n  lr: 2e-4\n")
    assert (error.line, error.field) == (3, "train.lr")
    assert "line 2" in (error.fix or "")


@pytest.mark.parametrize("text", ["- model\n- train\n", "just text\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    error = config_error(tmp_path, text)
    assert "mapping" in error.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


# --- overrides ------------------------------------------------------------------------


def test_overrides_set_typed_values() -> None:
    cfg = load_config(
        None,
        [
            "train.lr=1e-4",
            "train.warmup_ratio=5E-2",
            "train.max_steps=2e3",
            "train.batch_size=4",
            "method.use=[full]",
            "model.trust_remote_code=true",
            "model.name_or_path=/x/y",
            "model.revision=1.10",
            "method.lora.target_modules=[q_proj, v_proj]",
        ],
    )
    assert cfg.train.lr == 0.0001 and isinstance(cfg.train.lr, float)
    assert cfg.train.warmup_ratio == 0.05
    assert cfg.train.max_steps == 2000
    assert cfg.train.batch_size == 4 and isinstance(cfg.train.batch_size, int)
    assert cfg.method.use == ["full"]
    assert cfg.model.trust_remote_code is True
    assert cfg.model.name_or_path == "/x/y"
    assert cfg.model.revision == "1.10"  # text, not the float 1.1
    assert cfg.method.lora.target_modules == ["q_proj", "v_proj"]


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: 3e-4\n  epochs: 3\nmethod: lora\n")
    cfg = load_config(path, ["train.lr=2e-5", "method.lora.r=8", "output.name=null"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.method.lora.r) == (2e-5, 3, 8)
    assert cfg.method.use == ["lora"] and cfg.output.name is None


def test_method_shorthand_override_keeps_method_settings() -> None:
    cfg = load_config(None, ["method.lora.r=8", "method=[lora]"])
    assert cfg.method.use == ["lora"] and cfg.method.lora.r == 8


def test_apply_overrides_does_not_modify_its_input() -> None:
    raw = {"train": {"lr": 0.1}}
    assert apply_overrides(raw, ["train.lr=0.2", "method=lora"]) == {
        "train": {"lr": 0.2},
        "method": {"use": "lora"},
    }
    assert raw == {"train": {"lr": 0.1}}


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [("train.lrr=1", "train.lr"), ("trian.lr=1", "train.lr"), ("lr=1", "train.lr")],
)
def test_override_of_unknown_path_suggests_the_nearest(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert caught.value.file == "--set"
    assert f"'{suggestion}'" in (caught.value.fix or "")


@pytest.mark.parametrize("override", ["train.lr", "=1", "  =x"])
def test_malformed_override(override: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert caught.value.file == "--set"
    assert "section.key=value" in (caught.value.fix or "")


def test_bad_override_value_names_the_override_not_the_file(tmp_path: Path) -> None:
    error = config_error(tmp_path, "train:\n  lr: 1e-4\n", overrides=("train.lr=fast",))
    assert error.file == "--set" and error.line is None
    assert error.field == "train.lr"
    assert "train.lr=fast" in error.message
    assert error.render().startswith("--set: train.lr: expected a number")


def test_file_error_keeps_its_line_when_overrides_are_fine(tmp_path: Path) -> None:
    error = config_error(tmp_path, "train:\n  batch_size: 0\n", overrides=("train.lr=1e-3",))
    assert (error.file, error.line) == (str(tmp_path / "retain.yaml"), 2)


# --- output ---------------------------------------------------------------------------


def test_methods_are_known_and_full_excludes_lora() -> None:
    with pytest.raises(ConfigError, match="unknown method 'rehearse'"):
        load_config(None, ["method=[lora,rehearse]"])
    with pytest.raises(ConfigError, match="exclude each other"):
        load_config(None, ["method=[lora,full]"])
    with pytest.raises(ConfigError, match="'full' and 'qlora' exclude each other"):
        load_config(None, ["method=[full,replay,qlora]"])


def test_the_base_method_is_lora_unless_named() -> None:
    assert load_config(None, ["method=[replay,ewc]"]).method.base == "lora"
    assert load_config(None, ["method=[replay,full]"]).method.base == "full"
    assert not load_config(None, ["method=[full]"]).method.adapters
    assert load_config(None, ["method=[qlora]"]).method.adapters


def test_dump_then_load_round_trips(tmp_path: Path) -> None:
    cfg = load_config(
        None, ["train.lr=3e-5", "method=[full]", "model.revision=0123", "data.size=100"]
    )
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg
    assert load_config(write(tmp_path, dump_config(RetainConfig()))) == RetainConfig()


def test_reference_lists_every_field_with_a_description() -> None:
    reference = config_reference_markdown()
    fields = dotted_fields()
    assert (
        "train.lr" in fields
        and "method.lora.r" in fields
        and "guards.forgetting.threshold" in fields
    )
    for name in fields:
        rows = [row for row in reference.splitlines() if row.startswith(f"| `{name}` |")]
        assert len(rows) == 1, name
        description = rows[0].rstrip(" |").rsplit(" | ", 1)[-1]
        assert len(description) > 10, name


def test_docs_config_md_is_the_generated_reference() -> None:
    from pathlib import Path

    from retain.config.reference import REFERENCE_DOC, config_reference_document

    doc = Path(__file__).resolve().parent.parent / REFERENCE_DOC
    assert doc.read_text() == config_reference_document(), (
        "docs/CONFIG.md is out of date: run `retain config reference --write docs/CONFIG.md`")



def test_a_leading_tilde_is_the_home_folder_in_every_path_setting(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config_file = tmp_path / "c.yaml"
    config_file.write_text("output:\n  dir: ~/runs\ndata:\n  train: ~/train.jsonl\nprobes:\n  suites: [lab, ~/s.yaml]\n")
    config = load_config(config_file, ["method.general.source=~/general.txt"])
    assert config.output.dir == str(tmp_path / "runs")
    assert config.data.train == str(tmp_path / "train.jsonl")
    assert config.probes.suites == ["lab", str(tmp_path / "s.yaml")]
    assert config.method.general.source == str(tmp_path / "general.txt")
    assert load_config(None, ["output.name=~x"]).output.name == "~x"  # only a leading ~ or ~/ in a path


# --- Hugging Face's names, and TrainingArguments passed through ------------------------


def test_hugging_face_names_set_retains_settings_in_a_file_and_in_overrides(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  model_name_or_path: lab\n  torch_dtype: float32\ntrain:\n  learning_rate: 2e-4\n"
                    "  num_train_epochs: 3\n  gradient_accumulation_steps: 2\ndata:\n  max_seq_length: 256\n")
    config = load_config(path, ["train.per_device_train_batch_size=4", "method.lora.lora_alpha=8",
                                "train.lr_scheduler_type=linear", "train.save_steps=5"])
    assert (config.train.lr, config.train.epochs, config.train.grad_accum, config.train.batch_size) == (2e-4, 3, 2, 4)
    assert (config.model.dtype, config.data.max_length, config.method.lora.alpha) == ("float32", 256, 8)
    assert (config.train.lr_scheduler, config.train.save_every) == ("linear", 5)
    dumped = dump_config(config)  # a run's config.yaml keeps retain's names
    assert "learning_rate" not in dumped and "lr: 0.0002" in dumped


def test_a_setting_given_under_both_names_is_refused_at_its_line(tmp_path: Path) -> None:
    error = config_error(tmp_path, "train:\n  lr: 1e-4\n  learning_rate: 2e-4\n")
    assert (error.line, error.field) == (3, "train.learning_rate")
    assert "'learning_rate' and 'lr' are the same setting" in error.message and "keep one" in error.fix


@pytest.mark.parametrize(("text", "override"), [("train:\n  learing_rate: 1\n", None), (None, "train.learing_rate=1")])
def test_a_misspelt_hugging_face_name_suggests_it(tmp_path: Path, text: str | None, override: str | None) -> None:
    if text is not None:
        error = config_error(tmp_path, text)
        assert error.fix.startswith("did you mean 'learning_rate' (lr)?")
    else:
        with pytest.raises(ConfigError) as caught:
            load_config(None, [override])
        assert caught.value.fix == "did you mean 'train.learning_rate' (train.lr)?"


def test_trainer_args_reach_training_arguments_and_refuse_what_retain_sets(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from retain.training.plan import check_trainer_args, training_args

    run, plan = SimpleNamespace(checkpoints_dir=tmp_path), SimpleNamespace(interval=5, total_steps=20)
    config = load_config(None, ["train.trainer_args.optim=adafactor", "train.trainer_args.adam_beta2=0.99",
                                "model.device=cpu"])
    args = training_args(config, run, plan)
    assert (args.optim, args.adam_beta2, args.learning_rate, args.logging_steps) == ("adafactor", 0.99, 1e-4, 1)
    refused = {"learning_rate": "set train.lr", "logging_steps": "the loss guard reads every step's loss",
               "load_best_model_at_end": "guards.forgetting.action"}
    for name, fix in refused.items():
        with pytest.raises(ConfigError) as caught:
            check_trainer_args(load_config(None, [f"train.trainer_args.{name}=1"]))
        assert caught.value.field == f"train.trainer_args.{name}" and fix in caught.value.fix
    with pytest.raises(ConfigError) as caught:
        check_trainer_args(load_config(None, ["train.trainer_args.gradient_checkpoint=true"]))
    assert "not a setting of transformers' TrainingArguments" in caught.value.message
    assert caught.value.fix.startswith("did you mean 'gradient_checkpointing'?")
    with pytest.raises(ConfigError) as caught:  # transformers' own check of a value, as one line
        training_args(load_config(None, ["train.trainer_args.optim=no_such_optimizer", "model.device=cpu"]), run, plan)
    assert caught.value.field == "train.trainer_args" and "no_such_optimizer" in caught.value.message

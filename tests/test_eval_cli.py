"""`retain eval` and `retain baseline` end to end on the micro lab model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from retain.cli import app
from retain.errors import RetainError
from retain.evaluation.probes import ProbeSuite
from retain.evaluation.suites import write_suite
from retain.lab.domain import DomainSpec, build_domain, write_jsonl
from retain.lab.world import build_world

runner = CliRunner()
FAST = ["--set", "eval.perturb_limit=6", "--set", "eval.max_new_tokens=4", "--set", "probes.max_new_tokens=6"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-files")
    world = build_world()
    small = ProbeSuite("lab-small", "1", world.probes.items[::12], world.probes.delimiter)
    write_suite(small, root / "probes.jsonl")
    domain = build_domain(DomainSpec(n_train=30, n_validation=4, n_test=12, n_ood=8))
    write_jsonl(domain.train, root / "train.jsonl")
    write_jsonl(domain.test, root / "test.jsonl")
    write_jsonl(domain.ood, root / "ood.jsonl")
    return {"probes": root / "probes.jsonl", "train": root / "train.jsonl",
            "test": root / "test.jsonl", "ood": root / "ood.jsonl", "root": root}


def invoke(*args: str):
    return runner.invoke(app, ["-q", *args], catch_exceptions=False)


def test_eval_measures_probes_task_drift_and_health(micro_base, files, tmp_path) -> None:
    base, _ = micro_base
    out = tmp_path / "eval.json"
    result = invoke("eval", str(base.path), "--suite", str(files["probes"]), "--task", str(files["test"]),
                    "--ood", str(files["ood"]), "--json", str(out), *FAST)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    methods = data["probes"]["lab-small"]
    assert set(methods) == {"generation", "loglik", "loglik_norm"}
    assert len(methods["generation"]["items"]) == 29
    assert set(data["task"]) == {"eval", "ood"} and data["task"]["eval"]["labels"] == ["maybe", "no", "yes"]
    assert data["drift"]["perplexity"] > 1 and data["drift"]["kl"] is None  # no base given
    assert data["smoke"]["n"] == 3
    assert {entry["name"] for entry in data["brittleness"]} >= {"lowercase", "template_wording"}
    assert "probes: lab-small" in result.output and "task" in result.output


def test_comparing_a_model_with_itself_shows_no_forgetting(micro_base, files, tmp_path) -> None:
    base, _ = micro_base
    first = tmp_path / "first.json"
    args = ["--suite", str(files["probes"]), "--no-drift", "--set", "eval.perturbations=[]", *FAST]
    assert invoke("eval", str(base.path), "--json", str(first), *args).exit_code == 0
    second = tmp_path / "second.json"
    result = invoke("eval", str(base.path), "--compare-to", str(first), "--json", str(second), *args)
    assert result.exit_code == 0, result.output
    overall = json.loads(second.read_text())["forgetting"]["lab-small"]["generation"]["categories"]["overall"]
    assert overall["absolute_drop"] == 0 and overall["newly_wrong"] == 0
    # One meaning of forgetting: relative first, the points beside it, both labelled.
    assert "forgetting, relative = the drop from the base's accuracy" in result.output
    from retain.console import forgetting_cell
    from retain.evaluation.forgetting import CategoryForgetting

    figure = CategoryForgetting(**{**{name: 0 for name in CategoryForgetting.__dataclass_fields__},
                                   "absolute_drop": 0.196, "relative_drop": 0.44, "absolute_drop_ci": (0.121, 0.27)})
    assert forgetting_cell(figure) == "+44.0% (+19.6 pts [+12.1, +27.0])"


def test_max_forgetting_exits_0_within_the_limit_and_1_over_it_naming_the_categories(
        micro_base, files, tmp_path) -> None:
    base, _ = micro_base
    args = ["--suite", str(files["probes"]), "--no-drift", "--set", "eval.perturbations=[]", *FAST]
    first = tmp_path / "first.json"
    assert invoke("eval", str(base.path), "--json", str(first), *args).exit_code == 0
    result = invoke("eval", str(base.path), "--compare-to", str(first), "--max-forgetting", "3%", *args)
    assert result.exit_code == 0, result.output
    assert ("forgetting within --max-forgetting 3% (by generation): lab-small +0.0% relative (+0.0 points)"
            in result.output)
    # Against a base that answered every item right, the model forgot every item it gets wrong.
    data = json.loads(first.read_text())
    wrong = {item["category"] for item in data["probes"]["lab-small"]["generation"]["items"] if not item["correct"]}
    right = {item["category"] for item in data["probes"]["lab-small"]["generation"]["items"]} - wrong
    assert wrong and right  # the check below names the one and not the other
    for score in data["probes"]["lab-small"].values():
        for item in score["items"]:
            item["correct"] = True
    perfect = tmp_path / "perfect.json"
    perfect.write_text(json.dumps(data))
    result = invoke("eval", str(base.path), "--compare-to", str(perfect), "--max-forgetting", "0.03", *args)
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.output.splitlines() if "--max-forgetting" in line]
    assert line.startswith("forgetting over --max-forgetting 3% (by generation): lab-small +")
    named = line.split("categories over the limit: ")[1]
    assert {part.split(" ")[0] for part in named.split(", ")} == {f"lab-small/{name}" for name in wrong}


def test_adapter_is_compared_with_its_own_base_without_a_second_copy(micro_base, files, tmp_path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, _ = micro_base
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base.path)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    adapted = get_peft_model(model, config)
    adapted.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "eval.json"
    result = invoke("eval", str(tmp_path / "adapter"), "--suite", str(files["probes"]), "--json", str(out),
                    "--set", "eval.perturbations=[]", *FAST)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["base"]["source"].endswith("(adapters disabled)")
    assert data["drift"]["kl"] > 0
    forgetting = data["forgetting"]["lab-small"]
    assert set(forgetting) == {"generation", "loglik", "loglik_norm"}
    assert "overall" in forgetting["generation"]["categories"]


def test_baseline_reports_zero_and_few_shot_with_a_verdict(micro_base, files, tmp_path) -> None:
    base, _ = micro_base
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model:\n  name_or_path: {base.path}\n"
        f"data:\n  train: {files['train']}\n  eval: {files['test']}\n"
        "eval:\n  shots: [0, 2]\n  target: 0.9\n  max_new_tokens: 4\n"
    )
    out = tmp_path / "baseline.json"
    result = invoke("baseline", str(config), "--json", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["scores"]) == {"0", "2"} and data["target"] == 0.9
    assert data["prompting_may_suffice"] is False  # an untuned micro model is far from 90%
    assert "fine-tuning looks needed" in result.output


def test_baseline_generates_at_the_generation_batch_size(micro_base, files, tmp_path, monkeypatch) -> None:
    from retain.evaluation import task as task_module

    base, _ = micro_base
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name_or_path: {base.path}\ndata:\n  eval: {files['test']}\n"
                      "eval:\n  shots: [0]\n  max_new_tokens: 2\n  batch_size: 4\n  generation_batch_size: 64\n")
    real, sizes = task_module.generate_greedy, []
    monkeypatch.setattr(task_module, "generate_greedy",
                        lambda *args, **kwargs: sizes.append(args[4]) or real(*args, **kwargs))
    assert invoke("baseline", str(config)).exit_code == 0
    assert sizes == [64]  # answers in batches of 64; the labels are still ranked 4 at a time


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--task", "missing.jsonl"], "missing.jsonl"),
        (["--suite", "nonsense"], "no probe suite named 'nonsense'"),
        (["--compare-to", "missing.json"], "missing.json"),
        (["--set", "eval.perturbations=[shout]"], "unknown perturbation 'shout'"),
        (["--max-forgetting", "3"], "--max-forgetting: '3' is not a share of accuracy below 100%"),
        (["--max-forgetting", "lots"], "Fix: write a percentage or a fraction, e.g. 3% or 0.03"),
        (["--max-forgetting", "3%"], "there is no base model to measure forgetting against"),
    ],
)
def test_eval_mistakes_are_one_line_and_exit_2(micro_base, args, words, tmp_path, monkeypatch) -> None:
    import subprocess
    import sys

    base, _ = micro_base
    monkeypatch.chdir(tmp_path)
    result = subprocess.run([sys.executable, "-m", "retain.cli", "eval", str(base.path), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and words in result.stderr


def test_eval_of_a_folder_without_a_model_says_what_it_looked_for(tmp_path) -> None:
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert isinstance(result.exception, RetainError)
    assert "holds no model" in result.exception.render()


def test_baseline_without_eval_data_names_the_field(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  name_or_path: lab\n")
    result = runner.invoke(app, ["baseline", str(config)])
    assert isinstance(result.exception, RetainError) and result.exception.field == "data.eval"


def test_unreachable_hub_model_is_a_clean_error(tmp_path, monkeypatch) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "retain.cli", "eval", "no-such-org/no-such-model"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "cannot load model 'no-such-org/no-such-model'" in result.stderr


def test_default_suite_is_lab_for_lab_models_and_their_adapters_else_general(micro_base, tmp_path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from retain.evaluation.commands import default_suites

    base, _ = micro_base
    assert default_suites("lab") == ["lab"]
    assert default_suites(str(base.path)) == ["lab"]
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(base.path), LoraConfig(r=2, target_modules=["q_proj"]))
    adapted.save_pretrained(tmp_path / "adapter")
    assert default_suites(str(tmp_path / "adapter")) == ["lab"]
    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    other.save_pretrained(tmp_path / "other")
    assert default_suites(str(tmp_path / "other")) == ["general"]
    assert default_suites("some-org/some-model") == ["general"]


def test_eval_of_a_run_directory_uses_the_runs_own_config(micro_base, files, tmp_path) -> None:
    import shutil

    base, _ = micro_base
    run = tmp_path / "run"
    shutil.copytree(base.path, run / "model")
    (run / "config.yaml").write_text(f"probes:\n  suites: [{files['probes']}]\neval:\n  max_new_tokens: 4\n")
    (run / "meta.json").write_text("{}")
    out = tmp_path / "eval.json"
    result = invoke("eval", str(run), "--no-drift", "--json", str(out), "--set", "eval.perturb_limit=6")
    assert result.exit_code == 0, result.output
    assert "using the run's own config" in result.output
    assert set(json.loads(out.read_text())["probes"]) == {"lab-small"}  # the run's suite, not the default


def test_a_base_named_by_flag_is_measured_once_and_a_damaged_cache_measured_again(
        micro_base, files, tmp_path, monkeypatch) -> None:
    import retain.evaluation.commands as commands

    base, _ = micro_base
    monkeypatch.setenv("RETAIN_CACHE_DIR", str(tmp_path / "cache"))
    loads = []
    original = commands._load
    monkeypatch.setattr(commands, "_load", lambda config, name, progress: loads.append(name) or
                        original(config, name, progress))
    args = ["eval", str(base.path), "--base", str(base.path), "--suite", str(files["probes"]),
            "--set", "eval.perturbations=[]", *FAST]

    def run(name: str) -> dict:
        loads.clear()
        result = invoke(*args, "--json", str(tmp_path / name))
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / name).read_text())

    first = run("first.json")
    assert len(loads) == 2  # the base, then the model
    second = run("second.json")
    assert len(loads) == 1  # the base's evaluation and log-probabilities came from the cache
    assert second["base"]["result"]["probes"] == first["base"]["result"]["probes"]
    assert second["drift"]["kl"] == pytest.approx(first["drift"]["kl"]) and second["drift"]["kl"] is not None
    assert second["forgetting"] == first["forgetting"]
    (logprobs,) = (tmp_path / "cache" / "drift").glob("base-*.safetensors")
    logprobs.write_bytes(b"not a safetensors file")
    redone = run("redone.json")
    assert len(loads) == 2  # damaged log-probabilities: the base computes them again
    assert redone["drift"]["kl"] == pytest.approx(first["drift"]["kl"])
    (cached,) = (tmp_path / "cache" / "base-eval").glob("*-eval.json")
    cached.write_text('{"probes": {"lab-small"')  # a crash mid-write of an older retain
    third = run("third.json")
    assert len(loads) == 2 and third["forgetting"] == first["forgetting"]
    assert json.loads(cached.read_text())["probes"] == first["base"]["result"]["probes"]  # rewritten whole
    loads.clear()
    result = invoke(*args, "--calibrate", "--set", "probes.calibrate_min_items=1",
                    "--json", str(tmp_path / "calibrated.json"))
    assert result.exit_code == 0, result.output
    assert len(loads) == 2  # calibrating asks the base model itself (paraphrased prompts) ...
    calibrated = json.loads((tmp_path / "calibrated.json").read_text())
    loads.clear()
    result = invoke(*args, "--calibrate", "--set", "probes.calibrate_min_items=1",
                    "--json", str(tmp_path / "again.json"))
    assert result.exit_code == 0, result.output
    assert len(loads) == 1  # ... once: what it knew is cached with its evaluation
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["calibration"] == calibrated["calibration"] and again["forgetting"] == calibrated["forgetting"]


def test_a_run_directory_is_known_by_its_models_weights(tmp_path) -> None:
    from retain.evaluation.commands import model_identity

    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"1" * 10)
    before = model_identity(str(tmp_path / "run"))
    assert "model.safetensors:10:" in before
    (model / "model.safetensors").write_bytes(b"2" * 20)  # the run trained again
    assert model_identity(str(tmp_path / "run")) != before

"""The guards' rules on numbers: each triggers on its fault and stays quiet otherwise."""

from __future__ import annotations

import math

import pytest

from retain.config.guards import GuardsConfig
from retain.guards.rules import (
    Check,
    better,
    judge_drift,
    judge_forgetting,
    judge_overfitting,
    judge_smoke,
    judge_train_loss,
    relative_drop,
    smoke_cause,
)

GUARDS = GuardsConfig()


def test_forgetting_triggers_only_above_the_threshold() -> None:
    assert relative_drop(0.9, 0.9 * (1 - 0.031)) > 0.03
    quiet = judge_forgetting(Check(step=5, epoch=0.1, probe_accuracy=0.88, forgetting=0.02), GUARDS)
    assert quiet is not None and not quiet.triggered and quiet.action == "none"
    loud = judge_forgetting(Check(step=5, epoch=0.1, probe_accuracy=0.8, forgetting=0.1,
                                  categories={"lab/capitals": 0.5, "lab/greetings": 1.0}), GUARDS,
                            last=True)
    assert loud.triggered and loud.action == "restore_best" and loud.stops
    assert "lab/capitals 50%" in loud.message
    assert judge_forgetting(Check(step=5, epoch=0.1), GUARDS) is None


def test_smoke_compares_with_the_base_and_names_the_cause() -> None:
    check = Check(step=3, epoch=0.1, smoke_fail_share=1.0, smoke_failures={"empty": 3},
                  smoke_examples=[("What is 2+2?", "")])
    decision = judge_smoke(check, base_fail_share=0.0, config=GUARDS)
    assert decision.triggered and decision.action == "stop" and "EOS at once" in decision.message
    assert not judge_smoke(check, base_fail_share=1.0, config=GUARDS).triggered  # the base was as broken
    one = Check(step=3, epoch=0.1, smoke_fail_share=1 / 3, smoke_failures={"loop": 1})
    assert judge_smoke(one, 0.0, GUARDS).triggered  # one newly broken answer of three (fail_share 0.25)
    assert not judge_smoke(one, 1 / 3, GUARDS).triggered  # the base broke as many
    lenient = GUARDS.model_copy(update={"smoke": GUARDS.smoke.model_copy(update={"fail_share": 0.5})})
    assert not judge_smoke(one, 0.0, lenient).triggered
    assert "masked" in smoke_cause({"never_stops": 2, "echo": 1})
    assert "repeats the prompt" in smoke_cause({"echo": 2})
    # The doctor saw the labels right: the cause named is the training, never the collator.
    checked = smoke_cause({"echo": 2}, pipeline_checked=True)
    assert "learning rate" in checked and "collator" not in checked and "loss_on" not in checked
    assert "masked" not in smoke_cause({"never_stops": 2}, pipeline_checked=True)


def test_drift_records_without_limits_and_acts_with_them() -> None:
    check = Check(step=3, epoch=0.1, kl=0.4, perplexity_ratio=1.3)
    recorded = judge_drift(check, GUARDS)
    assert recorded is not None and not recorded.triggered and "KL to base 0.400" in recorded.message
    limited = GuardsConfig.model_validate({"drift": {"max_kl": 0.2, "action": "stop"}})
    decision = judge_drift(check, limited)
    assert decision.triggered and decision.stops and decision.threshold == 0.2
    assert judge_drift(Check(step=1, epoch=0.0), GUARDS) is None


def checks(val_losses: list[float], train_losses: list[float]) -> list[Check]:
    return [Check(step=i, epoch=0.0, val_loss=v, train_loss=t)
            for i, (v, t) in enumerate(zip(val_losses, train_losses, strict=True))]


def test_overfitting_needs_patience_rises_while_train_loss_falls() -> None:
    rising = checks([1.0, 1.1, 1.2, 1.3], [1.0, 0.8, 0.6, 0.4])
    decision = judge_overfitting(rising, GUARDS)
    assert decision.triggered and decision.action == "stop"
    assert not judge_overfitting(rising[:3], GUARDS).triggered  # only two rises so far
    both_rise = checks([1.0, 1.1, 1.2, 1.3], [1.0, 1.1, 1.2, 1.3])  # diverging, not memorising
    assert not judge_overfitting(both_rise, GUARDS).triggered
    dip = checks([1.0, 1.1, 1.05, 1.2], [1.0, 0.8, 0.6, 0.4])
    assert not judge_overfitting(dip, GUARDS).triggered


def test_loss_guard_stops_on_nan_and_warns_once_on_extremes() -> None:
    warned: set[str] = set()
    nan = judge_train_loss(math.nan, 7, 0, GUARDS, warned)
    assert nan.stops and "step 7" in nan.message and "learning rate" in nan.message
    assert judge_train_loss(math.inf, 7, 0, GUARDS, warned).stops
    assert judge_train_loss(3.0, 5, 10, GUARDS, warned, recent=3.0) is None  # still settling
    assert judge_train_loss(3.0, 11, 10, GUARDS, warned, recent=1.5) is None  # one noisy batch
    assert judge_train_loss(3.0, 11, 10, GUARDS, warned) is None  # no full window yet
    high = judge_train_loss(3.0, 11, 10, GUARDS, warned, recent=2.5)
    assert high.triggered and high.action == "warn" and "mean of the last" in high.message
    assert judge_train_loss(3.0, 12, 10, GUARDS, warned, recent=2.5) is None  # once
    low = judge_train_loss(0.1, 13, 10, GUARDS, warned, recent=0.1)
    assert low.guard == "overfitting" and low.action == "warn"


def test_best_is_task_accuracy_within_the_forgetting_limit() -> None:
    within = Check(step=2, epoch=0.1, forgetting=0.01, task_accuracy=0.6)
    better_task = Check(step=4, epoch=0.2, forgetting=0.02, task_accuracy=0.8)
    forgot = Check(step=6, epoch=0.3, forgetting=0.2, task_accuracy=0.99)
    assert better(within, None, GUARDS)
    assert better(better_task, within, GUARDS)
    assert not better(forgot, better_task, GUARDS)  # the limit comes first
    assert better(Check(step=8, epoch=0.4, forgetting=0.1), forgot, GUARDS)  # none within: least forgetting
    tie = Check(step=8, epoch=0.4, forgetting=0.0, task_accuracy=0.8, val_loss=0.5)
    assert better(tie, Check(step=4, epoch=0.2, forgetting=0.0, task_accuracy=0.8, val_loss=0.7), GUARDS)


def test_broken_checks_are_never_best_while_a_sound_one_exists() -> None:
    sound = Check(step=2, epoch=0.1, forgetting=0.5, task_accuracy=0.1, smoke_fail_share=0.0)
    silent = Check(step=4, epoch=0.2, forgetting=0.0, task_accuracy=0.9, smoke_fail_share=1.0)
    nan = Check(step=6, epoch=0.3, forgetting=0.0, task_accuracy=0.9, val_loss=math.nan)
    assert not better(silent, sound, GUARDS) and not better(nan, sound, GUARDS)
    assert better(sound, silent, GUARDS)


def test_task_reasons_refuse_a_model_that_did_not_learn_or_answers_nothing() -> None:
    from retain.training.finish import task_reasons

    def score(accuracy: float, unparsed: float = 0.0, failures: float = 0.0) -> dict:
        return {"accuracy": accuracy, "unparsed": unparsed, "health": {"failures": failures}}

    assert task_reasons({"eval": score(0.4)}, {"eval": score(0.8), "ood": score(0.7)}, 0.25) == []
    flat = task_reasons({"eval": score(0.4)}, {"eval": score(0.4)}, 0.25)
    assert len(flat) == 1 and "did not improve" in flat[0] and "40.0% -> 40.0%" in flat[0]
    # The seed article's lie: a majority-label score from a model whose answers carry no label.
    silent = task_reasons({"eval": score(0.3)}, {"eval": score(0.52, unparsed=0.9, failures=0.9)}, 0.25)
    assert any("commit to no label" in reason for reason in silent)
    assert any("are broken" in reason for reason in silent)
    assert task_reasons({}, {"eval": score(0.1)}, 0.25) == []  # no base score: nothing to compare
    # Better than the base, but no better than always answering the commonest label.
    majority = {"label": "no", "share": 0.405}
    constant = task_reasons({"eval": score(0.0)}, {"eval": score(0.408) | {"n": 400, "majority": majority}}, 0.25)
    assert len(constant) == 1 and "always answering 'no' (40.5%)" in constant[0] and "not learned" in constant[0]
    learned = {"eval": score(0.623) | {"n": 400, "majority": majority}}
    assert task_reasons({"eval": score(0.0)}, learned, 0.25) == []


def test_forgetting_patience_waits_out_a_falling_dip_but_not_a_holding_drop() -> None:
    def guards(patience: int) -> GuardsConfig:
        return GUARDS.model_copy(update={"forgetting": GUARDS.forgetting.model_copy(update={"patience": patience})})

    def judge(values: list[float], patience: int, last: bool = False):
        history = [Check(step=10 * i, epoch=0.1, probe_accuracy=0.9, forgetting=v) for i, v in enumerate(values)]
        return judge_forgetting(history[-1], guards(patience), history, last=last)

    assert GUARDS.forgetting.patience == 2
    assert judge([0.0, 0.08], 0).triggered  # patience 0: the first check over the limit acts
    first = judge([0.0, 0.08], 2)
    assert not first.triggered and "1 check(s) in a row, 0 without a new low (patience 2)" in first.message
    # The stability gap: a dip that keeps falling is waited out however long it lasts.
    assert not judge([0.0, 0.09, 0.066, 0.063, 0.039, 0.035], 2).triggered
    # A drop that holds or grows acts after `patience` checks without a new low.
    assert not judge([0.0, 0.05, 0.06], 2).triggered
    growing = judge([0.0, 0.05, 0.06, 0.07], 2)
    assert growing.triggered and growing.action == "restore_best"
    assert "3 check(s) in a row, 2 without a new low" in growing.message
    assert judge([0.0, 0.09, 0.07, 0.08, 0.075], 2).triggered  # 0.07 stays the low for two checks
    # Back within the limit ends the stretch; the next stretch counts afresh.
    assert not judge([0.0, 0.05, 0.06, 0.01, 0.05, 0.06], 2).triggered
    # The run's last check acts at once: no later check to recover at.
    assert judge([0.0, 0.05], 2, last=True).triggered
    assert not judge([0.0, 0.02], 2, last=True).triggered


def test_the_smoke_guard_knows_whether_the_doctor_passed_the_run(tmp_path) -> None:
    import json

    from retain.rundir import RunDir
    from retain.training.preflight import doctor_passed

    run = RunDir(tmp_path)
    assert not doctor_passed(run)  # no doctor.json: it cannot say
    (tmp_path / "doctor.json").write_text(json.dumps({"findings": [{"severity": "warning"}]}))
    assert doctor_passed(run)
    (tmp_path / "doctor.json").write_text(json.dumps({"findings": [{"severity": "blocker"}]}))
    assert not doctor_passed(run)
    (tmp_path / "doctor.json").write_text("[broken")
    assert not doctor_passed(run)


def test_an_answer_that_runs_a_little_past_the_cap_is_not_one_that_never_stops(monkeypatch) -> None:
    # Issue 25: SmolLM2's base answered "Hello, how are you?" in about 30 of 32 tokens; two
    # LoRA steps later the answer ran a little past the cap and the smoke guard called the
    # model broken. Answers over the cap are asked again with twice the cap.
    from retain.evaluation.engine import EvalSettings
    from retain.evaluation.generation import Generation
    from retain.guards import measure
    from retain.guards.measure import Probe

    lengths = {"base": {"a little longer": 30, "never ends": 5, "short": 5},
               "tuned": {"a little longer": 35, "never ends": 10_000, "short": 5}}
    model = {"which": "base"}
    calls = []

    def generate(m, tokenizer, prompts, cap):
        calls.append((list(prompts), cap))
        return [Generation(prompt, "an answer", min(lengths[model["which"]][prompt], cap),
                           lengths[model["which"]][prompt] < cap) for prompt in prompts]

    monkeypatch.setattr(measure, "generate_greedy", generate)
    probe = Probe(tokenizer=None, suites=(), method="generation", settings=EvalSettings(), chat_template="none",
                  smoke_prompts=["a little longer", "never ends", "short"], smoke_max_new_tokens=32)
    _, _, _, stopped = probe.smoke(None)
    assert stopped == [True, True, True] and len(calls) == 1
    model["which"] = "tuned"
    share, counts, examples, _ = probe.smoke(None, stopped)
    assert calls[-1] == (["a little longer", "never ends"], 64)  # only the overruns, asked again
    assert counts == {"never_stops": 1} and share == pytest.approx(1 / 3) and examples[0][0] == "never ends"


def test_a_check_reads_back_from_its_metrics_record() -> None:
    from retain.guards.rules import Check

    check = Check(step=8, epoch=0.5, probe_accuracy=0.9, forgetting=0.05, smoke_examples=[("hi", "hello")])
    record = {"event": "check", **check.to_dict(), "time": 1.0}  # as metrics.jsonl holds it (JSON: lists)
    record["smoke_examples"] = [list(pair) for pair in record["smoke_examples"]]
    assert Check.from_dict(record) == check

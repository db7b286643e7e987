"""retain.ewc and retain.l2sp: retain train's penalties as callbacks for any trainer. The
gradient they add against the closed form, the fp16 scale, the pull towards the start in a
real SFTTrainer and DPOTrainer, and gradient accumulation: 2 micro-batches of 2 give the
weights of 1 batch of 4, while a penalty added per micro-batch does not."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import datasets
import pytest
import torch
from tiny_models import tiny_llama
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers import logging as transformers_logging
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

import retain
from retain.data.encoding import prepare_tokenizer
from retain.dropin.penalties import PenaltyCallback
from retain.dropin.rows import general_config
from retain.errors import ConfigError
from retain.lab.tokenizer import train_tokenizer
from retain.lab.world import build_world
from retain.methods.regularizers import L2Sp

GENERAL = ["The river rises in the hills and runs west.", "Q: What is 12+7?\nA: 19",
           "Farmers grow wheat and barley along the banks."]
ROWS = [{"text": f"Q: What is {index}+{index}?\nA: {2 * index}"} for index in range(16)]


@pytest.fixture(scope="module")
def tokenizer():
    datasets.disable_progress_bars()
    transformers_logging.set_verbosity_error()
    tokenizer = train_tokenizer(build_world().documents, 384, 128)
    prepare_tokenizer(tokenizer)
    return tokenizer


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([parameter.detach().flatten() for parameter in model.parameters()])


def _sft(tokenizer, tmp_path, callback=None, *, accumulation: int = 1, batch: int = 4, optim: str = "sgd",
         lr: float = 0.5) -> torch.nn.Module:
    """Trains a tiny Llama (seed 0) for 4 steps of 4 rows in TRL's SFTTrainer; returns it."""
    torch.manual_seed(0)
    model = tiny_llama(tokenizer)
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=4, per_device_train_batch_size=batch,
                     gradient_accumulation_steps=accumulation, learning_rate=lr, optim=optim, save_strategy="no",
                     report_to="none", use_cpu=True, max_length=64, disable_tqdm=True, seed=0)
    SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(ROWS), processing_class=tokenizer,
               callbacks=[callback] if callback else []).train()
    return model


def _start(tokenizer) -> torch.Tensor:
    torch.manual_seed(0)
    return _flat(tiny_llama(tokenizer))


def _begin(callback: PenaltyCallback, model, tokenizer) -> None:
    callback.on_train_begin(TrainingArguments(output_dir="unused", use_cpu=True, report_to="none"), TrainerState(),
                            TrainerControl(), model=model, processing_class=tokenizer)


def test_the_gradient_added_is_that_of_the_ewc_penalty(tokenizer) -> None:
    torch.manual_seed(0)
    model = tiny_llama(tokenizer)
    callback = retain.ewc(strength=7.0, general=GENERAL, echo=None)
    _begin(callback, model, tokenizer)
    start = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    fisher = {weight.name: importance for weight, importance in zip(callback.method.weights,
                                                                   callback.method.importance, strict=True)}
    assert all(value.abs().sum() > 0 for value in fisher.values())

    class Scaler:  # accelerate's optimizer under fp16 carries the grad scaler
        def is_enabled(self) -> bool:
            return True

        def get_scale(self) -> float:
            return 8.0

    class Optimizer:
        scaler = Scaler()

    state = TrainerState()
    callback.on_step_begin(None, state, TrainerControl(), optimizer=None)
    for name, parameter in model.named_parameters():  # d/dw 7/2 F (w - w0)^2 = 7 F (w - w0)
        torch.testing.assert_close(parameter.grad, 7.0 * fisher[name] * (parameter.detach() - start[name]))
    expected = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    callback.on_step_begin(None, state, TrainerControl(), optimizer=Optimizer())  # added to what is there
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, 9.0 * expected[name])
    penalty = 3.5 * sum(float((fisher[name] * (parameter.detach() - start[name]).square()).sum())
                        for name, parameter in model.named_parameters())
    assert [step for step, _ in callback.penalties] == [0, 0]
    assert callback.penalties[0][1] == pytest.approx(penalty, rel=1e-5)


def test_the_penalties_hold_the_weights_near_the_start_in_sft_trainer(tokenizer, tmp_path) -> None:
    start = _start(tokenizer)
    free = _flat(_sft(tokenizer, tmp_path, optim="adamw_torch", lr=1e-2)) - start
    l2sp = retain.l2sp(strength=20.0)
    held = _flat(_sft(tokenizer, tmp_path, l2sp, optim="adamw_torch", lr=1e-2)) - start
    assert held.norm() < 0.5 * free.norm()
    # EWC holds the weights the general texts depend on: the Fisher-weighted distance.
    ewc = retain.ewc(strength=2000.0, general=GENERAL, echo=None)
    held_ewc = _flat(_sft(tokenizer, tmp_path, ewc, optim="adamw_torch", lr=1e-2)) - start
    fisher = torch.cat([importance.flatten() for importance in ewc.method.importance])
    assert (fisher * held_ewc.square()).sum() < 0.5 * (fisher * free.square()).sum()
    assert [step for step, _ in l2sp.penalties] == [0, 1, 2, 3] and l2sp.penalties[0][1] == 0.0
    assert all(value > 0 for _, value in l2sp.penalties[1:] + ewc.penalties[1:])


class PerMicroBatch(PenaltyCallback):
    """A broken helper: the penalty's gradient added at every micro-batch, not once per step."""

    def on_substep_end(self, args, state, control, optimizer=None, **kwargs) -> None:
        self.on_step_begin(args, state, control, optimizer=optimizer)


def test_accumulating_two_micro_batches_gives_the_weights_of_one_batch(tokenizer, tmp_path) -> None:
    whole = _flat(_sft(tokenizer, tmp_path, retain.l2sp(strength=5.0)))
    accumulated = _flat(_sft(tokenizer, tmp_path, retain.l2sp(strength=5.0), accumulation=2, batch=2))
    broken = PerMicroBatch(L2Sp, general_config(None, method="l2sp", settings={"strength": 5.0}))
    doubled = _flat(_sft(tokenizer, tmp_path, broken, accumulation=2, batch=2))
    moved = (whole - _start(tokenizer)).abs().max()
    assert (whole - accumulated).abs().max() < 1e-2 * moved  # float noise of the padding: about 1e-3
    assert (whole - doubled).abs().max() > 0.1 * moved  # what the test catches


def test_dpo_trainer_takes_the_penalty_too(tokenizer, tmp_path) -> None:
    preferences = datasets.Dataset.from_list([{"prompt": f"Q: What is {index}+{index}?\nA:",
                                               "chosen": f" {2 * index}", "rejected": f" {2 * index + 1}"}
                                              for index in range(8)])

    def train(callback) -> torch.Tensor:
        torch.manual_seed(0)
        model = tiny_llama(tokenizer)
        args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=3, per_device_train_batch_size=4,
                         learning_rate=5e-2, save_strategy="no", report_to="none", use_cpu=True, max_length=64,
                         disable_tqdm=True, seed=0)
        DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=preferences,
                   processing_class=tokenizer,
                   callbacks=[callback] if callback else []).train()
        return _flat(model)

    start = _start(tokenizer)
    callback = retain.l2sp(strength=20.0)
    assert (train(callback) - start).norm() < 0.5 * (train(None) - start).norm()
    assert len(callback.penalties) == 3


def test_settings_are_retain_trains_and_what_cannot_work_is_refused(tokenizer) -> None:
    assert retain.ewc(echo=None).method.settings.strength == 100.0  # method.ewc.strength's default
    assert retain.l2sp().method.settings.strength == 0.01
    with pytest.raises(ConfigError, match="method.l2sp.strength"):
        retain.l2sp(strength=-1.0)
    with pytest.raises(ConfigError, match="method.ewc.samples"):
        retain.ewc(samples=0)
    callback = retain.l2sp()
    model = tiny_llama(tokenizer)
    with pytest.raises(ConfigError, match="DeepSpeed and FSDP"):
        callback.on_train_begin(SimpleNamespace(fsdp="full_shard", deepspeed=None), TrainerState(), TrainerControl(),
                                model=model)
    with pytest.raises(ConfigError, match="tokenizer"):
        retain.ewc(general=GENERAL, echo=None).on_train_begin(
            TrainingArguments(output_dir="unused", use_cpu=True, report_to="none"), TrainerState(), TrainerControl(),
            model=model, processing_class=None)

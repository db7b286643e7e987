"""The pydantic models of a retain config, and helpers that walk them by dotted name."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from retain.config.guards import GuardsConfig
from retain.config.methods import MethodConfig
from retain.config.section import PathText, Section, also, invalid
from retain.data.perturb import PERTURBATIONS

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# Rule-of-thumb multipliers of the minimum training-set size (the audit's dataset_size):
# harder outputs (free generation, multi-turn chat) and specialised vocabularies (medical,
# legal) need more examples than a label or a general-domain answer.
TASK_MULTIPLIERS: dict[str, float] = {
    "classification": 1.0, "qa": 1.5, "generation": 2.0, "chat": 2.0,
}
DOMAIN_MULTIPLIERS: dict[str, float] = {
    "general": 1.0, "medical": 1.5, "legal": 1.5, "finance": 1.3, "code": 1.3,
}


class ModelConfig(Section):
    """The base model to fine-tune."""

    name_or_path: PathText = Field(
        "lab",
        validation_alias=also("name_or_path", "model_name_or_path"),
        description="Base model: `lab` for retain's built-in lab model, a Hugging Face Hub id, "
        "or a local directory.",
    )
    revision: str | None = Field(
        None, description="Hub branch, tag or commit to pin; null uses the default branch."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        validation_alias=also("dtype", "torch_dtype"),
        description="Dtype the weights are loaded in; `auto` picks one that suits the device.",
    )
    device: str = Field(
        "auto", description="Device to run on: `auto`, `cpu`, `cuda`, `cuda:N` or `mps`."
    )
    trust_remote_code: bool = Field(
        False,
        description="Run modelling code shipped with a Hub repository; enable only for "
        "repositories you trust.",
    )
    chat_template: PathText = Field(
        "auto",
        description="Chat template: `auto` uses the tokenizer's own if it has one, `none` "
        "uses none, anything else is a path to a Jinja file.",
    )
    pad_token: str = Field(
        "auto",
        description="Padding token for training batches: `auto` keeps the tokenizer's own and "
        "falls back to EOS (safe with the `completion` collator, which masks padding by "
        "position), `eos`, `unk`, or any token of the vocabulary.",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if not _DEVICE.fullmatch(device):
            raise invalid(
                f"unknown device '{device}'", "use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps"
            )
        return device


# --- data -----------------------------------------------------------------------------


class DataConfig(Section):
    """Where the training and evaluation examples come from, and how to read them."""

    train: PathText | None = Field(
        None,
        description="Training data: a JSONL, JSON (an array of rows), CSV or Parquet file, a "
        "`save_to_disk` directory, or `hf:NAME[:SPLIT]`, a dataset of the local Hugging Face datasets "
        "cache (never downloaded). Rows are prompt/response, OpenAI chat (`messages`), ShareGPT "
        "(`conversations`), Alpaca (`instruction`/`input`/`output`), TRL `prompt`/`completion` or plain "
        "`text`, recognised row by row (the same for eval, validation and ood).",
    )
    eval: PathText | None = Field(
        None, description="Held-out examples of the new task, to measure what fine-tuning gained."
    )
    validation: PathText | None = Field(
        None,
        description="Held-out examples scored during training: validation loss (early stopping) "
        "and task accuracy (which checkpoint is best).",
    )
    ood: PathText | None = Field(
        None,
        description="Out-of-distribution examples, to measure forgetting beyond the probe suites.",
    )
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "datasets"] = Field(
        "auto", description="File format; `auto` infers it from the file extension (a directory is "
        "`datasets`); `hf:` datasets ignore it."
    )
    prompt_field: str = Field(
        "prompt", description="Column holding the prompt in prompt/response data; the configured "
        "columns are tried before the other row formats."
    )
    response_field: str = Field(
        "response", description="Column holding the answer in prompt/response data."
    )
    messages_field: str = Field(
        "messages", description="Column holding the chat turns in conversational data (OpenAI "
        "`{role, content}` or ShareGPT `{from, value}` turns)."
    )
    train_turns: Literal["all", "last"] = Field(
        "all",
        description="Assistant turns of a multi-turn chat row that carry a loss: `all` (every "
        "assistant turn, each with its end-of-turn token) or `last` (the final answer only). "
        "Evaluation and the audit score the last assistant turn either way.",
    )
    max_length: int = Field(
        512, gt=0, validation_alias=also("max_length", "max_seq_length"),
        description="Maximum tokens per example, prompt and answer together."
    )
    size: int | None = Field(
        None, gt=0, description="Use only the first N training rows; null uses them all."
    )


DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
"""The preference losses of TRL's ``DPOTrainer`` (``DPOConfig.loss_type``) retain passes on."""


class DpoConfig(Section):
    """Direct preference optimisation (Rafailov et al., 2023, https://arxiv.org/abs/2305.18290)
    with TRL's ``DPOTrainer``; read when ``train.objective`` is `dpo`. The defaults are TRL's."""

    beta: float = Field(
        0.1, gt=0,
        description="How far the policy may move from the reference model (the model as training "
        "starts): a higher beta keeps it closer. TRL's `DPOConfig.beta`; for `loss_type: ipo`, the "
        "paper's tau.",
    )
    loss_type: Literal[DPO_LOSSES] = Field(  # type: ignore[valid-type]
        "sigmoid",
        description="The preference loss, as TRL names it: `sigmoid` (the DPO paper's), `ipo`, "
        "`hinge`, `robust`, ... (TRL's `DPOConfig.loss_type`; its `sft` term is not offered: "
        "train SFT rows with `train.objective: sft`).",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5,
        description="The probability that a pair's preference is flipped, for `loss_type: robust` "
        "(the paper suggests 0.1) and `exo_pair` (which needs it above 0, e.g. 1e-3).",
    )
    disable_dropout: bool = Field(
        True,
        description="Turn dropout off in the policy and the reference (TRL's default), so the two "
        "compute the same log-probabilities at the start.",
    )

    @model_validator(mode="after")
    def _exo_needs_smoothing(self) -> DpoConfig:
        if self.loss_type == "exo_pair" and self.label_smoothing == 0:
            raise invalid("loss_type exo_pair needs label_smoothing above 0", "set train.dpo.label_smoothing, "
                          "e.g. 1e-3 (the EXO paper's)", field="label_smoothing")
        return self


class TrainConfig(Section):
    """Optimisation settings."""

    objective: Literal["sft", "dpo"] = Field(
        "sft",
        description="What training optimises: `sft` (supervised fine-tuning: the loss of each "
        "row's answer) or `dpo` (direct preference optimisation with TRL's DPOTrainer on "
        "prompt/chosen/rejected rows, settings in train.dpo; the reference is the model as "
        "training starts: under LoRA the base with the adapters off, else a frozen copy). "
        "See docs/TRAINING.md, \"Preference tuning (DPO)\".",
    )
    dpo: DpoConfig = Field(default_factory=DpoConfig, description="DPO's settings (train.objective: dpo).")

    lr: float = Field(
        1e-4, gt=0, validation_alias=also("lr", "learning_rate"), description="Peak learning rate; 1e-4 is the usual starting point for LoRA."
    )
    epochs: float = Field(
        2.0,
        validation_alias=also("epochs", "num_train_epochs"),
        gt=0,
        description="Passes over the training data (fractions allowed); ignored when "
        "max_steps is set.",
    )
    max_steps: int | None = Field(
        None, gt=0, description="Total optimizer steps; overrides epochs when set."
    )
    batch_size: int = Field(8, gt=0, validation_alias=also("batch_size", "per_device_train_batch_size"),
                            description="Examples per device in each forward pass.")
    grad_accum: int = Field(
        1,
        validation_alias=also("grad_accum", "gradient_accumulation_steps"),
        gt=0,
        description="Forward passes per optimizer step; effective batch = batch_size x grad_accum.",
    )
    warmup_ratio: float = Field(
        0.03,
        ge=0,
        lt=1,
        description="Fraction of all steps spent ramping the learning rate up from 0.",
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", validation_alias=also("lr_scheduler", "lr_scheduler_type"), description="Learning-rate schedule after warmup."
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm to this value; null disables clipping."
    )
    weight_decay: float = Field(0.0, ge=0, description="Weight decay applied by the optimizer.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Mixed-precision mode; `auto` picks one from the device and model.dtype.",
    )
    collator: Literal["completion", "language_modeling"] = Field(
        "completion",
        description="How batches get their labels: `completion` (retain's: padding masked by "
        "position, prompts masked per `loss_on`) or `language_modeling` (transformers' "
        "DataCollatorForLanguageModeling: every token but those equal to the pad id; with "
        "pad = EOS that masks the EOS too, which `retain doctor` flags).",
    )
    loss_on: Literal["response", "all"] = Field(
        "response",
        description="Tokens the loss is computed on: `response` (answer tokens only: every assistant "
        "turn of a chat row per `data.train_turns`, the whole text of a plain-text row) or `all`.",
    )
    seed: int = Field(
        0, ge=0, lt=2**32,  # numpy's seeds end at 2**32 - 1
        description="Random seed for data order, initialisation and sampling."
    )
    save_every: int | None = Field(
        None,
        validation_alias=also("save_every", "save_steps"),
        gt=0,
        description="Save a checkpoint every N optimizer steps (what `--resume` continues "
        "from); null saves at every guard check.",
    )
    save_total_limit: int = Field(
        2, gt=0, description="Checkpoints kept; older ones are deleted as new ones complete."
    )
    report_to: list[str] = Field(
        default_factory=list,
        description="Trackers that also receive the trainer's and retain's metrics, as "
        "transformers names them: tensorboard, mlflow, wandb, ...; empty for none.",
    )
    group_by_length: bool = Field(
        True,
        description="Batch rows of similar length together, so that little padding is computed.",
    )
    trainer_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Further `transformers.TrainingArguments` for what retain does not model "
        "(optim, gradient_checkpointing, torch_compile, deepspeed, fsdp, fsdp_config, "
        "dataloader_num_workers, ...), passed as given, e.g. `--set "
        "train.trainer_args.optim=adafactor`. One that retain sets itself is refused with the "
        "setting to use (learning_rate: train.lr).",
    )

    @model_validator(mode="after")
    def _dpo_batches_are_trl_s(self) -> TrainConfig:
        if self.objective != "dpo":
            return self
        for name, value, default in (("collator", self.collator, "completion"), ("loss_on", self.loss_on, "response")):
            if value != default:
                raise invalid(f"train.{name}: {value} does not apply under train.objective: dpo, whose batches are "
                              "TRL's (the loss is on the chosen and rejected answers only, padding masked by position)",
                              f"remove train.{name} (or set it to {default})", field=name)
        return self


class ProbesConfig(Section):
    """What general ability is measured with, to detect forgetting."""

    suites: list[PathText] | None = Field(
        None,
        min_length=1,
        description="Probe suites: built-in `lab` or `general`, `lmeval:TASK`, or paths to suite "
        "files (see docs/EVALUATION.md); null means `lab` for the lab model and its fine-tunes, "
        "`general` for any other model.",
    )
    methods: list[Literal["generation", "loglik"]] = Field(
        default_factory=lambda: ["generation", "loglik"],
        min_length=1,
        description="How probes are scored: `generation` (what the model says, judged by each "
        "item's checker) and/or `loglik` (ranking the options by log-likelihood).",
    )
    max_new_tokens: int = Field(
        24, gt=0, description="Token cap for generated probe answers; a tight cap cuts answers."
    )
    per_category: int | None = Field(
        None,
        gt=0,
        description="Score only the first N items of each category of every suite (quick checks "
        "and faster guards; fewer items give wider intervals); null scores them all. The cut "
        "suite's version says so, so its results are compared only with the same cut. With "
        "probes.calibrate, the first N known items of each category.",
    )
    calibrate: bool = Field(
        False,
        description="Measure forgetting on what the base model knew: keep, per category, the items "
        "the base answers right by generation, also when the prompt is paraphrased; categories "
        "with fewer than probes.calibrate_min_items such items are reported as not measurable "
        "and left out of the checks (see docs/EVALUATION.md).",
    )
    calibrate_min_items: int = Field(
        5, gt=0, description="Known items a category needs to be measured under probes.calibrate."
    )

    @model_validator(mode="after")
    def _calibrated_by_generation(self) -> ProbesConfig:
        if self.calibrate and "generation" not in self.methods:
            raise invalid("probes.calibrate keeps the items the base answers right by generation, which "
                          "probes.methods leaves out", "add generation to probes.methods, or set probes.calibrate: "
                          "false", field="calibrate")
        return self


class AuditConfig(Section):
    """Settings of the data audit (`retain audit`, and `retain train` before it trains)."""

    task: str = Field(
        "qa",
        description="Task kind for the size rule: classification, qa, generation or chat (or a "
        "name added in task_multipliers).",
    )
    domain: str = Field(
        "general",
        description="Domain for the size rule: general, medical, legal, finance or code (or a "
        "name added in domain_multipliers).",
    )
    min_rows: int = Field(
        5000,
        gt=0,
        description="Rows the size rule asks for a general classification task, before the "
        "task and domain multipliers (the articles' rule of thumb).",
    )
    task_multipliers: dict[str, float] = Field(
        default_factory=dict,
        description="Task multipliers added to or replacing the built-in ones, e.g. "
        "{ranking: 1.25}.",
    )
    domain_multipliers: dict[str, float] = Field(
        default_factory=dict,
        description="Domain multipliers added to or replacing the built-in ones, e.g. {biology: 1.4}.",
    )
    allow_small_data: bool = Field(
        False, description="Too little data is a warning instead of a blocker."
    )
    near_duplicate_threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Jaccard similarity (character 5-grams) at which two rows, or an eval row "
        "and a training row, count as near duplicates.",
    )
    conflict_threshold: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Jaccard similarity at which two prompts count as the same question when "
        "looking for conflicting answers.",
    )

    @model_validator(mode="after")
    def _known_task_and_domain(self) -> AuditConfig:
        for kind, name, table, extra in (
            ("task", self.task, TASK_MULTIPLIERS, self.task_multipliers),
            ("domain", self.domain, DOMAIN_MULTIPLIERS, self.domain_multipliers),
        ):
            if name not in table and name not in extra:
                raise invalid(
                    f"unknown {kind} '{name}'",
                    f"use one of {', '.join(table)}, or add it in audit.{kind}_multipliers",
                    field=kind,
                )
        return self


class EvalConfig(Section):
    """Task evaluation, drift and the few-shot baseline."""

    reference: PathText | None = Field(
        None,
        description="Reference text file for drift (KL to base, perplexity); null uses the "
        "lab's for the lab model and retain's built-in general text otherwise.",
    )
    perturbations: list[str] = Field(
        default_factory=lambda: [
            "lowercase", "uppercase", "extra_whitespace", "strip_newlines", "template_wording",
            "option_order",
        ],
        description="Input perturbations that measure brittleness on the eval set.",
    )
    perturb_limit: int = Field(
        200, gt=0, description="Eval examples perturbed per perturbation (the first N)."
    )
    max_new_tokens: int = Field(32, gt=0, description="Token cap for generated task answers.")
    batch_size: int = Field(32, gt=0, description="Prompts per forward pass when evaluating.")
    generation_batch_size: int = Field(
        128,
        gt=0,
        description="Prompts per batch when generating probe and task answers (held-out and "
        "validation rows, self_augment's answers): each decoding step reads every weight for one "
        "token per row, so wide batches pay (docs/BENCHMARKS.md times the general suite on SmolLM2 "
        "at this default).",
    )
    shots: list[int] = Field(
        default_factory=lambda: [0, 5],
        min_length=1,
        description="`retain baseline`: numbers of training examples shown before each question.",
    )
    target: float | None = Field(
        None,
        gt=0,
        le=1,
        description="`retain baseline`: the task accuracy fine-tuning is meant to reach; "
        "null reports the few-shot accuracy without a verdict.",
    )
    margin: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="`retain baseline`: few-shot accuracy within this of the target means "
        "prompting may be enough.",
    )

    @field_validator("perturbations")
    @classmethod
    def _known_perturbations(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in PERTURBATIONS]
        if unknown:
            raise invalid(
                f"unknown perturbation '{unknown[0]}'", f"use any of {', '.join(PERTURBATIONS)}"
            )
        return names

    @field_validator("shots")
    @classmethod
    def _shots_not_negative(cls, shots: list[int]) -> list[int]:
        if any(shot < 0 for shot in shots):
            raise invalid("shots cannot be negative", "use 0 for zero-shot, e.g. [0, 5]")
        return shots


class OutputConfig(Section):
    """Where run directories go."""

    dir: PathText = Field("runs", description="Folder that holds one directory per run.")
    name: str | None = Field(
        None,
        description="Run name (letters, digits, `.`, `_`, `-`); "
        "null means `<command>-<UTC timestamp>`.",
    )


class RetainConfig(Section):
    """The whole configuration of a retain run."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    data: DataConfig = Field(
        default_factory=DataConfig, description="Training and evaluation data."
    )
    method: MethodConfig = Field(
        default_factory=MethodConfig, description="Forgetting mitigations."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    guards: GuardsConfig = Field(
        default_factory=GuardsConfig, description="Checks during training."
    )
    probes: ProbesConfig = Field(
        default_factory=ProbesConfig, description="General-ability probes."
    )
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="Task evaluation, drift and the few-shot baseline."
    )
    audit: AuditConfig = Field(default_factory=AuditConfig, description="The data audit.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Run directories.")



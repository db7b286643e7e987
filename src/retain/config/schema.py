"""The pydantic models of a retain config, and helpers that walk them by dotted name."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from retain.data.perturb import PERTURBATIONS

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_ATTENTION_AND_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Every method retain ships, in the order their hooks run (retain.methods registers one
# plugin per name). The first three decide which weights train and exclude each other.
BASE_METHODS = ("full", "lora", "qlora")
# token_forget comes before the rehearsal methods: it marks the task rows' tokens, and the
# general rows replay and self_augment blend in afterwards are trained on whole.
METHODS = (*BASE_METHODS, "freeze", "llrd", "token_forget", "replay", "self_augment", "ewc", "l2sp",
           "fapm")
# Rule-of-thumb multipliers of the minimum training-set size (the audit's dataset_size):
# harder outputs (free generation, multi-turn chat) and specialised vocabularies (medical,
# legal) need more examples than a label or a general-domain answer.
TASK_MULTIPLIERS: dict[str, float] = {
    "classification": 1.0, "qa": 1.5, "generation": 2.0, "chat": 2.0,
}
DOMAIN_MULTIPLIERS: dict[str, float] = {
    "general": 1.0, "medical": 1.5, "legal": 1.5, "finance": 1.3, "code": 1.3,
}
_SMOKE_PROMPTS = ("Hello, how are you?", "What is 2+2?", "Is the sky blue? Answer yes or no.")


def _invalid(message: str, fix: str, field: str | None = None) -> PydanticCustomError:
    """Returns a validation error that :func:`load_config` shows with its own fix.

    ``field`` names the setting within the section a model validator checks (pydantic
    places such errors on the section), so the error points at its line.
    """
    context = {"message": message, "fix": fix}
    if field is not None:
        context["field"] = field
    return PydanticCustomError("retain", "{message}", context)


class _Section(BaseModel):
    """Base of every config section: unknown keys and bad assignments are errors."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        # A revision like 1234567 or a run name like 2024 is text, not a number.
        coerce_numbers_to_str=True,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, data: Any) -> Any:
        # "train:" with nothing under it parses as None; read it as "all defaults".
        return {} if data is None else data


# --- model ----------------------------------------------------------------------------


class ModelConfig(_Section):
    """The base model to fine-tune."""

    name_or_path: str = Field(
        "lab",
        description="Base model: `lab` for retain's built-in lab model, a Hugging Face Hub id, "
        "or a local directory.",
    )
    revision: str | None = Field(
        None, description="Hub branch, tag or commit to pin; null uses the default branch."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
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
    chat_template: str = Field(
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
            raise _invalid(
                f"unknown device '{device}'", "use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps"
            )
        return device


# --- data -----------------------------------------------------------------------------


class DataConfig(_Section):
    """Where the training and evaluation examples come from, and how to read them."""

    train: str | None = Field(
        None,
        description="Training data: a JSONL, CSV or Parquet file, or a dataset id/directory with "
        "`format: datasets`.",
    )
    eval: str | None = Field(
        None, description="Held-out examples of the new task, to measure what fine-tuning gained."
    )
    validation: str | None = Field(
        None,
        description="Held-out examples scored during training: validation loss (early stopping) "
        "and task accuracy (which checkpoint is best).",
    )
    ood: str | None = Field(
        None,
        description="Out-of-distribution examples, to measure forgetting beyond the probe suites.",
    )
    format: Literal["auto", "jsonl", "csv", "parquet", "datasets"] = Field(
        "auto", description="Data format; `auto` infers it from the file extension."
    )
    prompt_field: str = Field(
        "prompt", description="Column holding the prompt in prompt/response data."
    )
    response_field: str = Field(
        "response", description="Column holding the answer in prompt/response data."
    )
    messages_field: str = Field(
        "messages", description="Column holding the chat turns in conversational data."
    )
    max_length: int = Field(
        512, gt=0, description="Maximum tokens per example, prompt and answer together."
    )
    size: int | None = Field(
        None, gt=0, description="Use only the first N training rows; null uses them all."
    )


# --- method ---------------------------------------------------------------------------


class LoraConfig(_Section):
    """LoRA adapter settings (Hu et al., 2021, https://arxiv.org/abs/2106.09685)."""

    r: int = Field(
        16,
        gt=0,
        description="LoRA rank; r=16 with alpha=32 is the recipe of the fine-tuning guides "
        "retain grew from.",
    )
    alpha: float = Field(
        32.0, gt=0, description="LoRA alpha; updates are scaled by alpha / r, i.e. 2 by default."
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout applied to the LoRA input.")
    lr_ratio: float = Field(
        1.0,
        gt=0,
        description="LoRA+ (Hayou et al., 2024, https://arxiv.org/abs/2402.12354): the B matrices "
        "train at train.lr times this, the A matrices at train.lr; 1 is plain LoRA, the paper "
        "suggests 16.",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(_ATTENTION_AND_MLP),
        min_length=1,
        description="Modules to adapt; every attention and MLP projection by default, as QLoRA "
        "(Dettmers et al., 2023) found necessary to match full fine-tuning.",
    )


class QLoraConfig(_Section):
    """4-bit quantised base weights under LoRA adapters (Dettmers et al., 2023,
    https://arxiv.org/abs/2305.14314); the adapters are ``method.lora``'s."""

    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type; nf4 (NormalFloat) is the paper's."
    )
    double_quant: bool = Field(
        True, description="Quantise the quantisation constants too (the paper's double quantisation)."
    )
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="Dtype the 4-bit weights are dequantised to for each matmul."
    )


class FreezeConfig(_Section):
    """Freezes the bottom of the network (e.g. Lee et al., 2019, https://arxiv.org/abs/1911.03090)."""

    layers: int | None = Field(
        None, ge=0, description="Freeze the bottom N transformer layers; overrides `fraction`."
    )
    fraction: float = Field(
        0.5, ge=0, le=1, description="Share of the transformer layers, from the bottom, to freeze."
    )
    embeddings: bool = Field(
        False,
        description="Freeze the input embeddings as well (a tied output head shares their weight "
        "and is frozen with them).",
    )
    head: bool = Field(
        False,
        description="Freeze the output head as well (tied to the input embeddings, it freezes them too).",
    )


class LlrdConfig(_Section):
    """Layer-wise learning-rate decay (Howard & Ruder, 2018, https://arxiv.org/abs/1801.06146;
    Clark et al., 2020, https://arxiv.org/abs/2003.10555)."""

    factor: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Each layer's learning rate is the one above it times this factor; the top "
        "layer and the head train at train.lr, the embeddings at lr x factor^layers.",
    )


class GeneralDataConfig(_Section):
    """General (non-task) data for replay, EWC's Fisher and self-augmentation prompts."""

    source: str | None = Field(
        None,
        description="`lab` (the lab world's pretraining corpus less every document that "
        "states a probed fact), a file (.txt one text per "
        "line; .jsonl/.csv/.parquet with a text or prompt/response columns), or "
        "`hf:NAME[:SPLIT]` for a `datasets` dataset; null uses the lab corpus for the lab "
        "model and is an error otherwise.",
    )
    text_field: str = Field("text", description="Column holding the text, for tables and datasets.")
    limit: int = Field(
        20000, gt=0, description="Texts read at most (the first N), so a large corpus stays cheap."
    )


class ReplayConfig(_Section):
    """Experience replay: general data blended into the task data (Rolnick et al., 2019,
    https://arxiv.org/abs/1811.11682; for LLMs, Scialom et al., 2022,
    https://arxiv.org/abs/2205.12393)."""

    ratio: float = Field(
        0.2, gt=0, lt=1, description="Share of the blended training set that is general data."
    )


class SelfAugmentConfig(_Section):
    """Self-synthesized rehearsal: the base model answers general prompts before training and
    its healthy answers are mixed in (Huang et al., 2024, https://arxiv.org/abs/2403.01244)."""

    ratio: float = Field(
        0.2, gt=0, lt=1, description="Share of the blended training set that is self-generated."
    )
    max_new_tokens: int = Field(32, gt=0, description="Tokens the base model may generate per prompt.")


class EwcConfig(_Section):
    """Elastic weight consolidation (Kirkpatrick et al., 2017, https://arxiv.org/abs/1612.00796)."""

    strength: float = Field(
        100.0,
        ge=0,
        description="lambda: the penalty is lambda/2 * sum(F * (w - w_base)^2), F the diagonal "
        "Fisher of the base model on general data.",
    )
    samples: int = Field(256, gt=0, description="General texts the Fisher is estimated on.")


class L2spConfig(_Section):
    """L2-SP: an L2 penalty towards the starting weights (Li et al., 2018,
    https://arxiv.org/abs/1802.01483)."""

    strength: float = Field(
        0.01, ge=0, description="alpha: the penalty is alpha/2 * sum((w - w_base)^2)."
    )


class FapmConfig(_Section):
    """Forgetting-aware pruning of the task vector after training (Huang et al., 2025,
    https://arxiv.org/abs/2509.08255)."""

    keep: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Share of each weight matrix's task-vector entries kept (the rest reset to "
        "the base weights); 0.1 is the paper's 90% sparsity.",
    )


class TokenForgetConfig(_Section):
    """Token-level forgetting (Ghahrizjani et al., 2025, https://arxiv.org/abs/2508.04329)."""

    positive_share: float = Field(
        0.7,
        gt=0,
        lt=1,
        description="rho: share of answer tokens, by influence, trained as positive; the rest "
        "are negative and pushed down.",
    )
    reference_share: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share of the training rows each of the two reference models is briefly "
        "fine-tuned on to score each token's influence (loss under the base minus loss under a "
        "reference that did not see the row); every row is still trained on.",
    )
    reference_data: str | None = Field(
        None,
        description="A file of other task rows (same format as data.train) to fine-tune one "
        "reference model on instead, as the paper's code does; null splits the training rows.",
    )
    reference_steps: int = Field(50, gt=0, description="Optimizer steps of the reference fine-tuning.")
    t_max: float = Field(0.25, ge=0, description="Weight of the negative loss at the end of training.")
    t_min: float = Field(1e-5, ge=0, description="Weight of the negative loss at the start.")


class MethodConfig(_Section):
    """Which forgetting mitigations to use, and their settings.

    ``method: lora`` and ``method: [lora, replay]`` are shorthand for ``method: {use: [...]}``.
    """

    use: list[str] = Field(
        default_factory=lambda: ["lora"],
        min_length=1,
        description="Methods to combine, by name; `method: lora` is shorthand for "
        "`method: {use: [lora]}`. One of full, lora, qlora decides which weights train "
        "(lora when none is named).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapter settings.")
    qlora: QLoraConfig = Field(default_factory=QLoraConfig, description="QLoRA quantisation.")
    freeze: FreezeConfig = Field(default_factory=FreezeConfig, description="Freezing the bottom layers.")
    llrd: LlrdConfig = Field(default_factory=LlrdConfig, description="Layer-wise learning-rate decay.")
    general: GeneralDataConfig = Field(
        default_factory=GeneralDataConfig, description="General data for replay, EWC and self-augmentation."
    )
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="Replay of general data.")
    self_augment: SelfAugmentConfig = Field(
        default_factory=SelfAugmentConfig, description="Self-synthesized rehearsal."
    )
    ewc: EwcConfig = Field(default_factory=EwcConfig, description="Elastic weight consolidation.")
    l2sp: L2spConfig = Field(default_factory=L2spConfig, description="L2-SP penalty.")
    fapm: FapmConfig = Field(default_factory=FapmConfig, description="Forgetting-aware pruning.")
    token_forget: TokenForgetConfig = Field(
        default_factory=TokenForgetConfig, description="Token-level forgetting."
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthand(cls, data: Any) -> Any:
        return expand_method_shorthand(data)

    @field_validator("use", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, use: Any) -> Any:
        return [use] if isinstance(use, str) else use

    @field_validator("use")
    @classmethod
    def _known_methods(cls, use: list[str]) -> list[str]:
        unknown = [name for name in use if name not in METHODS]
        if unknown:
            raise _invalid(f"unknown method '{unknown[0]}'", f"use any of {', '.join(METHODS)}")
        bases = list(dict.fromkeys(name for name in use if name in BASE_METHODS))
        if len(bases) > 1:
            raise _invalid(f"methods '{bases[0]}' and '{bases[1]}' exclude each other",
                           "name one of full (every weight trains), lora or qlora (adapters train)")
        return use

    @field_validator("use")
    @classmethod
    def _no_duplicates(cls, use: list[str]) -> list[str]:
        repeated = sorted({name for name in use if use.count(name) > 1})
        if repeated:
            raise _invalid(
                f"method '{repeated[0]}' is listed more than once", "list each method once"
            )
        return use

    @property
    def base(self) -> str:
        """The method that decides which weights train: full, lora or qlora (lora by default)."""
        return next((name for name in self.use if name in BASE_METHODS), "lora")

    @property
    def adapters(self) -> bool:
        """True when LoRA adapters train (lora or qlora)."""
        return self.base != "full"


def expand_method_shorthand(data: Any) -> Any:
    """Returns ``{"use": data}`` for the ``method: lora`` / ``method: [a, b]`` shorthand."""
    return {"use": data} if isinstance(data, (str, list)) else data


# --- train ----------------------------------------------------------------------------


class TrainConfig(_Section):
    """Optimisation settings."""

    lr: float = Field(
        1e-4, gt=0, description="Peak learning rate; 1e-4 is the usual starting point for LoRA."
    )
    epochs: float = Field(
        2.0,
        gt=0,
        description="Passes over the training data (fractions allowed); ignored when "
        "max_steps is set.",
    )
    max_steps: int | None = Field(
        None, gt=0, description="Total optimizer steps; overrides epochs when set."
    )
    batch_size: int = Field(8, gt=0, description="Examples per device in each forward pass.")
    grad_accum: int = Field(
        1,
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
        "cosine", description="Learning-rate schedule after warmup."
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
        description="Tokens the loss is computed on: `response` (answer tokens only) or `all`.",
    )
    seed: int = Field(
        0, ge=0, description="Random seed for data order, initialisation and sampling."
    )
    save_every: int | None = Field(
        None,
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


# --- guards ---------------------------------------------------------------------------


class ForgettingGuardConfig(_Section):
    """Stops forgetting while it happens, by watching the probe suites."""

    threshold: float = Field(
        0.03,
        gt=0,
        lt=1,
        description="Relative drop in general probe accuracy that triggers the action; 3% is the "
        "tolerance of the fine-tuning guides retain grew from.",
    )
    action: Literal["warn", "stop", "restore_best"] = Field(
        "restore_best",
        description="On crossing the threshold: `warn`, `stop`, or stop and `restore_best` "
        "(load the best checkpoint within the threshold back and save it as the final model).",
    )
    method: Literal["generation", "loglik"] = Field(
        "generation",
        description="Probe accuracy the guard watches: by `generation` (what the model says) or "
        "by `loglik` ranking.",
    )
    patience: int = Field(
        2,
        ge=0,
        description="Early-stopping patience: checks over the threshold that set no new low of "
        "the current stretch over it before the action (0 acts at the first check over it). "
        "Forgetting that is falling back (the 'stability gap' of rehearsal) is waited out; "
        "forgetting that stays or grows is not. The last check of a run acts at once, and "
        "restore_best still picks the best check within the threshold.",
    )
    every_steps: int | None = Field(
        None, gt=0, description="Check every N steps; null follows guards.every_steps."
    )


class SmokeGuardConfig(_Section):
    """Catches a model whose generations broke (empty, whitespace, echo, loop)."""

    prompts: list[str] = Field(
        default_factory=lambda: list(_SMOKE_PROMPTS),
        min_length=1,
        description="Prompts the model answers at each check (the lab world teaches these three "
        "too, so the lab model answers them).",
    )
    task_prompts: int = Field(
        3,
        ge=0,
        description="Prompts of the task itself (the first rows of data.validation, else "
        "data.train) added to the smoke test and judged as their own group: a pipeline that "
        "silences the task can leave general prompts untouched.",
    )
    max_new_tokens: int = Field(32, gt=0, description="Tokens generated per smoke prompt.")
    fail_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Share of broken answers, among the general or among the task prompts (and "
        "more than the base model had), that triggers the action. The default triggers on one "
        "newly broken answer among the three default prompts of a group.",
    )
    action: Literal["warn", "stop"] = Field(
        "stop", description="What to do when generations look broken."
    )
    every_steps: int | None = Field(
        None, gt=0, description="Check every N steps; null follows guards.every_steps."
    )


class DriftGuardConfig(_Section):
    """Watches how far the model's next-token distribution moved on general reference text."""

    max_kl: float | None = Field(
        None,
        gt=0,
        description="Mean KL(base || model) per token, in nats, that triggers the action; null "
        "records drift without acting.",
    )
    max_perplexity_ratio: float | None = Field(
        None,
        gt=1,
        description="Reference-text perplexity over the base model's that triggers the action; "
        "null records it without acting.",
    )
    action: Literal["warn", "stop", "restore_best"] = Field(
        "warn", description="On crossing a threshold: `warn`, `stop` or `restore_best`."
    )
    every_steps: int | None = Field(
        None, gt=0, description="Check every N steps; null follows guards.every_steps."
    )


class OverfittingGuardConfig(_Section):
    """Flags memorising: a tiny training loss, or validation loss rising while training loss falls."""

    min_train_loss: float | None = Field(
        0.2,
        ge=0,
        description="Training loss below this warns of overfitting; null disables the check.",
    )
    patience: int | None = Field(
        3,
        gt=0,
        description="Stop after validation loss rose at this many checks in a row while training "
        "loss fell (early stopping; needs data.validation); null disables it.",
    )
    action: Literal["warn", "stop", "restore_best"] = Field(
        "stop", description="What rising validation loss does."
    )


class LossGuardConfig(_Section):
    """Loss health: a NaN or infinite loss stops at once; a loss that stays high warns."""

    max_loss_after_warmup: float | None = Field(
        2.0,
        gt=0,
        description="Training loss still above this after warmup warns; null disables the check.",
    )


class GuardsConfig(_Section):
    """Checks that run during training, each logged with its numbers and acting as configured."""

    enabled: bool = Field(
        True, description="Run the guards; false trains blind (for comparisons only)."
    )
    every_steps: int | None = Field(
        None,
        gt=0,
        description="Run the checks every N optimizer steps (and at the end of each epoch); "
        "null spreads checks_per_epoch checks over each epoch.",
    )
    checks_per_epoch: int = Field(
        4, gt=0, description="Checks per epoch when every_steps is null."
    )
    forgetting: ForgettingGuardConfig = Field(
        default_factory=ForgettingGuardConfig, description="Forgetting guard."
    )
    smoke: SmokeGuardConfig = Field(
        default_factory=SmokeGuardConfig, description="Generation smoke test."
    )
    drift: DriftGuardConfig = Field(
        default_factory=DriftGuardConfig, description="Drift from the base model."
    )
    overfitting: OverfittingGuardConfig = Field(
        default_factory=OverfittingGuardConfig, description="Overfitting and early stopping."
    )
    loss: LossGuardConfig = Field(
        default_factory=LossGuardConfig, description="Loss health."
    )


# --- probes, output, top level --------------------------------------------------------


class ProbesConfig(_Section):
    """What general ability is measured with, to detect forgetting."""

    suites: list[str] | None = Field(
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


class AuditConfig(_Section):
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
                raise _invalid(
                    f"unknown {kind} '{name}'",
                    f"use one of {', '.join(table)}, or add it in audit.{kind}_multipliers",
                    field=kind,
                )
        return self


class EvalConfig(_Section):
    """Task evaluation, drift and the few-shot baseline."""

    reference: str | None = Field(
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
            raise _invalid(
                f"unknown perturbation '{unknown[0]}'", f"use any of {', '.join(PERTURBATIONS)}"
            )
        return names

    @field_validator("shots")
    @classmethod
    def _shots_not_negative(cls, shots: list[int]) -> list[int]:
        if any(shot < 0 for shot in shots):
            raise _invalid("shots cannot be negative", "use 0 for zero-shot, e.g. [0, 5]")
        return shots


class OutputConfig(_Section):
    """Where run directories go."""

    dir: str = Field("runs", description="Folder that holds one directory per run.")
    name: str | None = Field(
        None,
        description="Run name (letters, digits, `.`, `_`, `-`); "
        "null means `<command>-<UTC timestamp>`.",
    )


class RetainConfig(_Section):
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


# --- walking the models ---------------------------------------------------------------


def section_model(annotation: Any) -> type[BaseModel] | None:
    """Returns the model class if ``annotation`` is a config section, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def walk(model: type[BaseModel] = RetainConfig, prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """Returns ``(dotted_name, field)`` for every field, sections before their fields."""
    found: list[tuple[str, FieldInfo]] = []
    for name, field in model.model_fields.items():
        dotted = prefix + name
        found.append((dotted, field))
        sub = section_model(field.annotation)
        if sub is not None:
            found.extend(walk(sub, dotted + "."))
    return found


def dotted_fields() -> list[str]:
    """Returns every valid leaf setting as a dotted name, e.g. ``train.lr``, in file order."""
    return [name for name, field in walk() if section_model(field.annotation) is None]


def valid_paths() -> list[str]:
    """Returns every name an override may set: sections and leaves."""
    return [name for name, _ in walk()]


def model_at(parts: Sequence[str]) -> type[BaseModel] | None:
    """Returns the section model at ``parts`` (``()`` is the top level), or None."""
    model: type[BaseModel] | None = RetainConfig
    for part in parts:
        field = model.model_fields.get(part) if model else None
        model = section_model(field.annotation) if field else None
    return model


def field_at(parts: Sequence[str]) -> FieldInfo | None:
    """Returns the field at dotted ``parts``, or None if there is no such field."""
    if not parts:
        return None
    model = model_at(parts[:-1])
    return model.model_fields.get(parts[-1]) if model else None


# --- field facts ----------------------------------------------------------------------


# Numeric constraints as pydantic names them: (words for errors, symbol for the reference).
BOUNDS = {
    "gt": ("greater than", ">"),
    "ge": ("at least", ">="),
    "lt": ("less than", "<"),
    "le": ("at most", "<="),
}


def bounds(field: FieldInfo) -> list[tuple[str, Any]]:
    """Returns the field's numeric bounds as ``(attr, value)``, e.g. ``[("gt", 0)]``."""
    found = []
    for item in field.metadata:
        for attr in BOUNDS:
            if getattr(item, attr, None) is not None:
                found.append((attr, getattr(item, attr)))
    return found


def choices(field: FieldInfo) -> list[str]:
    """Returns the allowed values of a Literal field, as text."""
    return [str(arg) for arg in get_args(field.annotation)]


def default(field: FieldInfo) -> Any:
    """Returns the field's default value, calling its factory if it has one."""
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default

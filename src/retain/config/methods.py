"""The method section: which mitigations a run combines, and each one's settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from retain.config.section import PathText, Section, also, invalid

_ATTENTION_AND_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# The methods retain ships, in the order their hooks run. The first three decide which
# weights train and exclude each other. token_forget comes before the rehearsal methods: it
# marks the task rows' tokens, and the general rows replay and self_augment blend in
# afterwards are trained on whole. A method added in a file of its own under
# retain/methods/ joins this order when it registers (retain.config.registry).
_BASE = ("full", "lora", "qlora")
_ORDER: list[str] = [*_BASE, "freeze", "llrd", "token_forget", "replay", "self_augment", "ewc", "l2sp", "fapm"]
_CHOOSES_WEIGHTS: set[str] = set(_BASE)


def method_names() -> tuple[str, ...]:
    """Returns every known method's name, in the order their hooks run."""
    return tuple(_ORDER)


def base_methods() -> tuple[str, ...]:
    """Returns the methods that decide which weights train (full, lora, qlora), in order."""
    return tuple(name for name in _ORDER if name in _CHOOSES_WEIGHTS)


def add_method_name(name: str, *, after: str | None = None, chooses_weights: bool = False) -> None:
    """Puts ``name`` in the hook order: right after ``after``, or last when None.

    Raises:
        ValueError: If ``name`` is already known or ``after`` is not.
    """
    if name in _ORDER:
        raise ValueError(f"method {name!r} is already known")
    if after is not None and after not in _ORDER:
        raise ValueError(f"method {name!r} runs after {after!r}, which is not a known method")
    _ORDER.insert(_ORDER.index(after) + 1 if after is not None else len(_ORDER), name)
    if chooses_weights:
        _CHOOSES_WEIGHTS.add(name)


def remove_method_name(name: str) -> None:
    """Takes ``name`` out of the hook order (a test's toy method, once the test is done)."""
    _ORDER.remove(name)
    _CHOOSES_WEIGHTS.discard(name)


class LoraConfig(Section):
    """LoRA adapter settings (Hu et al., 2021, https://arxiv.org/abs/2106.09685)."""

    r: int = Field(
        16,
        gt=0,
        description="LoRA rank; r=16 with alpha=32 is the recipe of the fine-tuning guides "
        "retain grew from.",
    )
    alpha: float = Field(
        32.0, gt=0, validation_alias=also("alpha", "lora_alpha"),
        description="LoRA alpha; updates are scaled by alpha / r, i.e. 2 by default."
    )
    dropout: float = Field(0.05, ge=0, lt=1, validation_alias=also("dropout", "lora_dropout"),
                           description="Dropout applied to the LoRA input.")
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


class QLoraConfig(Section):
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


class FreezeConfig(Section):
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


class LlrdConfig(Section):
    """Layer-wise learning-rate decay (Howard & Ruder, 2018, https://arxiv.org/abs/1801.06146;
    Clark et al., 2020, https://arxiv.org/abs/2003.10555)."""

    factor: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Each layer's learning rate is the one above it times this factor; the top "
        "layer and the head train at train.lr, the embeddings at lr x factor^layers.",
    )


class GeneralDataConfig(Section):
    """General (non-task) data for replay, EWC's Fisher and self-augmentation prompts."""

    source: PathText | None = Field(
        None,
        description="`lab` (the lab world's pretraining corpus less every document that "
        "states a probed fact), `instructions` (329 general requests retain ships, no probe item "
        "among them: prompts for self_augment, which the base model answers), a file (.txt one text per "
        "line; .jsonl/.csv/.parquet with a text or prompt/response columns), or "
        "`hf:NAME[:SPLIT]` for a `datasets` dataset; null uses the lab corpus for the lab "
        "model, the instructions when self_augment is the only method reading general data, and "
        "is an error otherwise.",
    )
    text_field: str = Field("text", description="Column holding the text, for tables and datasets.")
    limit: int = Field(
        20000, gt=0, description="Texts read at most (the first N), so a large corpus stays cheap."
    )


class ReplayConfig(Section):
    """Experience replay: general data blended into the task data (Rolnick et al., 2019,
    https://arxiv.org/abs/1811.11682; for LLMs, Scialom et al., 2022,
    https://arxiv.org/abs/2205.12393)."""

    ratio: float = Field(
        0.2, gt=0, lt=1, description="Share of the blended training set that is general data."
    )


class SelfAugmentConfig(Section):
    """Self-synthesized rehearsal: the base model answers general prompts before training and
    its healthy answers are mixed in (Huang et al., 2024, https://arxiv.org/abs/2403.01244)."""

    ratio: float = Field(
        0.2, gt=0, lt=1, description="Share of the blended training set that is self-generated."
    )
    max_new_tokens: int = Field(32, gt=0, description="Tokens the base model may generate per prompt.")


class EwcConfig(Section):
    """Elastic weight consolidation (Kirkpatrick et al., 2017, https://arxiv.org/abs/1612.00796)."""

    strength: float = Field(
        100.0,
        ge=0,
        description="lambda: the penalty is lambda/2 * sum(F * (w - w_base)^2), F the diagonal "
        "Fisher of the base model on general data.",
    )
    samples: int = Field(256, gt=0, description="General texts the Fisher is estimated on.")


class L2spConfig(Section):
    """L2-SP: an L2 penalty towards the starting weights (Li et al., 2018,
    https://arxiv.org/abs/1802.01483)."""

    strength: float = Field(
        0.01, ge=0, description="alpha: the penalty is alpha/2 * sum((w - w_base)^2)."
    )


class FapmConfig(Section):
    """Forgetting-aware pruning of the task vector after training (Huang et al., 2025,
    https://arxiv.org/abs/2509.08255)."""

    keep: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Share of each weight matrix's task-vector entries kept (the rest reset to "
        "the base weights); 0.1 is the paper's 90% sparsity.",
    )


class TokenForgetConfig(Section):
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
    reference_data: PathText | None = Field(
        None,
        description="A file of other task rows (same format as data.train) to fine-tune one "
        "reference model on instead, as the paper's code does; null splits the training rows.",
    )
    reference_steps: int = Field(50, gt=0, description="Optimizer steps of the reference fine-tuning.")
    t_max: float = Field(0.25, ge=0, description="Weight of the negative loss at the end of training.")
    t_min: float = Field(1e-5, ge=0, description="Weight of the negative loss at the start.")


class MethodConfig(Section):
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
        unknown = [name for name in use if name not in _ORDER]
        if unknown:
            raise invalid(f"unknown method '{unknown[0]}'", f"use any of {', '.join(_ORDER)}")
        bases = list(dict.fromkeys(name for name in use if name in _CHOOSES_WEIGHTS))
        if len(bases) > 1:
            raise invalid(f"methods '{bases[0]}' and '{bases[1]}' exclude each other",
                           "name one of full (every weight trains), lora or qlora (adapters train)")
        return use

    @field_validator("use")
    @classmethod
    def _no_duplicates(cls, use: list[str]) -> list[str]:
        repeated = sorted({name for name in use if use.count(name) > 1})
        if repeated:
            raise invalid(
                f"method '{repeated[0]}' is listed more than once", "list each method once"
            )
        return use

    @property
    def base(self) -> str:
        """The method that decides which weights train: full, lora or qlora (lora by default)."""
        return next((name for name in self.use if name in _CHOOSES_WEIGHTS), "lora")

    @property
    def adapters(self) -> bool:
        """True when LoRA adapters train (lora or qlora)."""
        return self.base != "full"


def expand_method_shorthand(data: Any) -> Any:
    """Returns ``{"use": data}`` for the ``method: lora`` / ``method: [a, b]`` shorthand."""
    return {"use": data} if isinstance(data, (str, list)) else data



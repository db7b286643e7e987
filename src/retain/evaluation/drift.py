"""Label-free drift: how far a tuned model's predictions moved on a reference text.

Probes need answers; drift does not. The base model reads a reference text once and its
top-k next-token log-probabilities are cached (:class:`BaseLogprobs`). Any later model is
then scored on the same text by

* :func:`kl_to_base`: mean per-token KL(base || tuned), how much the predictive
  distribution moved where the base puts its mass, and
* :func:`perplexity`: how well the model still predicts the text itself.

The text is tokenised once (BOS as the tokenizer adds it) and cut into consecutive
windows of at most ``window`` tokens; each window is read on its own, so a token's
context never reaches into the previous window. Every token after the first of its
window is predicted and scored.

Every function takes any causal LM module whose output has ``.logits`` (a transformers
model or a PEFT model around one), puts it in eval mode, runs it under inference mode on
its own device, and restores its previous mode.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

import retain
from retain.hardware import batches_with_backoff

if TYPE_CHECKING:
    from peft import PeftModel

DEFAULT_K = 64
"""Base log-probabilities kept per position."""

DEFAULT_WINDOW = 128
"""Tokens per window."""

DEFAULT_BATCH_SIZE = 16
"""Windows per forward pass; with the vocabulary, this bounds memory."""

_TENSOR_NAMES = ("token_ids", "topk_ids", "topk_logprobs", "rest_logprobs")
"""Tensor fields of :class:`BaseLogprobs`, as stored in its safetensors file."""


def fingerprint(text: str, tokenizer: PreTrainedTokenizerBase, k: int, window: int) -> str:
    """Returns the sha256 hex digest identifying a base computation's inputs.

    It covers the reference text, the tokenizer's vocabulary size, ``k`` and ``window``:
    change any of them and cached base log-probabilities no longer apply.
    """
    digest = hashlib.sha256(f"{len(tokenizer)}\n{k}\n{window}\n".encode())
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class BaseLogprobs:
    """The base model's top-k next-token log-probabilities on a reference text.

    Positions run over every predicted token of every window, in order (``N`` in all).

    Attributes:
        fingerprint: See :func:`fingerprint`.
        k: Log-probabilities kept per position.
        window: Tokens per window.
        vocab_size: Length of the tokenizer used.
        token_ids: The tokenised text, (T,) int32; windows are consecutive slices.
        topk_ids: Token ids of the base's top k at each position, (N, k) int32.
        topk_logprobs: Their log-probabilities, (N, k) float32.
        rest_logprobs: Log of the mass on all other tokens, (N,) float32; ``-inf`` when
            ``k`` covers the vocabulary.
    """

    fingerprint: str
    k: int
    window: int
    vocab_size: int
    token_ids: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    rest_logprobs: torch.Tensor

    @property
    def tokens(self) -> int:
        """Returns the number of predicted positions ``N``."""
        return self.topk_ids.shape[0]

    def check(self, text: str, tokenizer: PreTrainedTokenizerBase) -> None:
        """Checks that these log-probabilities were computed for ``text`` and ``tokenizer``.

        Raises:
            ValueError: If the fingerprints differ.
        """
        expected = fingerprint(text, tokenizer, self.k, self.window)
        if expected != self.fingerprint:
            raise ValueError(
                "the cached base log-probabilities were computed for another reference "
                f"text or tokenizer (fingerprint {self.fingerprint[:12]}, expected "
                f"{expected[:12]} for k={self.k}, window={self.window}); recompute them "
                "with compute_base_logprobs on this text"
            )

    def save(self, path: str | Path) -> None:
        """Writes the log-probabilities to ``path`` as safetensors, atomically.

        The metadata records the fingerprint, ``k``, ``window``, the vocabulary size and
        retain's version.
        """
        path = Path(path)
        tensors = {name: getattr(self, name).contiguous() for name in _TENSOR_NAMES}
        metadata = {
            "fingerprint": self.fingerprint,
            "k": str(self.k),
            "window": str(self.window),
            "vocab_size": str(self.vocab_size),
            "retain_version": retain.__version__,
        }
        temp = path.with_name(f".{path.name}.tmp")
        try:
            save_file(tensors, temp, metadata)
            os.replace(temp, path)  # readers see the old file or the new one, never half
        finally:
            temp.unlink(missing_ok=True)

    @classmethod
    def load(
        cls, path: str | Path, text: str, tokenizer: PreTrainedTokenizerBase
    ) -> BaseLogprobs:
        """Reads log-probabilities saved by :meth:`save` and checks they fit ``text``.

        Raises:
            ValueError: If the file was not written by :meth:`save`, or the
                log-probabilities were computed for another text, tokenizer, ``k`` or
                window (see :meth:`check`).
            OSError: If ``path`` cannot be read.
        """
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            stored = set(file.keys())
            missing = [name for name in _TENSOR_NAMES if name not in stored]
            if missing or "fingerprint" not in metadata:
                raise ValueError(
                    f"{path} is not a base log-probabilities file (no fingerprint or "
                    f"tensors {missing}); write it with BaseLogprobs.save"
                )
            tensors = {name: file.get_tensor(name) for name in _TENSOR_NAMES}
        base = cls(
            fingerprint=metadata["fingerprint"],
            k=int(metadata["k"]),
            window=int(metadata["window"]),
            vocab_size=int(metadata["vocab_size"]),
            **tensors,
        )
        base.check(text, tokenizer)
        return base


@dataclass(frozen=True)
class DriftReport:
    """Drift of one model on a reference text.

    Attributes:
        kl: Mean per-token KL(base || model) in nats (see :func:`kl_to_base`); None
            without base log-probabilities.
        perplexity: The model's perplexity on the text.
        tokens: Predicted positions scored.
        k: Base log-probabilities per position behind ``kl``; None without a base.
    """

    kl: float | None
    perplexity: float
    tokens: int
    k: int | None

    def to_dict(self) -> dict[str, object]:
        """Returns the report as plain JSON-ready data."""
        return asdict(self)


def compute_base_logprobs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    k: int = DEFAULT_K,
    window: int = DEFAULT_WINDOW,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> BaseLogprobs:
    """Returns ``model``'s top-k next-token log-probabilities at every position of ``text``.

    Compute them once per base model and reference text, then :meth:`BaseLogprobs.save`
    them; every later :func:`kl_to_base` needs only the tuned model.

    Args:
        model: The base causal LM.
        tokenizer: Its tokenizer.
        text: The reference text.
        k: Log-probabilities kept per position, at most the model's vocabulary size.
        window: Tokens per window, at least 2 and within the model's context.
        batch_size: Windows per forward pass.

    Returns:
        The :class:`BaseLogprobs`.

    Raises:
        ValueError: If ``k`` is not in [1, vocabulary size], ``window`` < 2, or the text
            is too short to predict a single token.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    token_ids = _tokenize(tokenizer, text)
    windows = _windows(token_ids, window)
    top_logprobs: list[torch.Tensor] = []
    top_ids: list[torch.Tensor] = []
    rest_logprobs: list[torch.Tensor] = []
    with _evaluating(model) as device:
        for log_probs, _ in _scored_batches(model, windows, batch_size, device):
            if k > log_probs.shape[-1]:
                raise ValueError(f"k={k} exceeds the vocabulary size {log_probs.shape[-1]}")
            values, ids = log_probs.topk(k, dim=-1)  # (n, k)
            top_logprobs.append(values.cpu())
            top_ids.append(ids.to(torch.int32).cpu())
            rest_logprobs.append(_rest_log_mass(log_probs, ids).cpu())
    return BaseLogprobs(
        fingerprint=fingerprint(text, tokenizer, k, window),
        k=k,
        window=window,
        vocab_size=len(tokenizer),
        token_ids=torch.tensor(token_ids, dtype=torch.int32),
        topk_ids=torch.cat(top_ids),
        topk_logprobs=torch.cat(top_logprobs),
        rest_logprobs=torch.cat(rest_logprobs),
    )


def base_logprobs_from_adapter_model(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    k: int = DEFAULT_K,
    window: int = DEFAULT_WINDOW,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> BaseLogprobs:
    """Returns the base log-probabilities of a PEFT model with its adapters switched off.

    The base model is the PEFT model's own frozen weights, so no second copy is loaded.

    Raises:
        ValueError: As :func:`compute_base_logprobs` does.
    """
    with peft_model.disable_adapter():
        return compute_base_logprobs(peft_model, tokenizer, text, k, window, batch_size)


def kl_to_base(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    base: BaseLogprobs,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Returns the mean per-token KL(base || model), in nats, on the base's text.

    Each distribution is coarsened to k + 1 buckets: the base's top-k tokens, and one
    "rest" bucket holding all remaining mass (for the model, one minus its mass on the
    base's top-k ids). The result is the KL between these coarsened distributions: by
    the data-processing inequality a lower bound on the full KL, and exact when ``k``
    equals the vocabulary size. The rest mass is computed as a log-sum-exp over the
    tokens outside the top k (not as ``1 - sum``), so it stays accurate when tiny, and
    the sums run in float64. Tiny negative results from rounding are clamped to 0.

    Raises:
        ValueError: If ``tokenizer``'s vocabulary size differs from the base's.
    """
    if len(tokenizer) != base.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the base log-probabilities were "
            f"computed with {base.vocab_size}; use the base model's tokenizer"
        )
    scored = _score(model, base.token_ids.tolist(), base.window, batch_size, base)
    return scored.kl


def perplexity(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    window: int = DEFAULT_WINDOW,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Returns ``model``'s perplexity on ``text``: exp of the mean next-token NLL.

    Padding is never scored, so ``batch_size`` does not change the result.

    Raises:
        ValueError: If ``window`` < 2 or the text is too short to predict a token.
    """
    scored = _score(model, _tokenize(tokenizer, text), window, batch_size, base=None)
    return _exp(scored.mean_nll)


def drift_report(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    base: BaseLogprobs | None,
    window: int = DEFAULT_WINDOW,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> DriftReport:
    """Returns the KL to ``base`` and the perplexity of ``model`` on ``text``.

    With a base, both come from one pass over the base's windows (``window`` is then
    the base's and the argument is not used); without one, only perplexity is reported.

    Raises:
        ValueError: If ``base`` was computed for another text or tokenizer, or as
            :func:`perplexity` does.
    """
    if base is not None:
        base.check(text, tokenizer)
        token_ids, window = base.token_ids.tolist(), base.window
    else:
        token_ids = _tokenize(tokenizer, text)
    scored = _score(model, token_ids, window, batch_size, base)
    return DriftReport(
        kl=scored.kl if base is not None else None,
        perplexity=_exp(scored.mean_nll),
        tokens=scored.tokens,
        k=base.k if base is not None else None,
    )


@dataclass(frozen=True)
class _Scores:
    """Means over all predicted positions of one pass over the windows.

    ``kl`` is 0.0 when the pass had no base to compare with.
    """

    kl: float
    mean_nll: float
    tokens: int


def _score(
    model: torch.nn.Module,
    token_ids: Sequence[int],
    window: int,
    batch_size: int,
    base: BaseLogprobs | None,
) -> _Scores:
    """Returns the mean NLL of ``token_ids`` under ``model`` and, given a base, the mean KL."""
    nll_sum = kl_sum = 0.0
    position = 0
    windows = _windows(token_ids, window)
    with _evaluating(model) as device:
        for log_probs, targets in _scored_batches(model, windows, batch_size, device):
            nll_sum -= log_probs.gather(-1, targets[:, None]).double().sum().item()
            if base is not None:
                kl_sum += _bucketed_kl_sum(log_probs, base, position)
            position += len(targets)
    # The coarsened KL is never negative; a tiny negative mean is rounding.
    return _Scores(kl=max(kl_sum / position, 0.0), mean_nll=nll_sum / position, tokens=position)


def _bucketed_kl_sum(log_probs: torch.Tensor, base: BaseLogprobs, start: int) -> float:
    """Returns the summed (k+1)-bucket KL(base || model) over one batch of positions.

    Args:
        log_probs: The model's next-token log-probabilities, (n, vocab).
        base: Base log-probabilities; rows ``start : start + n`` match ``log_probs``.
        start: Position of the batch's first row.
    """
    end = start + log_probs.shape[0]
    device = log_probs.device
    base_ids = base.topk_ids[start:end].to(device=device, dtype=torch.int64)  # (n, k)
    base_top = base.topk_logprobs[start:end].to(device=device, dtype=torch.float64)  # (n, k)
    base_rest = base.rest_logprobs[start:end].to(device=device, dtype=torch.float64)  # (n,)
    model_top = log_probs.gather(-1, base_ids).double()  # (n, k)
    model_rest = _rest_log_mass(log_probs, base_ids).double()  # (n,)
    kl_top = (base_top.exp() * (base_top - model_top)).sum(-1)
    # 0 * log(0 / q) = 0: with k = vocab both rest buckets are empty (-inf - -inf = nan).
    has_rest = torch.isfinite(base_rest)
    kl_rest = torch.where(has_rest, base_rest.exp() * (base_rest - model_rest), 0.0)
    return (kl_top + kl_rest).sum().item()


def _rest_log_mass(log_probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Returns log of the probability mass outside ``ids`` in each row, (n,).

    ``log_probs`` is (n, vocab), ``ids`` (n, k); rows where ``ids`` covers the whole
    vocabulary give ``-inf``.
    """
    return log_probs.scatter(-1, ids.long(), float("-inf")).logsumexp(-1)


def _exp(mean_nll: float) -> float:
    """Returns the perplexity of a mean NLL; infinite where ``exp`` would overflow (a broken
    model's perplexity is a result to report, not an error)."""
    return math.exp(mean_nll) if mean_nll < 709 else math.inf


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Returns the ids of ``text`` with the special tokens the tokenizer adds (BOS)."""
    # verbose=False: the text is longer than the model's context on purpose.
    return list(tokenizer(text, verbose=False)["input_ids"])


def _windows(token_ids: Sequence[int], window: int) -> list[list[int]]:
    """Returns consecutive slices of at most ``window`` tokens that predict something.

    A last slice of one token predicts nothing and is dropped.

    Raises:
        ValueError: If ``window`` < 2 or no slice has two tokens.
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    slices = [list(token_ids[i : i + window]) for i in range(0, len(token_ids), window)]
    kept = [piece for piece in slices if len(piece) >= 2]
    if not kept:
        raise ValueError(
            f"the reference text has {len(token_ids)} tokens: too short to predict any; "
            "use a longer text"
        )
    return kept


def _scored_batches(
    model: torch.nn.Module, windows: list[list[int]], batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields, per batch of windows, the log-probabilities and targets of real tokens.

    Windows are right-padded; positions whose target is padding are dropped, and rows
    keep window order, so concatenating the batches lists every predicted position once.
    Out of memory halves the batch (:func:`retain.hardware.batches_with_backoff`).

    Yields:
        ``(log_probs, targets)``: (n, vocab) float32 and (n,) int64.
    """

    def score(batch: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(piece) for piece in batch)
        input_ids = torch.zeros(len(batch), longest, dtype=torch.int64)
        attention_mask = torch.zeros(len(batch), longest, dtype=torch.int64)
        for row, piece in enumerate(batch):
            input_ids[row, : len(piece)] = torch.tensor(piece)
            attention_mask[row, : len(piece)] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        predicted = attention_mask[:, 1:].bool()  # (batch, seq - 1): target is a real token
        log_probs = logits[:, :-1][predicted].float().log_softmax(-1)  # (n, vocab)
        return log_probs, input_ids[:, 1:][predicted]

    for _, scored in batches_with_backoff(windows, batch_size, score, owner=model, kind="drift"):
        yield scored


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[torch.device]:
    """Runs the block in eval and inference mode on the model's device, then restores its mode.

    Yields:
        The device of the model's parameters.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)

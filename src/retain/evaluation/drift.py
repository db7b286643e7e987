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

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from retain.evaluation.base_logprobs import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_WINDOW,
    BaseLogprobs,
    evaluating,
    rest_log_mass,
    scored_batches,
    tokenize,
    windows,
)

if TYPE_CHECKING:
    pass


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
    scored = _score(model, tokenize(tokenizer, text), window, batch_size, base=None)
    return _exp(scored.mean_nll)


def drift_report(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    base: BaseLogprobs | None,
    window: int = DEFAULT_WINDOW,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_tokens: int | None = None,
) -> DriftReport:
    """Returns the KL to ``base`` and the perplexity of ``model`` on ``text``.

    With a base, both come from one pass over the base's windows (``window`` is then
    the base's and the argument is not used); without one, only perplexity is reported.
    ``max_tokens`` scores only the text's first windows, that many tokens rounded down to
    whole windows (one at least): a guard check's cheaper reading.

    Raises:
        ValueError: If ``base`` was computed for another text or tokenizer, or as
            :func:`perplexity` does.
    """
    if base is not None:
        base.check(text, tokenizer)
        token_ids, window = base.token_ids.tolist(), base.window
    else:
        token_ids = tokenize(tokenizer, text)
    if max_tokens is not None:
        token_ids = token_ids[: max(1, max_tokens // window) * window]
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
    pieces = windows(token_ids, window)
    with evaluating(model) as device:
        for log_probs, targets in scored_batches(model, pieces, batch_size, device):
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
    model_rest = rest_log_mass(log_probs, base_ids).double()  # (n,)
    kl_top = (base_top.exp() * (base_top - model_top)).sum(-1)
    # 0 * log(0 / q) = 0: with k = vocab both rest buckets are empty (-inf - -inf = nan).
    has_rest = torch.isfinite(base_rest)
    kl_rest = torch.where(has_rest, base_rest.exp() * (base_rest - model_rest), 0.0)
    return (kl_top + kl_rest).sum().item()


def _exp(mean_nll: float) -> float:
    """Returns the perplexity of a mean NLL; infinite where ``exp`` would overflow (a broken
    model's perplexity is a result to report, not an error)."""
    return math.exp(mean_nll) if mean_nll < 709 else math.inf


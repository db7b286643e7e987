"""The base model's log-probabilities on a reference text, computed once and kept (its
top-k per position and the mass of the rest), so that KL to the base costs one forward
pass of the tuned model."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
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
        try:
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
        except SafetensorError as error:  # a truncated or foreign file
            raise ValueError(f"{path} is not a readable safetensors file: {error}") from None
        base = cls(
            fingerprint=metadata["fingerprint"],
            k=int(metadata["k"]),
            window=int(metadata["window"]),
            vocab_size=int(metadata["vocab_size"]),
            **tensors,
        )
        base.check(text, tokenizer)
        return base


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
    token_ids = tokenize(tokenizer, text)
    pieces = windows(token_ids, window)
    top_logprobs: list[torch.Tensor] = []
    top_ids: list[torch.Tensor] = []
    rest_logprobs: list[torch.Tensor] = []
    with evaluating(model) as device:
        for log_probs, _ in scored_batches(model, pieces, batch_size, device):
            if k > log_probs.shape[-1]:
                raise ValueError(f"k={k} exceeds the vocabulary size {log_probs.shape[-1]}")
            values, ids = log_probs.topk(k, dim=-1)  # (n, k)
            top_logprobs.append(values.cpu())
            top_ids.append(ids.to(torch.int32).cpu())
            rest_logprobs.append(rest_log_mass(log_probs, ids).cpu())
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


def rest_log_mass(log_probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Returns log of the probability mass outside ``ids`` in each row, (n,).

    ``log_probs`` is (n, vocab), ``ids`` (n, k); rows where ``ids`` covers the whole
    vocabulary give ``-inf``.
    """
    return log_probs.scatter(-1, ids.long(), float("-inf")).logsumexp(-1)


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Returns the ids of ``text`` with the special tokens the tokenizer adds (BOS)."""
    # verbose=False: the text is longer than the model's context on purpose.
    return list(tokenizer(text, verbose=False)["input_ids"])


def windows(token_ids: Sequence[int], window: int) -> list[list[int]]:
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


def scored_batches(
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
def evaluating(model: torch.nn.Module) -> Iterator[torch.device]:
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

"""What the machine can do: the device to use, the precision to train in, and its memory.

bf16 autocast is 1.6-2.2x faster than fp32 on CPUs with native bf16 (AVX-512 BF16 or
AMX) but 20-30x *slower* on CPUs without it, where PyTorch emulates it (measured on this
project's 2-core AMD EPYC machines: 162 vs 4,389 tokens/s; see docs/BENCHMARKS.md).
So ``auto`` never picks bf16 on a CPU that lacks it.

Memory: :func:`available_memory` is what a process may still allocate (the container's
limit counts), and :func:`batches_with_backoff` runs evaluation batches that halve
themselves when the device runs out of memory instead of crashing the run.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

import torch

logger = logging.getLogger("retain.hardware")

Precision = Literal["fp32", "bf16", "fp16"]
Item = TypeVar("Item")
Output = TypeVar("Output")


def cpu_has_fast_bf16() -> bool:
    """Returns True when this CPU runs bf16 matmuls natively (AVX-512 BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def default_device() -> str:
    """Returns ``cuda`` when a GPU is visible, then ``mps``, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(requested: str, device: str | None = None) -> Precision:
    """Returns the precision to train in for ``requested`` (``auto`` decides by device).

    ``auto`` means bf16 on GPUs that support it and on CPUs with native bf16, fp32
    everywhere else (fp16 is never chosen automatically: it needs loss scaling and
    overflows more easily; ask for it explicitly).

    Raises:
        ValueError: If ``requested`` is not auto, fp32, bf16 or fp16.
    """
    if requested in ("fp32", "bf16", "fp16"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r}: use auto, fp32, bf16 or fp16")
    device = device or default_device()
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


# accelerate wraps the forward of a model it prepares for bf16 or fp16 training in autocast
# (keeping the model's own forward as ``_original_forward``), and the wrapper outlives the
# training. An evaluation through it measures a bf16 model while the base model was
# measured in full precision before training, and while the saved weights are full
# precision: forgetting and task accuracy then move for no reason but rounding.


@contextmanager
def own_forward(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Runs the block with ``model``'s own forward, outside the mixed-precision wrapper of
    training (a no-op for a model that has none): the guards' checks measure the model
    the run would save, as the base model was measured."""
    original = model.__dict__.get("_original_forward")
    wrapped = model.__dict__.get("forward")
    if original is None or wrapped is None:
        yield model
        return
    model.forward = original
    try:
        yield model
    finally:
        model.forward = wrapped


def drop_autocast(model: torch.nn.Module) -> torch.nn.Module:
    """Removes the mixed-precision wrapper of training from ``model`` for good (after
    training: the final evaluation and whoever uses the model get its own forward), with
    accelerate's own unwrapping; ``model`` is changed in place and returned."""
    from accelerate.utils import extract_model_from_parallel

    extract_model_from_parallel(model, keep_fp32_wrapper=False)
    return model


# --- memory -----------------------------------------------------------------------------


def available_memory() -> int | None:
    """Returns the bytes of RAM this process may still allocate, or None where unknown.

    On Linux, the smaller of the kernel's ``MemAvailable`` and what the cgroup (a
    container's memory limit, v2 or v1) leaves; elsewhere psutil's figure if psutil is
    installed. None means the memory check cannot run (it is then skipped, and logged).
    """
    figures = [figure for figure in (_meminfo_available(), _cgroup_room()) if figure is not None]
    if figures:
        return min(figures)
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Returns the cgroup's memory limit minus its usage; None without a limit.

    Args:
        root: Where the cgroup file system is mounted (a test points it elsewhere).
    """
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            text = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text().strip())
            # "max" (v2) or a page-rounded 2^63 (v1) mean no limit.
            limit = None if text == "max" else int(text)
        except (OSError, ValueError):
            continue
        if limit is None or limit >= 1 << 60:
            return None
        return max(0, limit - usage)
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """Returns True for an allocation failure: CUDA's or MPS's, or a failed CPU allocation."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def free_memory() -> None:
    """Returns what an aborted batch held to the allocator (Python objects, device caches)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


# The batch size each model could last run, by kind of work: once a model ran out of
# memory at some size, later calls on it start at the size that worked.
_BATCH_CAPS: weakref.WeakKeyDictionary[object, dict[str, int]] = weakref.WeakKeyDictionary()


def batches_with_backoff(
    items: Sequence[Item],
    batch_size: int,
    run: Callable[[Sequence[Item]], Output],
    *,
    owner: object | None = None,
    kind: str = "batch",
) -> Iterator[tuple[Sequence[Item], Output]]:
    """Yields ``(batch, run(batch))`` over consecutive batches of ``items``, halving the
    batch size whenever ``run`` runs out of memory and retrying the same items.

    The items are processed in order and each exactly once, so the results are those of
    ``batch_size`` batches up to float rounding. The size that worked is kept for the
    rest of the items and, with an ``owner`` (the model), for later calls of the same
    ``kind``.

    Args:
        items: What to process.
        batch_size: The batch size to start with.
        run: Processes one batch; must not keep state from a failed call.
        owner: The object the learned size belongs to (weakly referenced).
        kind: What is batched (``generation``, ``loglik``, ``drift``), for the learned
            size and the log.

    Raises:
        Exception: Whatever ``run`` raises, out-of-memory included when a batch of one
            item does not fit.
    """
    caps = _BATCH_CAPS.setdefault(owner, {}) if owner is not None else {}
    size = max(1, min(batch_size, caps.get(kind, batch_size)))
    start = 0
    while start < len(items):
        batch = items[start : start + size]
        try:
            output = run(batch)
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled
            if not is_out_of_memory(error) or size == 1:
                raise
            failed = size
        else:
            yield batch, output
            start += len(batch)
            continue
        # Outside the except block, so the traceback (and the tensors it holds) is gone.
        size = max(1, failed // 2)
        caps[kind] = size
        free_memory()
        logger.warning("%s: out of memory at batch size %d; retrying at %d", kind, failed, size)

"""Runs one trial's ``retain train`` in a child process, so a crash cannot take the sweep down.

The child comes from a fork server that imported retain's training code once
(``multiprocessing``'s ``forkserver`` with a preload): each trial then starts in a fraction
of a second instead of paying the ~5-10 s of importing torch and transformers again, and
still starts from a clean process (no threads, no CUDA state inherited from the sweep).
Where there is no fork server (Windows), a fresh interpreter is spawned per trial.

A child watches a pipe from the sweep process: if the sweep dies (kill -9), the pipe
closes and the child exits at once instead of training on as an orphan.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retain.errors import RetainError, TrainRefused
from retain.summary import RunSummary
from retain.training.run import run_train

_PRELOAD = ["retain.training.run"]
_context = None


class TrialFailed(RetainError):
    """A trial did not finish: its training raised, was refused (``refused``: the audit or
    the doctor found blockers), or its process died."""

    def __init__(self, message: str, *, fix: str | None = None, refused: bool = False) -> None:
        super().__init__(message, fix=fix)
        self.refused = refused


def context():
    """The multiprocessing context trials start from (one fork server per sweep process)."""
    global _context
    if _context is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(_PRELOAD)
        else:
            _context = multiprocessing.get_context("spawn")
    return _context


def run_in_child(target: Callable[..., Any], *args: Any, output: Path | None = None,
                 on_start: Callable[[int], None] | None = None) -> Any:
    """Runs ``target(*args)`` in a child process and returns its result.

    Args:
        target: A module-level function (it is pickled by name); its result must pickle.
        args: Its arguments.
        output: File the child's stdout and stderr go to (appended), None to inherit them.
        on_start: Called with the child's pid once it runs.

    Raises:
        TrialFailed: ``target`` raised (the message says what, a RetainError keeps its fix
            and whether training was refused), or the process died without a result.
        KeyboardInterrupt: The sweep was interrupted; the child is stopped first.
    """
    ctx = context()
    receive, send = ctx.Pipe(duplex=False)
    lifeline_end, lifeline = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(target, args, str(output) if output else None, send, lifeline_end),
                          name="retain-trial")
    process.start()
    send.close()  # the child holds the only write end: its death is an EOF here
    lifeline_end.close()
    try:
        if on_start is not None:
            on_start(process.pid)
        try:
            outcome = receive.recv()
        except EOFError:
            outcome = None
        process.join()
    except BaseException:
        process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
        raise
    finally:
        receive.close()
        lifeline.close()
    if outcome is None:
        raise TrialFailed(_death(process.exitcode, output),
                          fix="see the trial's output file" + (f" {output}" if output else ""))
    if "error" in outcome:
        raise TrialFailed(outcome["message"], fix=outcome.get("fix"), refused=outcome.get("refused", False))
    return outcome["result"]


def _death(exitcode: int | None, output: Path | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else str(-exitcode)
        cause = " (out of memory?)" if name == "SIGKILL" else ""
        message = f"the trial's process was killed by {name}{cause}"
    else:
        message = f"the trial's process exited with code {exitcode} without a result"
    last = _last_line(output) if output else None
    return message + (f"; last output: {last}" if last else "")


def _last_line(path: Path) -> str | None:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def _child(target: Callable[..., Any], args: tuple, output: str | None, send, lifeline) -> None:
    """The child's entry: output to a file, die with the sweep, send back a result or an error."""
    if output:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    threading.Thread(target=_die_with_parent, args=(lifeline,), daemon=True).start()
    try:
        outcome: dict[str, Any] = {"result": target(*args)}
    except RetainError as exc:
        outcome = {"error": type(exc).__name__, "message": exc.render().split(" Fix: ")[0], "fix": exc.fix,
                   "refused": isinstance(exc, TrainRefused)}
    except BaseException as exc:  # noqa: BLE001 - a bug or a library error: record it, keep the traceback
        traceback.print_exc()
        outcome = {"error": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}"[:1000]}
    send.send(outcome)
    send.close()


def _die_with_parent(lifeline) -> None:
    try:
        lifeline.recv()  # the sweep never sends: this returns only when its end closes
    except (EOFError, OSError):
        pass
    os._exit(70)


def train_trial(config) -> RunSummary:
    """The trial itself: ``retain train`` of ``config`` into its run directory; returns the summary."""
    logger = logging.getLogger("retain.sweep.trial")
    return run_train(config, overwrite=True, progress=False, echo=logger.info).summary

"""Opens a report in headless Chromium and says what the browser saw.

The tests and the report benchmark use it to check the page in a real browser: it
renders, its images decode, nothing is fetched from the network, and the console stays
clean. It speaks the Chrome DevTools protocol over ``--remote-debugging-pipe`` (file
descriptors 3 and 4, NUL-separated JSON), so it needs no package beyond the standard
library, only a Chromium binary (Debian's ``chromium``).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retain.errors import RetainError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe")


def find_chromium() -> str | None:
    """Returns the path of a Chromium binary on ``PATH``, None if there is none."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class BrowserReport:
    """What the browser saw.

    Attributes:
        console: Console messages of level error or warning, exceptions and log entries
            (CSP violations and failed loads are logged there), as text.
        requests: Every URL the page requested.
        value: The result of the expression evaluated in the loaded page.
        screenshot: The PNG written, if one was asked for.
    """

    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    value: Any = None
    screenshot: Path | None = None


class _Pipe:
    """One DevTools connection over a pair of pipes."""

    def __init__(self, read_fd: int, write_fd: int, timeout: float) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.deadline = time.monotonic() + timeout
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict[str, Any]:
        """Sends one command and returns its result; events that arrive meanwhile are kept."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        """Returns the first event named ``method`` (already received or still to come)."""
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._receive())

    def _receive(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.read_fd], [], [], remaining)[0]:
                raise TimeoutError("the browser did not answer in time")
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise ConnectionError("the browser closed the connection")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)


def open_report(
    html: Path,
    *,
    expression: str = "document.title",
    screenshot: Path | None = None,
    width: int = 1280,
    height: int = 2000,
    binary: str | None = None,
    timeout: float = 60.0,
) -> BrowserReport:
    """Loads ``html`` in headless Chromium, evaluates ``expression`` and takes a screenshot.

    Args:
        html: The report file.
        expression: JavaScript evaluated in the loaded page (by the DevTools protocol, not
            by the page, whose policy forbids scripts); its JSON value is returned.
        screenshot: Where to write a PNG of the top ``width`` x ``height`` pixels.
        width: Viewport width in CSS pixels.
        height: Viewport height in CSS pixels.
        binary: The Chromium to run; default :func:`find_chromium`.
        timeout: Seconds for the whole visit.

    Returns:
        The console messages, requested URLs, the expression's value and the screenshot.

    Raises:
        RetainError: No Chromium binary is found.
        TimeoutError: The browser did not finish in ``timeout`` seconds.
    """
    binary = binary or find_chromium()
    if binary is None:
        raise RetainError("no Chromium binary found", fix="install Chromium (Debian: apt-get install chromium)")
    # Our ends of two pipes; the browser reads commands on fd 3 and writes replies on fd 4.
    command_read, command_write = os.pipe()
    reply_read, reply_write = os.pipe()
    child_read = _fd_above(command_read, 10)
    child_write = _fd_above(reply_write, 10)

    def place_fds() -> None:  # runs in the child, before exec
        os.dup2(child_read, 3)
        os.dup2(child_write, 4)

    with tempfile.TemporaryDirectory(prefix="retain-chromium-") as profile:
        process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            # The child only calls dup2 before exec (async-signal-safe), so threads are no risk.
            # close_fds would close 3 and 4 after preexec_fn, and pass_fds=(3, 4) fails where
            # the parent has no fd 3 or 4; Python's own fds are not inherited anyway (PEP 446).
            preexec_fn=place_fds,  # noqa: PLW1509
            close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for fd in (command_read, reply_write, child_read, child_write):
            os.close(fd)
        try:
            return _visit(_Pipe(reply_read, command_write, timeout), html, expression, screenshot, width, height)
        finally:
            os.close(command_write)
            os.close(reply_read)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _fd_above(fd: int, low: int) -> int:
    """Returns a close-on-exec duplicate of ``fd`` numbered ``low`` or more, so that dup2 onto
    3 and 4 cannot clobber it and the browser inherits only 3 and 4."""
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)


def _visit(pipe: _Pipe, html: Path, expression: str, screenshot: Path | None, width: int,
           height: int) -> BrowserReport:
    target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.call(f"{domain}.enable", session=session)
    pipe.call("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
    pipe.events.clear()
    pipe.call("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
    pipe.wait_for("Page.loadEventFired")
    value = pipe.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True}, session=session)
    report = BrowserReport(value=value.get("result", {}).get("value"))
    if screenshot is not None:
        shot = pipe.call("Page.captureScreenshot", {"format": "png"}, session=session)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        report.screenshot = screenshot
    pipe.call("Browser.close")
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            report.console.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            report.console.append(str(params.get("exceptionDetails", {}).get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            report.console.append(str(params["entry"].get("text")))
        elif method == "Network.requestWillBeSent":
            report.requests.append(str(params.get("request", {}).get("url")))
    return report

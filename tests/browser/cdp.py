"""Headless Chromium driven over the DevTools protocol on a pipe (stdlib only, nothing downloaded).

`chromium --remote-debugging-pipe` reads protocol messages (JSON, each ended by a NUL byte) on
file descriptor 3 and writes replies and events on 4. The page's console errors, uncaught
exceptions and browser log errors are collected from the first command on.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def chromium_binary() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    """The browser died, timed out or answered a command with an error."""


def _high_fd(fd: int) -> int:
    """A duplicate of `fd` numbered 10 or above (so that 3 and 4 are free in the child)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Chromium:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, width: int = 1600, height: int = 1000, binary: str | None = None) -> None:
        self.binary = binary or chromium_binary()
        if self.binary is None:
            raise BrowserError("no chromium on PATH")
        self.width, self.height = width, height
        self.errors: list[str] = []
        self.contexts: dict[str, int] = {}  # frame id -> its main-world execution context id
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""

    def __enter__(self) -> Chromium:
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        to_browser_r, to_browser_w = (_high_fd(fd) for fd in os.pipe())
        from_browser_r, from_browser_w = (_high_fd(fd) for fd in os.pipe())

        def child_fds() -> None:
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen(
            [
                self.binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--allow-file-access-from-files",
                # The report shows HTML results in data: iframes: keep them in the page's
                # process so their execution contexts are reachable from this one session.
                "--disable-site-isolation-trials",
                "--disable-features=IsolateSandboxedIframes,site-per-process",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={self.width},{self.height}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=child_fds,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._write, self._read = to_browser_w, from_browser_r
        os.set_blocking(self._read, False)
        target = next(
            t["targetId"]
            for t in self.send("Target.getTargets", session=False)["targetInfos"]
            if t["type"] == "page"
        )
        self.session = self.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, session=False
        )["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except BrowserError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write)
        os.close(self._read)
        self._profile.cleanup()

    # -- the protocol -------------------------------------------------------------------------

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message from the browser, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with status {self.process.returncode}")
            try:
                chunk = os.read(self._read, 1 << 20)
            except BlockingIOError:
                chunk = None
            if chunk:
                self._buffer += chunk
                continue
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _record(self, event: dict[str, Any]) -> None:
        """Keep an event; note console errors, exceptions, log errors and execution contexts."""
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught exception: {text}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"log error: {params['entry']['text']}")
        elif method == "Runtime.executionContextCreated":
            context = params["context"]
            aux = context.get("auxData", {})
            if aux.get("isDefault"):
                self.contexts[aux["frameId"]] = context["id"]
        self._events.append(event)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: bool = True,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send one command (to the page's session unless `session` is False); its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(max(0.0, deadline - time.monotonic()))
            if reply is None:
                raise BrowserError(f"{method}: no answer in {timeout} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._record(reply)

    def pump(self, seconds: float) -> None:
        """Collect events for `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            event = self._receive(left)
            if event is not None:
                self._record(event)

    # -- page helpers -------------------------------------------------------------------------

    def open(self, url: str, timeout: float = 60.0) -> float:
        """Navigate to `url` and wait for its load event; the seconds it took."""
        start = time.monotonic()
        self._events.clear()
        self.send("Page.navigate", {"url": url})
        deadline = start + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            if time.monotonic() > deadline:
                raise BrowserError(f"{url}: no load event in {timeout} s")
            self.pump(0.05)
        return time.monotonic() - start

    def evaluate(self, expression: str, frame: str | None = None) -> Any:
        """The JSON value of a JavaScript expression in the page (or in a frame, by its id)."""
        params: dict[str, Any] = {
            "expression": expression,
            "returnByValue": True,
            "awaitPromise": True,
        }
        if frame is not None:
            params["contextId"] = self.contexts[frame]
        result = self.send("Runtime.evaluate", params)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0, frame: str | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression, frame)
            except (BrowserError, KeyError):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"not true within {timeout} s: {expression}")
            self.pump(0.1)

    def child_frames(self) -> list[dict[str, Any]]:
        """The page's child frames (id and url), in document order."""
        tree = self.send("Page.getFrameTree")["frameTree"]
        return [child["frame"] for child in tree.get("childFrames", [])]

    def screenshot(self, path: str | os.PathLike) -> Path:
        """Save a PNG of the viewport."""
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

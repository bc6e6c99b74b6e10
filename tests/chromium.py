"""Headless Chromium driven through the DevTools protocol over a pipe (--remote-debugging-pipe:
JSON messages, NUL-separated, commands on fd 3, replies and events on fd 4): open a page,
evaluate JavaScript in it, close it. No WebDriver, no extra package."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def spki_hash(cert_pem: bytes) -> str:
    """base64 SHA-256 of a certificate's public key: what --ignore-certificate-errors-spki-list
    takes, so Chromium trusts exactly the test certificate and nothing else."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def _moved_high(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Chromium:
    """One headless browser with its profile, config, cache and temp files in ``directory``."""

    def __init__(self, directory: Path, *flags: str) -> None:
        assert CHROMIUM, "chromium is not installed (scripts/test installs Debian's chromium)"
        directory.mkdir(parents=True, exist_ok=True)
        self._ids = itertools.count(1)
        self._buffer = b""
        cmd_r, self._cmd_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        # Above 9, so moving them to 3 and 4 in the child cannot clobber one with the other.
        cmd_r, resp_w = (_moved_high(fd) for fd in (cmd_r, resp_w))
        env = {**os.environ, "XDG_CONFIG_HOME": str(directory / "config"),
               "XDG_CACHE_HOME": str(directory / "cache"), "TMPDIR": str(directory)}
        args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                f"--user-data-dir={directory / 'profile'}", "--remote-debugging-pipe", *flags, "about:blank"]
        # The pipe ends become fds 3 and 4 in the browser, as --remote-debugging-pipe expects.
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{cmd_r} 4>&{resp_w} {cmd_r}<&- {resp_w}>&-', "bash", *args],
            pass_fds=(cmd_r, resp_w), env=env, stdin=subprocess.DEVNULL,
            stdout=open(directory / "chromium.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        os.close(cmd_r)
        os.close(resp_w)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """Send one command and wait for its reply (events meanwhile are skipped)."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no reply to {method} within {timeout}s")
                chunk = os.read(self._resp_r, 1 << 16)
                if not chunk:
                    raise ConnectionError(f"chromium exited (code {self.proc.poll()})")
                self._buffer += chunk
            raw, _, self._buffer = self._buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> Page:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, target, session)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, TimeoutError, ConnectionError, RuntimeError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._resp_r)


class Page:
    def __init__(self, browser: Chromium, target: str, session: str) -> None:
        self.browser, self.target, self.session = browser, target, session

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                   self.session)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, wanted: Any, timeout: float = 20.0) -> Any:
        """Poll ``expression`` until it equals ``wanted`` or ``timeout`` passes; the last value."""
        deadline = time.monotonic() + timeout
        value = self.evaluate(expression)
        while value != wanted and time.monotonic() < deadline:
            time.sleep(0.1)
            value = self.evaluate(expression)
        return value

    def close(self) -> None:
        """Close the tab as a user would: the page sends its WebSocket close frame."""
        self.browser.call("Target.closeTarget", {"targetId": self.target})

"""A browser softphone for real: JsSIP (npm, bundled with esbuild) in headless Chromium registers
over WSS with digest against `sipconsole serve` and a trustme certificate, shows up in
`ctl --json dump` with transport wss, keeps the pub-gruu of its 200, is unregistered by `ctl`, and its contact goes when the
page closes (the WebSocket flow closes). Facts: /work/shared/reference/browser-softphone.md."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from .chromium import Chromium, spki_hash
from .processes import ServeProcess
from .sipclient import free_port

BROWSER = Path(__file__).parent / "browser"
BUNDLE = BROWSER / "jssip.bundle.js"


@pytest.fixture(scope="module")
def page_server() -> Iterator[str]:
    """tests/browser/ over HTTP on loopback, the JsSIP bundle built first (npm ci + esbuild)."""
    if not BUNDLE.exists():
        if not (BROWSER / "node_modules").exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER, check=True, timeout=300)
        subprocess.run(["npm", "run", "build"], cwd=BROWSER, check=True, timeout=120)
    handler = functools.partial(QuietHandler, directory=str(BROWSER))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass


def until(condition, timeout: float = 10.0) -> bool:
    """Poll ``condition`` (a blocking check, here `ctl`) until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wss_contacts(serve: ServeProcess, aor: str) -> list[dict]:
    code, dump = serve.ctl("dump")
    assert code == 0, dump
    return [c for entry in dump["aors"] if entry["aor"] == aor for c in entry["contacts"]]


def test_jssip_registers_over_wss_and_goes_with_its_page(short_dir, tls_files, page_server):
    wss_port = free_port()
    serve = ServeProcess(short_dir, free_port())
    serve.start("--auth", "on", "--listen", f"wss:127.0.0.1:{wss_port}", "--ws-path", "/sip",
                "--ws-origins", page_server, "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key))
    browser = None
    try:
        assert serve.user("add", "alice@example.com", password="browser-secret").returncode == 0
        browser = Chromium(short_dir / "chromium",
                           f"--ignore-certificate-errors-spki-list={spki_hash(tls_files.cert.read_bytes())}")
        query = urlencode({"ws": f"wss://127.0.0.1:{wss_port}/sip", "uri": "sip:alice@example.com",
                           "password": "browser-secret"})
        page = browser.open(f"{page_server}/phone.html?{query}")
        state = page.wait_for("window.phone && window.phone.state", "registered")
        assert state == "registered", f"{state}: {page.evaluate('window.phone.cause')}\n{serve.log.read_text()}"

        contacts = wss_contacts(serve, "alice@example.com")
        assert len(contacts) == 1 and contacts[0]["received"].startswith("wss:127.0.0.1:"), contacts
        assert contacts[0]["socket"] == f"wss:127.0.0.1:{wss_port}" and contacts[0]["conid"] is not None
        assert ".invalid" in contacts[0]["addr"] and contacts[0]["instance"], "JsSIP's outbound contact"
        # JsSIP sends Supported: gruu and keeps the pub-gruu of our 200 (RFC 5627, README "GRUU").
        assert page.evaluate("window.ua.contact.pub_gruu") == \
            f"sip:alice@example.com;gr={contacts[0]['instance'].strip('<>')}"
        code, text = serve.ctl("dump", json_output=False)
        row = next(line for line in str(text).splitlines() if line.startswith("alice@example.com"))
        assert code == 0 and "wss:127.0.0.1:" in row and f"conn {contacts[0]['conid']}" in row, text

        code, _ = serve.ctl("unregister", "alice@example.com")
        assert code == 0 and wss_contacts(serve, "alice@example.com") == []

        # JsSIP still thinks it is registered (no event): it registers again on the same flow.
        page.evaluate("window.ua.register(); true")
        assert until(lambda: len(wss_contacts(serve, "alice@example.com")) == 1), "registered again"

        page.close()  # the browser closes the WebSocket (1001): the flow is gone, so is the contact
        assert until(lambda: not wss_contacts(serve, "alice@example.com")), \
            f"the contact outlived its page:\n{serve.log.read_text()}"
        assert "connection wss:127.0.0.1:" in serve.log.read_text()
    finally:
        if browser is not None:
            browser.close()
        serve.stop()

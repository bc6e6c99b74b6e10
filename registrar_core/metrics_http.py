"""The metrics endpoint: ``GET /metrics`` over HTTP/1.1 on the registrar's own event loop.

On the loop, not in a thread, so the exposition reads the core's state between two SIP
messages, never in the middle of one. One request per connection (``Connection: close``,
as Prometheus is happy with); a request head over :data:`MAX_HEAD` bytes gets 431 and one
not complete within :data:`READ_TIMEOUT` seconds is dropped, so a slow or hostile client
holds nothing for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from .metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_HEAD = 8192  # request line and headers; a scrape sends a few hundred bytes
READ_TIMEOUT = 10.0


class MetricsServer:
    """Serves ``render()`` at /metrics on ``host:port`` (port 0: a free one, see :attr:`port`)."""

    def __init__(self, render: Callable[[], str], host: str, port: int) -> None:
        self._render = render
        self._host = host
        self._port = port
        self.read_timeout = READ_TIMEOUT
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=MAX_HEAD)
        except OSError as exc:
            # asyncio's and uvloop's messages repeat the address: the errno says it once.
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(f"cannot serve metrics on {self._host}:{self._port}: {why.lower()}") from None

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            reply = await self._answer(reader)
            if reply is not None:
                writer.write(reply)
                await asyncio.wait_for(writer.drain(), self.read_timeout)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> bytes | None:
        """The response to one request, or None to close without one (timeout, closed early)."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout)
        except asyncio.LimitOverrunError:
            return _response(431, "Request Header Fields Too Large", "request head too long\n")
        except (asyncio.IncompleteReadError, asyncio.TimeoutError):
            return None
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(400, "Bad Request", "expected: GET /metrics HTTP/1.1\n")
        method, target = parts[0], parts[1]
        if target.split("?", 1)[0] != "/metrics":
            return _response(404, "Not Found", "metrics are at /metrics\n")
        if method not in ("GET", "HEAD"):
            return _response(405, "Method Not Allowed", "only GET (or HEAD)\n", allow="GET, HEAD")
        try:
            body = self._render()
        except Exception:
            log.exception("error rendering the metrics")
            return _response(500, "Internal Server Error", "error rendering the metrics (see the log)\n")
        return _response(200, "OK", body, content_type=CONTENT_TYPE, head_only=method == "HEAD")


def _response(status: int, reason: str, body: str, *, content_type: str = "text/plain; charset=utf-8",
              allow: str = "", head_only: bool = False) -> bytes:
    data = body.encode()
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Content-Length: {len(data)}",
             *([f"Allow: {allow}"] if allow else []), "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head_only else data)

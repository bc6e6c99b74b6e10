"""The TLS server context of tls: and wss: listeners (RFC 3261 §26, RFC 7118 over TLS)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def server_context(cert: str, key: str, ca: str = "") -> ssl.SSLContext:
    """TLS 1.2 at least (1.0 and 1.1 are deprecated, RFC 8996); client certificates are
    required and verified only when a CA bundle is given (few phones carry one).
    A file that does not load is a ValueError naming it in one line."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ValueError(f"tls-cert/tls-key: {exc.filename or cert} does not exist") from None
    except (ssl.SSLError, OSError):
        raise ValueError(f"tls-cert/tls-key: cannot load {cert} with key {key}: "
                         "both must be PEM, the key matching the certificate") from None
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError):
            raise ValueError(f"tls-ca: cannot load {ca}: it must be a PEM file of CA certificates") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class TlsAcceptor:
    """Accepts the connections of one tls:/wss: listener itself, so that the per-IP and global
    connection caps count a connection from its first byte, not from the end of its handshake
    (asyncio's ``create_server(ssl=...)`` shows us a connection only once its handshake is
    done: 10,000 half ClientHellos would hold 10,000 descriptors, uncounted, for the whole
    handshake timeout). Each handshake runs as its own task and never blocks the loop."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, factory: Callable[[], asyncio.Protocol],
                 owner: Any) -> None:
        self.sock = sock
        self.context = context
        self.factory = factory
        self.owner = owner  # Transports: caps, counters, the refusal log
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except OSError as exc:  # EMFILE and the like: let the caps free descriptors first
                log.warning("cannot accept a TLS connection: %s", exc.strerror or exc)
                await asyncio.sleep(0.1)
                continue
            if not self.owner.admit_handshake(addr[0]):
                conn.close()
                continue
            task = loop.create_task(self._handshake(conn, addr[0]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handshake(self, conn: socket.socket, ip: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self.factory, conn, ssl=self.context,
                                               ssl_handshake_timeout=self.owner.config.tls_handshake_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            log.info("closing TLS connection from %s: handshake failed (%s)", ip, str(exc) or type(exc).__name__)
            conn.close()
        finally:
            self.owner.handshake_done(ip)

    def getsockname(self) -> Any:
        return self.sock.getsockname()

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*([self._accepting] if self._accepting else []), *self._tasks,
                             return_exceptions=True)
        self.sock.close()


def listening_socket(host: str, port: int, family: socket.AddressFamily) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (what create_server would make)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock

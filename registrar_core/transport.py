"""asyncio UDP and TCP listeners that feed framed messages to the core and send its replies."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable

from .config import Listen
from .sip import KEEPALIVE, Limits, SipError, StreamFramer
from .source import Source
from .transactions import Reply

log = logging.getLogger(__name__)

Handler = Callable[[bytes, Source], Awaitable[Reply | None]]
_conids = itertools.count(1)


def _local_name(proto: str, sockname: tuple) -> str:
    host, port = sockname[0], sockname[1]
    host = f"[{host}]" if ":" in host else host
    return f"{proto}:{host}:{port}"


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None
        self.local = ""
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local = _local_name("udp", transport.get_extra_info("sockname"))

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        source = Source("udp", addr[0], addr[1], self.local)
        task = asyncio.ensure_future(self._serve(data, source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, data: bytes, source: Source) -> None:
        try:
            reply = await self.handler(data, source)
        except Exception:
            log.exception("unexpected error handling a datagram from %s", source.address)
            return
        if reply is not None and self.transport is not None:
            payload, addr = reply
            try:
                self.transport.sendto(payload, addr)
            except OSError as exc:
                log.warning("cannot send to %s:%s: %s", addr[0], addr[1], exc)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


class TcpConnection(asyncio.Protocol):
    """One TCP connection: framed by Content-Length, replies on the same connection."""

    def __init__(self, handler: Handler, limits: Limits, idle_timeout: float,
                 connections: dict[int, TcpConnection], per_ip: Counter[str], max_per_ip: int) -> None:
        self.handler = handler
        self.per_ip = per_ip
        self.max_per_ip = max_per_ip
        self.framer = StreamFramer(limits)
        self.idle_timeout = idle_timeout
        self.connections = connections
        self.conid = next(_conids)
        self.transport: asyncio.Transport | None = None
        self.source: Source | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        local = _local_name("tcp", transport.get_extra_info("sockname"))
        self.source = Source("tcp", peer[0], peer[1], local, self.conid)
        if self.max_per_ip and self.per_ip[peer[0]] >= self.max_per_ip:
            log.warning("refusing TCP connection from %s: %d connections already", peer[0], self.max_per_ip)
            self.source = None
            transport.close()
            return
        self.per_ip[peer[0]] += 1
        self.connections[self.conid] = self
        self._worker = asyncio.ensure_future(self._serve())
        self._touch()

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self.idle_timeout, self.close)

    def data_received(self, data: bytes) -> None:
        self._touch()
        try:
            messages = self.framer.feed(data)
        except SipError as exc:
            log.info("closing TCP connection from %s: %s", self.source and self.source.address, exc.reason)
            self.close()
            return
        for message in messages:
            if message == KEEPALIVE:
                self.transport.write(b"\r\n")  # type: ignore[union-attr]
            else:
                self._queue.put_nowait(message)

    async def _serve(self) -> None:
        """Handle this connection's messages in arrival order."""
        assert self.source is not None
        while True:
            data = await self._queue.get()
            try:
                reply = await self.handler(data, self.source)
            except Exception:
                log.exception("unexpected error handling a message from %s", self.source.address)
                continue
            if reply is not None and self.transport is not None and not self.transport.is_closing():
                self.transport.write(reply[0])

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connections.pop(self.conid, None) is not None and self.source is not None:
            self.per_ip[self.source.ip] -= 1
            if not self.per_ip[self.source.ip]:
                del self.per_ip[self.source.ip]
        if self._idle is not None:
            self._idle.cancel()
        if self._worker is not None:
            self._worker.cancel()


class Transports:
    """Every listening socket of the registrar."""

    def __init__(self, handler: Handler, limits: Limits, tcp_idle_timeout: float,
                 max_tcp_per_ip: int = 0) -> None:
        self.handler = handler
        self.limits = limits
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_per_ip = max_tcp_per_ip
        self.connections: dict[int, TcpConnection] = {}
        self.per_ip: Counter[str] = Counter()
        self.addresses: list[str] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._udp_by_name: dict[str, UdpProtocol] = {}
        self._tcp: list[asyncio.base_events.Server] = []

    async def listen(self, spec: Listen) -> str:
        """Open one listener; returns its real address (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        try:
            if spec.proto == "udp":
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: UdpProtocol(self.handler), local_addr=(spec.host, spec.port), family=family)
                self._udp.append(transport)
                address = protocol.local
                self._udp_by_name[address] = protocol
            else:
                server = await loop.create_server(
                    lambda: TcpConnection(self.handler, self.limits, self.tcp_idle_timeout,
                                          self.connections, self.per_ip, self.max_tcp_per_ip),
                    spec.host, spec.port, family=family, reuse_address=True)
                self._tcp.append(server)
                address = _local_name("tcp", server.sockets[0].getsockname())
        except OSError as exc:
            raise OSError(f"cannot listen on {spec}: {exc.strerror or exc}") from None
        self.addresses.append(address)
        return address

    def send(self, local: str, conid: int | None, addr: tuple[str, int], data: bytes) -> bool:
        """Send a request from the socket named ``local`` (or on TCP connection ``conid``)."""
        if conid is not None:
            conn = self.connections.get(conid)
            if conn is None or conn.transport is None or conn.transport.is_closing():
                return False
            conn.transport.write(data)
            return True
        protocol = self._udp_by_name.get(local)
        if protocol is None or protocol.transport is None:
            return False
        try:
            protocol.transport.sendto(data, addr)
        except OSError:
            return False
        return True

    async def close(self) -> None:
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        for conn in list(self.connections.values()):
            conn.close()
        for server in self._tcp:
            await server.wait_closed()
        self._udp.clear()
        self._udp_by_name.clear()
        self._tcp.clear()

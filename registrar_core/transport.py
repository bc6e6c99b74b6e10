"""asyncio UDP, TCP and TLS listeners that feed framed messages to the core and send its
replies; the WebSocket connection (websocket.py) is registered per protocol by server.py."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import resource
import socket
import ssl
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from .config import Config, Listen
from .sip import KEEPALIVE, Limits, SipError, StreamFramer
from .source import Source, format_address
from .transactions import Reply
from .udp import UdpListener

log = logging.getLogger(__name__)

# The core's entry point: a framed message, its source, and where its reply goes (once).
Receiver = Callable[[bytes, Source, Callable[[Reply | None], None]], None]
_conids = itertools.count(1)

# Kamailio's tcp_msg_read_timeout: how long one message may take to arrive whole (and a
# new connection to deliver its first one). Without it a byte-per-second sender keeps a
# connection, its buffer and a file descriptor forever: every byte resets the idle timer.
DEFAULT_TCP_READ_TIMEOUT = 20.0
# Messages of one connection handed to the core and not yet answered (most wait for the
# group commit) before we stop reading from it (the kernel's window then slows the sender
# down): memory per connection stays bounded. 256 lets one connection carry about 50,000
# REGISTER/s at a 5 ms commit; 64 capped it near 13,000.
MAX_IN_FLIGHT_PER_CONNECTION = 256
# Messages of one connection handed to the core per event-loop turn: a client pipelining
# thousands in one read cannot hold the loop (other clients, group commits wait meanwhile).
MESSAGES_PER_TURN = 32
FD_RESERVE = 128  # descriptors kept for the database, the control socket, UDP, logs


def default_max_tcp_connections() -> int:
    """Stay below the process's descriptor limit: accept() failing with EMFILE stalls
    every listener, so excess connections are closed instead."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > 65_536 + FD_RESERVE:
        return 65_536
    return max(16, soft - FD_RESERVE) if soft > 2 * FD_RESERVE else max(8, soft // 2)


def _local_name(proto: str, sockname: tuple) -> str:
    return format_address(proto, sockname[0], sockname[1])


# Transports whose contacts are bound to their connection (RFC 5626 flows, RFC 7118): what
# is registered over one is reachable only through it, and goes when it closes.
FLOW_TRANSPORTS = ("tls", "ws", "wss")
# Called when a flow that delivered a message closes (flows.py removes its contacts).
FlowClosed = Callable[[Source], None]


class TcpConnection(asyncio.Protocol):
    """One TCP (or TLS) connection: framed by Content-Length, replies on the same connection.

    Defences: a per-IP and a global connection cap (at the global cap the oldest
    connection that never delivered a message makes room), an idle timeout, a read
    timeout per message (slowloris), and a bound on messages being handled at once,
    with reading paused while it is reached (a pipelining flood waits in the kernel).
    Messages are handed to the core as they arrive, a share per event-loop turn (the core
    keeps one AOR's requests in order); replies go out as they are ready.
    """

    def __init__(self, owner: Transports, proto: str = "tcp") -> None:
        self.owner = owner
        self.proto = proto
        self.receive = owner.receive
        self.framer = StreamFramer(owner.limits)
        self.idle_timeout = owner.tcp_idle_timeout
        self.read_timeout = owner.tcp_read_timeout
        self.connections = owner.connections
        self.conid = next(_conids)
        self.transport: asyncio.Transport | None = None
        self.source: Source | None = None
        self.proven = False  # has delivered at least one whole message
        # The idle and read timers are not moved per read (a cancel and a new timer each, two
        # or three per read, and an open loop brings a read per few messages): a read notes
        # the time, a timer that fires early waits the rest.
        self._idle: asyncio.TimerHandle | None = None
        self._heard = 0.0  # loop time of the last read
        self._deadline: asyncio.TimerHandle | None = None
        self._due: float | None = None  # loop time the message being received must be whole by
        self.in_flight = 0  # messages handed to the core and not answered yet
        self._backlog: deque[bytes] = deque()  # framed, not yet handed to the core
        self._drain_scheduled = False
        self._unsent: list[bytes] = []  # replies waiting for this loop iteration's write
        self._reading_paused = False
        self._writing_paused = False  # our replies are not being read: take no new requests

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        owner = self.owner
        peer = transport.get_extra_info("peername")
        local = _local_name(self.proto, transport.get_extra_info("sockname"))
        self.source = Source(self.proto, peer[0], peer[1], local, self.conid)
        if owner.max_tcp_per_ip and owner.per_ip[peer[0]] >= owner.max_tcp_per_ip:
            owner.note_refused(peer[0], f"{owner.max_tcp_per_ip} connections from it already")
            self.source = None
            transport.close()
            return
        if len(self.connections) >= owner.max_tcp_connections and not owner.evict_unproven():
            owner.note_refused(peer[0], f"{len(self.connections)} connections open (the limit)")
            self.source = None
            transport.close()
            return
        owner.per_ip[peer[0]] += 1
        self.connections[self.conid] = self
        owner.unproven[self.conid] = self
        self._touch()
        self._arm_deadline()  # the first message must come within the read timeout too

    def _touch(self) -> None:
        """Traffic: the connection is not idle for another idle timeout from now."""
        self._heard = asyncio.get_running_loop().time()
        if self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(self.idle_timeout, self._idle_due)

    def _idle_due(self) -> None:
        loop = asyncio.get_running_loop()
        left = self._heard + self.idle_timeout - loop.time()
        if left > 0:
            self._idle = loop.call_later(left, self._idle_due)
        else:
            self._idle = None
            self.close()

    def _arm_deadline(self) -> None:
        """The message being received must be whole within the read timeout from now (a
        deadline already running stands)."""
        if self._due is None:
            loop = asyncio.get_running_loop()
            self._due = loop.time() + self.read_timeout
            if self._deadline is None:
                self._deadline = loop.call_later(self.read_timeout, self._deadline_due)

    def _disarm_deadline(self) -> None:
        self._due = None  # a timer still running finds nothing due

    def _deadline_due(self) -> None:
        self._deadline = None
        if self._due is None:
            return
        loop = asyncio.get_running_loop()
        left = self._due - loop.time()
        if left > 0:
            self._deadline = loop.call_later(left, self._deadline_due)
            return
        self._due = None
        self._too_slow()

    def _too_slow(self) -> None:
        what = "a message" if self.proven else "its first message"
        log.info("closing TCP connection from %s: %s not complete after %gs (%d bytes held)",
                 self.source and self.source.address, what, self.read_timeout, self.framer.buffered)
        self.close()

    def data_received(self, data: bytes) -> None:
        self._touch()
        try:
            messages = self.framer.feed(data)
        except SipError as exc:
            log.info("closing TCP connection from %s: %s", self.source and self.source.address, exc.reason)
            self.close()
            return
        if not self.proven and any(m != KEEPALIVE for m in messages):
            self.proven = True
            self.owner.unproven.pop(self.conid, None)
        if self.proven:
            # Progress made: the message now in the buffer (if any) gets a whole read timeout.
            # (Until a connection has sent a real message, its first deadline stands.)
            if messages or not self.framer.buffered:
                self._disarm_deadline()
            if self.framer.buffered:
                self._arm_deadline()
        self._backlog.extend(messages)
        self._drain()

    def _drain(self) -> None:
        """Hand framed messages to the core: a turn's share, while the in-flight bound allows."""
        self._drain_scheduled = False
        transport, backlog = self.transport, self._backlog
        if transport is None or transport.is_closing():
            backlog.clear()
            return
        for _ in range(MESSAGES_PER_TURN):
            if not backlog or self.in_flight >= MAX_IN_FLIGHT_PER_CONNECTION:
                break
            message = backlog.popleft()
            if message == KEEPALIVE:
                transport.write(b"\r\n")  # the pong of RFC 5626 §4.4.1 (CRLF ping on TCP and TLS)
                continue
            self.in_flight += 1
            self.receive(message, self.source, self._respond)  # type: ignore[arg-type]
        if backlog and self.in_flight < MAX_IN_FLIGHT_PER_CONNECTION:
            self._schedule_drain()
        self._pace_reading()

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _respond(self, reply: Reply | None) -> None:
        self.in_flight -= 1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if reply is not None:
            # Replies finished together (a group commit) go out in one write, not one each.
            if not self._unsent:
                asyncio.get_running_loop().call_soon(self._flush)
            self._unsent.append(reply[0])
        if self._reading_paused and self.in_flight <= MAX_IN_FLIGHT_PER_CONNECTION // 2:
            if self._backlog:
                self._schedule_drain()
            else:
                self._pace_reading()

    def _pace_reading(self) -> None:
        """Read while the backlog is handed over, fewer than the maximum requests are in
        flight, and our replies are taken."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        busy = self.in_flight >= MAX_IN_FLIGHT_PER_CONNECTION or (
            self._reading_paused and self.in_flight > MAX_IN_FLIGHT_PER_CONNECTION // 2)
        pause = busy or self._writing_paused or bool(self._backlog)
        if pause and not self._reading_paused:
            transport.pause_reading()
        elif not pause and self._reading_paused:
            transport.resume_reading()
        self._reading_paused = pause

    def pause_writing(self) -> None:
        """asyncio: our write buffer is over its high-water mark (the peer reads slowly)."""
        self._writing_paused = True
        self._pace_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._pace_reading()

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, []
        if self.transport is not None and not self.transport.is_closing():
            self.write_messages(unsent)

    def write_messages(self, messages: list[bytes]) -> None:
        """Send whole SIP messages: on a byte stream, one write for all of them."""
        self.transport.write(b"".join(messages))  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self.owner
        owner.unproven.pop(self.conid, None)
        if self.connections.pop(self.conid, None) is not None and self.source is not None:
            owner.per_ip[self.source.ip] -= 1
            if not owner.per_ip[self.source.ip]:
                del owner.per_ip[self.source.ip]
        if self._idle is not None:
            self._idle.cancel()
        if self._deadline is not None:
            self._deadline.cancel()
        if self.proven and self.source is not None and self.proto in FLOW_TRANSPORTS and owner.flow_closed:
            owner.flow_closed(self.source)


UDP_RECEIVE_BUFFER = 4 << 20  # room for bursts of hundreds of REGISTERs while a commit is on


_BIND_HINTS = {
    errno.EADDRINUSE: " (another program, perhaps another registrar, has it: stop it or pick another port with --listen)",
    errno.EACCES: " (ports below 1024 need root or CAP_NET_BIND_SERVICE: pick a port above 1023 with --listen)",
    errno.EADDRNOTAVAIL: " (no interface of this machine has that address: see `ip addr`, or listen on 0.0.0.0)",
}


def _bound_udp_socket(host: str, port: int, family: socket.AddressFamily) -> socket.socket:
    """A UDP socket bound here rather than by the event loop: uvloop's bind error drops the
    errno ("could not bind"), and the operator needs to read "address already in use"."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _grow_receive_buffer(sock: socket.socket | None) -> None:
    """A bigger UDP receive buffer: the default (~208 KiB) overflows under a burst, and
    every drop costs the phone a 500 ms retransmission. Beyond net.core.rmem_max this
    needs CAP_NET_ADMIN (SO_RCVBUFFORCE); without it the kernel's cap applies."""
    if sock is None:
        return
    force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
    for option in (force, socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_RECEIVE_BUFFER)
            return
        except OSError:
            continue


class Transports:
    """Every listening socket of the registrar."""

    def __init__(self, receive: Receiver, limits: Limits, tcp_idle_timeout: float,
                 max_tcp_per_ip: int = 0, *, tcp_read_timeout: float | None = None,
                 max_tcp_connections: int | None = None, config: Config | None = None) -> None:
        self.receive = receive
        self.config = config or Config()  # TLS and WebSocket settings
        self.flow_closed: FlowClosed | None = None
        # The connection class per stream protocol beyond tcp/tls: registered by whoever wires
        # the transports (server.py registers the WebSocket one for ws: and wss:).
        self.connection_types: dict[str, Callable[[Transports, str], TcpConnection]] = {}
        self._tls: ssl.SSLContext | None = None
        self.limits = limits
        self.tcp_idle_timeout = tcp_idle_timeout
        # Unless given: Kamailio's 20 s, or the idle timeout when that is shorter.
        self.tcp_read_timeout = (min(DEFAULT_TCP_READ_TIMEOUT, tcp_idle_timeout)
                                 if tcp_read_timeout is None else tcp_read_timeout)
        self.max_tcp_per_ip = max_tcp_per_ip
        self.max_tcp_connections = (default_max_tcp_connections()
                                    if max_tcp_connections is None else max_tcp_connections)
        self.connections: dict[int, TcpConnection] = {}
        # Connections that have not delivered a whole message yet, oldest first.
        self.unproven: dict[int, TcpConnection] = {}
        self.refused = 0  # connections closed at once: per-IP or global cap reached
        self._refusal_logged = 0.0
        self.per_ip: Counter[str] = Counter()
        self.addresses: list[str] = []
        self._udp_by_name: dict[str, UdpListener] = {}
        self._tcp: list[asyncio.base_events.Server] = []
        self._tls_acceptors: list[Any] = []  # tls.TlsAcceptor, loaded with the first tls:/wss: listener
        self.handshaking: Counter[str] = Counter()  # TLS handshakes under way, per source IP
        self.handshakes = 0

    async def listen(self, spec: Listen) -> str:
        """Open one listener; returns its real address (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        try:
            if spec.proto == "udp":
                sock = _bound_udp_socket(spec.host, spec.port, family)
                _grow_receive_buffer(sock)
                address = _local_name("udp", sock.getsockname())
                listener = UdpListener(sock, address, self.receive)
                listener.start(loop)
                self._udp_by_name[address] = listener
            elif spec.proto in ("tls", "wss"):
                from .tls import TlsAcceptor, listening_socket

                acceptor = TlsAcceptor(listening_socket(spec.host, spec.port, family), self._context(),
                                       self._connection_factory(spec.proto), self)
                acceptor.start()
                self._tls_acceptors.append(acceptor)
                address = _local_name(spec.proto, acceptor.getsockname())
            else:
                server = await loop.create_server(
                    self._connection_factory(spec.proto), spec.host, spec.port, family=family,
                    reuse_address=True, backlog=1024)
                self._tcp.append(server)
                address = _local_name(spec.proto, server.sockets[0].getsockname())
        except OSError as exc:
            hint = _BIND_HINTS.get(exc.errno or 0, "")
            raise OSError(f"cannot listen on {spec}: {(exc.strerror or str(exc)).lower()}{hint}") from None
        self.addresses.append(address)
        return address

    def _connection_factory(self, proto: str) -> Callable[[], TcpConnection]:
        kind = self.connection_types.get(proto, TcpConnection)
        return lambda: kind(self, proto)

    def _context(self) -> ssl.SSLContext:
        """One server context for every tls: and wss: listener, made at the first of them."""
        if self._tls is None:
            from .tls import server_context

            config = self.config
            self._tls = server_context(config.tls_cert, config.tls_key, config.tls_ca)
        return self._tls

    def admit_handshake(self, ip: str) -> bool:
        """A TLS connection just accepted: within the caps, counting handshakes under way?"""
        if self.max_tcp_per_ip and self.per_ip[ip] + self.handshaking[ip] >= self.max_tcp_per_ip:
            self.note_refused(ip, f"{self.max_tcp_per_ip} connections from it already")
            return False
        if len(self.connections) + self.handshakes >= self.max_tcp_connections and not self.evict_unproven():
            self.note_refused(ip, f"{len(self.connections) + self.handshakes} connections open (the limit)")
            return False
        self.handshaking[ip] += 1
        self.handshakes += 1
        return True

    def handshake_done(self, ip: str) -> None:
        """The handshake finished or failed: the connection counts as established, or not at all."""
        self.handshakes -= 1
        self.handshaking[ip] -= 1
        if not self.handshaking[ip]:
            del self.handshaking[ip]

    def evict_unproven(self) -> bool:
        """At the global cap: close the oldest connection that never sent a whole message."""
        for conid, conn in self.unproven.items():
            if conn.transport is not None and not conn.transport.is_closing():
                del self.unproven[conid]
                log.info("closing TCP connection from %s to make room: no message yet",
                         conn.source and conn.source.address)
                conn.close()
                # connection_lost comes later: forget it now so the count has room.
                self.connections.pop(conid, None)
                if conn.source is not None:
                    self.per_ip[conn.source.ip] -= 1
                    if not self.per_ip[conn.source.ip]:
                        del self.per_ip[conn.source.ip]
                return True
        return False

    def note_refused(self, ip: str, why: str) -> None:
        """A connection closed at once; logged at most every 10 s (an attack sends thousands)."""
        self.refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= 10.0:
            self._refusal_logged = now
            log.warning("refusing TCP connection from %s: %s (%d refused so far)", ip, why, self.refused)

    def send(self, local: str, conid: int | None, addr: tuple[str, int], data: bytes) -> bool:
        """Send a request from the socket named ``local`` (or on TCP connection ``conid``)."""
        if conid is not None:
            conn = self.connections.get(conid)
            if conn is None or conn.transport is None or conn.transport.is_closing():
                return False
            conn.write_messages([data])
            return True
        listener = self._udp_by_name.get(local)
        return listener is not None and listener.sendto(data, addr)

    async def close(self) -> None:
        for listener in self._udp_by_name.values():
            listener.close()
        for server in self._tcp:
            server.close()
        for acceptor in self._tls_acceptors:
            await acceptor.close()
        self._tls_acceptors.clear()
        for conn in list(self.connections.values()):
            conn.close()
        for server in self._tcp:
            await server.wait_closed()
        self._udp_by_name.clear()
        self._tcp.clear()

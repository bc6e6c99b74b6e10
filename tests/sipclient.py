"""A small SIP user agent for tests: real UDP/TCP/TLS/WebSocket sockets on 127.0.0.1, real bytes."""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field

from registrar_core.auth import digest
from registrar_core.sip import Request, Response, build_response, parse_message
from registrar_core.source import parse_address

_counter = itertools.count(1)


def register_bytes(
    aor: str,
    contacts: list[str] | None,
    *,
    local: tuple[str, int],
    transport: str = "UDP",
    call_id: str | None = None,
    cseq: int = 1,
    expires: int | None = 3600,
    extra: list[str] | None = None,
    registrar: str | None = None,
    branch: str | None = None,
) -> bytes:
    """A REGISTER for ``aor`` (``user@domain``) with the given Contact values (None: a query)."""
    domain = aor.split("@", 1)[1]
    host, port = local
    lines = [
        f"REGISTER sip:{registrar or domain} SIP/2.0",
        f"Via: SIP/2.0/{transport} {host}:{port};branch={branch or 'z9hG4bK' + secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        f"From: <sip:{aor}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{aor}>",
        f"Call-ID: {call_id or secrets.token_hex(8) + '@test'}",
        f"CSeq: {cseq} REGISTER",
    ]
    lines += [f"Contact: {c}" for c in contacts or ()]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += extra or []
    lines += ["User-Agent: sipconsole-tests", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def request_bytes(method: str, target: str, from_aor: str, *, local: tuple[str, int],
                  call_id: str | None = None, extra: list[str] | None = None) -> bytes:
    """An out-of-dialog request (INVITE, OPTIONS, MESSAGE...) to ``target`` (a SIP URI)."""
    host, port = local
    lines = [
        f"{method} {target} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        f"From: <sip:{from_aor}>;tag={secrets.token_hex(4)}",
        f"To: <{target}>",
        f"Call-ID: {call_id or secrets.token_hex(8) + '@test'}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:{from_aor.split('@')[0]}@{host}:{port}>",
        *(extra or []),
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.queue.put_nowait(data)


class UdpPeer(asyncio.DatagramProtocol):
    """A UDP endpoint on its own loopback socket (subclasses answer what they receive)."""

    transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, *args, **kw):
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(lambda: cls(*args, **kw), local_addr=("127.0.0.1", 0))
        return peer

    def connection_made(self, transport) -> None:
        self.transport = transport

    @property
    def address(self) -> tuple[str, int]:
        return self.transport.get_extra_info("sockname")[:2]


class Device(UdpPeer):
    """A UDP device on its own socket: answers OPTIONS with ``status`` (None: never answers;
    a test may change it to make the device stop or start answering)."""

    def __init__(self, status: int | None = 200, *, skip_first: int = 0, delay: float = 0.0) -> None:
        self.status = status
        self.skip_first = skip_first
        self.delay = delay
        self.options: list[tuple[Request, tuple, float]] = []
        self.responses: asyncio.Queue = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        message = parse_message(data)
        if not isinstance(message, Request):
            self.responses.put_nowait(message)
            return
        self.options.append((message, addr, time.monotonic()))
        if self.status is None or len(self.options) <= self.skip_first:
            return
        reply = bytes(build_response(message, self.status, "OK" if self.status == 200 else "Nope", to_tag="dev"))
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, reply, addr)
        else:
            self.transport.sendto(reply, addr)

    async def register(self, registrar: tuple[str, int], aor: str, contact: str | None = None,
                       extra: list[str] | None = None) -> None:
        host, port = self.address
        contact = contact or f"<sip:dev@{host}:{port}>"
        self.transport.sendto(register_bytes(aor, [contact], local=self.address, extra=extra), registrar)
        response = await asyncio.wait_for(self.responses.get(), 3)
        assert response.status == 200, response

    def close(self) -> None:
        self.transport.close()


@dataclass
class UdpPhone:
    """A device on its own UDP socket: ``await phone.send(bytes)`` returns the parsed response."""

    server: tuple[str, int]
    transport: asyncio.DatagramTransport | None = None
    protocol: Collector = field(default_factory=Collector)

    async def open(self, host: str = "127.0.0.1") -> UdpPhone:
        """Bind the phone's socket on ``host`` (another loopback address is another source)."""
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self.protocol, local_addr=(host, 0))
        return self

    @property
    def local(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    @property
    def contact(self) -> str:
        host, port = self.local
        return f"<sip:phone@{host}:{port}>"

    def send_raw(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.server)

    async def receive_raw(self, timeout: float = 3.0) -> bytes:
        return await asyncio.wait_for(self.protocol.queue.get(), timeout)

    async def receive(self, timeout: float = 3.0) -> Response:
        message = parse_message(await self.receive_raw(timeout))
        assert isinstance(message, Response), message
        return message

    async def send(self, data: bytes, timeout: float = 3.0) -> Response:
        self.send_raw(data)
        return await self.receive(timeout)

    async def register(self, aor: str, contacts: list[str] | None = None, **kw) -> Response:
        contacts = [self.contact] if contacts is None else contacts
        return await self.send(register_bytes(aor, contacts, local=self.local, **kw))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _WatcherProtocol(asyncio.DatagramProtocol):
    """Sorts what arrives into requests and responses; answers each request with
    ``answer_with`` (None: leaves it unanswered, as a watcher that went away)."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[Request] = asyncio.Queue()
        self.responses: asyncio.Queue[Response] = asyncio.Queue()
        self.answer_with: int | None = 200
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        message = parse_message(data)
        if isinstance(message, Response):
            self.responses.put_nowait(message)
            return
        self.requests.put_nowait(message)
        if self.answer_with is not None and self.transport is not None:
            reason = {200: "OK", 481: "Subscription Does Not Exist"}.get(self.answer_with, "Error")
            self.transport.sendto(bytes(build_response(message, self.answer_with, reason)), addr)


class UdpWatcher:
    """A reg event subscriber on its own UDP socket: one dialog, its NOTIFYs answered 200."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.protocol = _WatcherProtocol()
        self.call_id = secrets.token_hex(8) + "@watcher"
        self.from_tag = secrets.token_hex(4)
        self.to_tag: str | None = None
        self.cseq = 0

    async def open(self) -> UdpWatcher:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self.protocol, local_addr=("127.0.0.1", 0))
        return self

    @property
    def local(self) -> tuple[str, int]:
        assert self.protocol.transport is not None
        return self.protocol.transport.get_extra_info("sockname")[:2]

    def subscribe_bytes(self, aor: str, expires: int | None = 600, *, event: str = "reg",
                        accept: str = "application/reginfo+xml", extra: list[str] | None = None,
                        from_aor: str = "watcher@example.net") -> bytes:
        """The next SUBSCRIBE of this dialog (in-dialog once a 200 gave it a To tag)."""
        self.cseq += 1
        host, port = self.local
        to_tag = f";tag={self.to_tag}" if self.to_tag else ""
        lines = [
            f"SUBSCRIBE sip:{aor} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            f"From: <sip:{from_aor}>;tag={self.from_tag}",
            f"To: <sip:{aor}>{to_tag}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} SUBSCRIBE",
            f"Contact: <sip:watcher@{host}:{port}>",
            f"Event: {event}",
            f"Accept: {accept}",
        ]
        if expires is not None:
            lines.append(f"Expires: {expires}")
        lines += [*(extra or []), "Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    async def subscribe(self, aor: str, expires: int | None = 600, **kw) -> Response:
        """SUBSCRIBE and its final response; a 200's To tag makes the dialog."""
        assert self.protocol.transport is not None
        self.protocol.transport.sendto(self.subscribe_bytes(aor, expires, **kw), self.server)
        response = await asyncio.wait_for(self.protocol.responses.get(), 5.0)
        if response.status == 200 and self.to_tag is None:
            self.to_tag = response.to.tag
        return response

    async def notify(self, timeout: float = 5.0) -> Request:
        return await asyncio.wait_for(self.protocol.requests.get(), timeout)

    def close(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.close()


class TcpPhone:
    """A device on one TCP (or, given a client context, TLS) connection; responses are
    framed by Content-Length."""

    def __init__(self, server: tuple[str, int], tls: ssl.SSLContext | None = None) -> None:
        self.server = server
        self.tls = tls
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> TcpPhone:
        self.reader, self.writer = await asyncio.open_connection(
            *self.server, ssl=self.tls, server_hostname="localhost" if self.tls else None)
        return self

    @property
    def local(self) -> tuple[str, int]:
        assert self.writer is not None
        return self.writer.get_extra_info("sockname")[:2]

    async def send(self, data: bytes, timeout: float = 3.0) -> Response:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()
        return await self.receive(timeout)

    async def receive(self, timeout: float = 3.0) -> Response:
        assert self.reader is not None
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"content-length", b"l"):
                length = int(value)
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout) if length else b""
        message = parse_message(head + body)
        assert isinstance(message, Response)
        return message

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WsPhone:
    """A device on one WebSocket connection (RFC 7118, over TLS given a client context):
    the handshake and framing are wsproto's, as the server's, each SIP message one WS message."""

    def __init__(self, server: tuple[str, int], tls: ssl.SSLContext | None = None, *, path: str = "/",
                 subprotocols: tuple[str, ...] = ("sip",), origin: str | None = None) -> None:
        from wsproto import ConnectionType, WSConnection

        self.server, self.tls, self.path = server, tls, path
        self.subprotocols, self.origin = list(subprotocols), origin
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.messages: list[bytes] = []
        self.closed_with: int | None = None  # the close code the server sent
        self.status: int | None = None  # the handshake's HTTP status (101: accepted)

    async def open(self, timeout: float = 5.0) -> WsPhone:
        """Connect and handshake; ``status`` says whether the server accepted."""
        from wsproto.events import Request

        self.reader, self.writer = await asyncio.open_connection(
            *self.server, ssl=self.tls, server_hostname="localhost" if self.tls else None)
        headers = [(b"origin", self.origin.encode())] if self.origin else []
        self.writer.write(self.ws.send(Request(host="localhost", target=self.path,
                                               subprotocols=self.subprotocols, extra_headers=headers)))
        deadline = asyncio.get_running_loop().time() + timeout
        while self.status is None:
            await self._pump(deadline - asyncio.get_running_loop().time())
        return self

    async def _pump(self, timeout: float) -> None:
        from wsproto.events import (AcceptConnection, CloseConnection, Message, Ping,
                                    RejectConnection)

        assert self.reader is not None and self.writer is not None
        data = await asyncio.wait_for(self.reader.read(65536), max(timeout, 0.01))
        if not data:
            raise ConnectionError("the server closed the connection")
        self.ws.receive_data(data)
        parts: list[bytes] = []
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.status = 101
            elif isinstance(event, RejectConnection):
                self.status = event.status_code
            elif isinstance(event, Message):
                parts.append(event.data.encode() if isinstance(event.data, str) else bytes(event.data))
                if event.message_finished:
                    self.messages.append(b"".join(parts))
                    parts = []
            elif isinstance(event, Ping):
                self.writer.write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closed_with = event.code

    def send_raw(self, data: bytes, *, text: bool = True) -> None:
        from wsproto.events import BytesMessage, TextMessage

        assert self.writer is not None
        self.writer.write(self.ws.send(TextMessage(data.decode()) if text else BytesMessage(data)))

    async def send(self, data: bytes, timeout: float = 3.0) -> Response:
        self.send_raw(data)
        return await self.receive(timeout)

    async def receive(self, timeout: float = 3.0) -> Response:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.messages:
            if self.closed_with is not None:
                raise ConnectionError(f"closed by the server with {self.closed_with}")
            await self._pump(deadline - asyncio.get_running_loop().time())
        message = parse_message(self.messages.pop(0))
        assert isinstance(message, Response)
        return message

    @property
    def local(self) -> tuple[str, int]:
        assert self.writer is not None
        return self.writer.get_extra_info("sockname")[:2]

    async def close(self) -> None:
        """A clean close: a close frame (1000), then the connection."""
        from wsproto.events import CloseConnection

        if self.writer is not None:
            try:
                self.writer.write(self.ws.send(CloseConnection(code=1000)))
            except Exception:
                pass
            self.writer.close()


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 at the moment of asking."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def next_aor(prefix: str = "user") -> str:
    return f"{prefix}{next(_counter)}@example.com"


def challenges(r: Response) -> list[dict[str, str]]:
    """The parameters of each WWW-Authenticate challenge, in order."""
    out = []
    for value in r.headers.get_all("WWW-Authenticate"):
        assert value.startswith("Digest ")
        out.append({k.lower(): v for k, v in re.findall(r'(\w+)="?([^",]*)"?', value[7:])})
    return out


def authorization(ch: dict[str, str], user: str, password: str, uri: str, *, nc: int = 1,
                  algorithm: str | None = None, realm: str | None = None, nonce: str | None = None,
                  method: str = "REGISTER") -> str:
    """An Authorization header line answering challenge ``ch`` (qop=auth) for a ``method`` to ``uri``."""
    algorithm = algorithm or ch["algorithm"]
    realm = realm or ch["realm"]
    nonce = nonce or ch["nonce"]
    cnonce = secrets.token_hex(4)
    h1 = digest.ha1(algorithm, user, realm, password)
    resp = digest.response(algorithm, h1, nonce, f"{nc:08x}", cnonce, "auth", method, uri)
    return (f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{resp}", algorithm={algorithm}, qop=auth, nc={nc:08x}, cnonce="{cnonce}"')


def server_address(srv, proto: str = "udp") -> tuple[str, int]:
    """(host, port) of an in-process server's first listener for ``proto``."""
    for address in srv.core.listening:
        p, host, port = parse_address(address)
        if p == proto:
            return host, port
    raise LookupError(proto)


async def query(serve, aor: str) -> list[str]:
    """A REGISTER without Contact to a `sipconsole serve`: the bindings a phone is told about."""
    phone = await UdpPhone(("127.0.0.1", serve.port)).open()
    try:
        r = await phone.send(register_bytes(aor, None, local=phone.local, expires=None))
    finally:
        phone.close()
    assert r.status == 200
    return [str(c.uri) for c in r.contacts]

"""SIP over WebSocket (RFC 7118): the ws: and wss: listeners' connections.

The framing is wsproto's: sans-IO like our SIP layer (bytes in, events out, bytes to send),
so it plugs into the same asyncio Protocol as TCP and keeps every defence of TcpConnection
(caps, timeouts, paced reading, bounded in-flight requests) under our control; the
`websockets` package would own the socket, its own buffers and tasks. It implements RFC 6455
completely (masking, fragmentation, control frames, close handshake) and is kept by the
python-hyper project (h11, h2).
"""

from __future__ import annotations

import asyncio
import logging

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping,
                            RejectConnection, Request, TextMessage)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

from .transport import TcpConnection, Transports

log = logging.getLogger(__name__)

SUBPROTOCOL = "sip"  # RFC 7118 §4.1: the only one we speak; a handshake without it is refused


class WebSocketConnection(TcpConnection):
    """One WebSocket connection: each WebSocket message is one SIP message (RFC 7118 §5),
    replies go back as text messages on the same connection.

    The handshake must finish within --tls-handshake-timeout; its request must name the
    --ws-path, offer the `sip` subprotocol and, with --ws-origins, come from an allowed
    Origin. A message (however fragmented) over --max-message-size closes the connection
    with 1009 before more of it is buffered."""

    def __init__(self, owner: Transports, proto: str) -> None:
        super().__init__(owner, proto)
        self.ws = WSConnection(ConnectionType.SERVER)
        self.open = False  # the handshake was accepted
        self._parts: list[bytes] = []
        self._size = 0  # bytes of the message being received
        self._handshake: asyncio.TimerHandle | None = None
        self._pinged = False  # a ping is out since the last traffic

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.source is not None:
            self._handshake = asyncio.get_running_loop().call_later(
                self.owner.config.tls_handshake_timeout, self._handshake_too_slow)

    def _touch(self) -> None:
        """Idle for half the idle timeout: a ping (browsers answer it, their pong counts as
        traffic); idle for the other half too: closed. A browser phone sends nothing between
        re-registrations, and JsSIP's 600 s come close to the 600 s idle timeout."""
        self._pinged = False
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self.idle_timeout / 2, self._idle_half)

    def _idle_half(self) -> None:
        if self._pinged or not self.open:
            self.close()
            return
        self._pinged = True
        self._send(Ping(payload=b"sipconsole"))
        self._idle = asyncio.get_running_loop().call_later(self.idle_timeout / 2, self._idle_half)

    def _handshake_too_slow(self) -> None:
        log.info("closing WebSocket connection from %s: no handshake after %gs",
                 self.source and self.source.address, self.owner.config.tls_handshake_timeout)
        self.close()

    def data_received(self, data: bytes) -> None:
        self._touch()
        try:
            self.ws.receive_data(data)
            messages = self._messages()
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            self._refuse(hint.status_code if isinstance(hint, RejectConnection) else 400, str(exc))
            return
        if messages and not self.proven:
            self.proven = True
            self.owner.unproven.pop(self.conid, None)
        if self.proven:
            self._disarm_deadline()
            if self._parts:
                self._arm_deadline()  # the rest of this message within the read timeout
        if messages:
            self._backlog.extend(messages)
            self._drain()

    def _messages(self) -> list[bytes]:
        """Run wsproto's events: answer the handshake, pings and close; whole messages out."""
        whole: list[bytes] = []
        for event in self.ws.events():
            if isinstance(event, Request):
                self._handshake_request(event)
            elif isinstance(event, Message):
                payload = event.data.encode() if isinstance(event, TextMessage) else bytes(event.data)
                self._size += len(payload)
                if self._size > self.owner.limits.max_message_size:
                    self._close(CloseReason.MESSAGE_TOO_BIG,
                                f"message over {self.owner.limits.max_message_size} bytes")
                    return []
                self._parts.append(payload)
                if event.message_finished:
                    message = b"".join(self._parts)
                    self._parts, self._size = [], 0
                    if message.strip(b"\r\n"):  # a bare CRLF is no SIP message; WS has Ping
                        whole.append(message)
            elif isinstance(event, Ping):
                self._send(event.response())
            elif isinstance(event, CloseConnection):
                if self.ws.state.name == "REMOTE_CLOSING":
                    self._send(event.response())
                self.close()
                return []
        return whole

    def _handshake_request(self, request: Request) -> None:
        config = self.owner.config
        origin = next((v.decode("latin-1") for k, v in request.extra_headers if k.lower() == b"origin"), None)
        path = request.target.partition("?")[0]
        if path != config.ws_path:
            self._refuse(404, f"path {path!r} (serving {config.ws_path})")
        elif SUBPROTOCOL not in request.subprotocols:
            self._refuse(400,
                         f"subprotocols {request.subprotocols or 'none'} (RFC 7118 needs 'sip')")
        elif config.ws_origins and origin not in config.ws_origins:
            self._refuse(403, f"Origin {origin!r} not in --ws-origins")
        else:
            self._send(AcceptConnection(subprotocol=SUBPROTOCOL))
            self.open = True
            if self._handshake is not None:
                self._handshake.cancel()
                self._handshake = None

    def _refuse(self, status: int, why: str) -> None:
        log.info("refusing WebSocket handshake from %s: %s", self.source and self.source.address, why)
        try:
            self._send(RejectConnection(status_code=status, headers=[(b"content-length", b"0")]))
        except Exception:  # the handshake was too broken for wsproto to answer it at all
            pass
        self.close()

    def _close(self, code: CloseReason, why: str) -> None:
        log.info("closing WebSocket connection from %s: %s", self.source and self.source.address, why)
        self._send(CloseConnection(code=code, reason=why))
        self.close()

    def _send(self, event: object) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(self.ws.send(event))  # type: ignore[arg-type]

    def write_messages(self, messages: list[bytes]) -> None:
        """Each SIP message its own WebSocket message: text when it is UTF-8 (what browser
        stacks expect), binary otherwise (RFC 7118 §5 allows both)."""
        if not self.open:
            return
        frames = []
        for message in messages:
            try:
                frames.append(self.ws.send(TextMessage(data=message.decode("utf-8"))))
            except UnicodeDecodeError:
                frames.append(self.ws.send(BytesMessage(data=message)))
        self.transport.write(b"".join(frames))  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake is not None:
            self._handshake.cancel()
        super().connection_lost(exc)

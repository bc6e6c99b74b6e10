"""The UDP listener: datagrams read straight from a non-blocking socket, replies sent on it.

Why not an asyncio DatagramProtocol: its transport reads 32 datagrams per wake-up and calls
back into Python once per datagram, and this module is compiled (setup.py) where a protocol
subclass cannot be. One wake-up here reads what the socket holds, up to
``DATAGRAMS_PER_WAKE``, so a burst that arrived during a group commit is parsed before the
next commit starts and joins it (fewer, larger commits under load; nothing waits when idle).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from .source import Source
from .transactions import Reply

log = logging.getLogger(__name__)

# The core's entry point (transport.py's Receiver).
Receive = Callable[[bytes, Source, Callable[[Reply | None], None]], None]
# Datagrams read per wake-up: enough to take in what arrives during a group commit at full
# load (about 100-200), few enough that TCP connections and timers get their turn meanwhile.
DATAGRAMS_PER_WAKE = 256
# Datagrams being handled at once; more are dropped (UDP is lossy, senders retransmit):
# a flood during a storage stall cannot pile up requests without bound.
MAX_UDP_IN_FLIGHT = 5_000
MAX_DATAGRAM = 65_535


class UdpListener:
    """One bound UDP socket: reads datagrams into the core and sends what it answers."""

    def __init__(self, sock: socket.socket, local: str, receive: Receive) -> None:
        self.sock = sock
        self.local = local  # Kamailio style: "udp:127.0.0.1:5060"
        self.receive = receive
        self.max_in_flight = MAX_UDP_IN_FLIGHT
        self.per_wake = DATAGRAMS_PER_WAKE
        self.in_flight = 0  # datagrams handed to the core and not answered yet
        self.dropped = 0  # datagrams dropped at the in-flight bound
        self.unsent = 0  # replies the socket refused (full send buffer, unreachable network)
        self._drop_logged = self._send_logged = 0.0
        # Any: uvloop's remove_reader returns None where asyncio's types say bool, and compiled
        # code checks declared return types.
        self._loop: Any = None
        self._respond: Callable[[Reply | None], None] = self.respond  # one bound method, not one per datagram

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        recvfrom, receive, respond, local = self.sock.recvfrom, self.receive, self._respond, self.local
        for _ in range(self.per_wake):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error reported on the socket: nothing to read
                log.debug("UDP error: %s", exc)
                return
            if self.in_flight >= self.max_in_flight:
                self._drop()
                continue
            self.in_flight += 1
            receive(data, Source("udp", addr[0], addr[1], local), respond)

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._drop_logged >= 10.0:
            self._drop_logged = now
            log.warning("%d datagrams in progress: dropping new ones (%d so far)", self.in_flight, self.dropped)

    def respond(self, reply: Reply | None) -> None:
        """The core's answer to one datagram (None: nothing to send)."""
        self.in_flight -= 1
        if reply is not None:
            self.sendto(reply[0], reply[1])

    def sendto(self, payload: bytes, addr: tuple[str, int]) -> bool:
        """Send one datagram; False when it cannot go. A full send buffer drops it, as the
        network would: the client retransmits, and the transaction table answers again."""
        try:
            self.sock.sendto(payload, addr)
        except OSError as exc:
            self.unsent += 1
            now = time.monotonic()
            if now - self._send_logged >= 10.0:
                self._send_logged = now
                log.warning("cannot send to %s:%s: %s (%d not sent so far)", addr[0], addr[1], exc, self.unsent)
            return False
        return True

    def close(self) -> None:
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

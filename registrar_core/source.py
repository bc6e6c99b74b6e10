"""Where a request came from and which of our sockets took it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Source:
    """One request's origin; made per datagram, so not frozen (4x cheaper); never mutated."""

    proto: str  # "udp" or "tcp"
    ip: str
    port: int
    local: str  # our socket, Kamailio style: "udp:127.0.0.1:5060"
    conid: int | None = None  # the TCP connection, for replies and flow matching

    def __init__(self, proto: str, ip: str, port: int, local: str, conid: int | None = None) -> None:
        self.proto = proto  # written out: compiled (setup.py)
        self.ip = ip
        self.port = port
        self.local = local
        self.conid = conid

    @property
    def address(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{self.proto}:{host}:{self.port}"

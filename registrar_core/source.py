"""Where a request came from and which of our sockets took it, and the one spelling of a
transport address, Kamailio style: ``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


def format_address(proto: str, host: str, port: int) -> str:
    """``proto:host:port``, an IPv6 host in brackets."""
    if ":" in host:
        return f"{proto}:[{host}]:{port}"
    return f"{proto}:{host}:{port}"


def parse_address(text: str) -> tuple[str, str, int]:
    """``udp:127.0.0.1:5060`` / ``tcp:[::1]:5060`` -> (proto, host, port); ValueError when the
    port is not a number."""
    proto, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    return proto.lower(), host.strip("[]"), int(port)


class _LastAddress:
    """The address last formatted for a Source, as (proto, ip, port, text): REGISTERs often
    come one after another from one address (an edge proxy or an SBC in front, a NAT), and
    comparing with it is a fraction of formatting (compiled, about 1,100 instructions: an
    f-string with an int). One tuple, read once: a thread formatting meanwhile cannot mix two."""

    def __init__(self) -> None:
        self.last: tuple[str, str, int, str] = ("", "", -1, "")

    def of(self, proto: str, ip: str, port: int) -> str:
        last = self.last
        if last[2] == port and last[1] == ip and last[0] == proto:
            return last[3]
        text = format_address(proto, ip, port)
        self.last = (proto, ip, port, text)
        return text


_LAST_ADDRESS: Final = _LastAddress()


@dataclass(slots=True, init=False)
class Source:
    """One request's origin; made per datagram, so not frozen (4x cheaper); never mutated."""

    proto: str  # "udp" or "tcp"
    ip: str
    port: int
    local: str  # our socket, Kamailio style: "udp:127.0.0.1:5060"
    conid: int | None  # the TCP connection, for replies and flow matching

    def __init__(self, proto: str, ip: str, port: int, local: str, conid: int | None = None) -> None:
        self.proto = proto  # written out: compiled (setup.py)
        self.ip = ip
        self.port = port
        self.local = local
        self.conid = conid

    @property
    def address(self) -> str:
        return _LAST_ADDRESS.of(self.proto, self.ip, self.port)

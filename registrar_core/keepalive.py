"""NAT keepalives that arrive on a SIP UDP port and are not SIP (RFC 5626 §3.5.1, §4.4.1).

Phones keep their NAT binding open with a bare CRLF (or CRLFCRLF) every 30 s or so, or with a
STUN Binding request (RFC 5389) that also tells them their public address. Neither is a
malformed SIP message: a CRLF is dropped silently, a Binding request gets a Binding success
response carrying XOR-MAPPED-ADDRESS.
"""

from __future__ import annotations

import ipaddress
import struct

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
_HEADER = struct.Struct("!HHI12s")  # type, length, magic cookie, transaction id


def is_crlf_keepalive(data: bytes) -> bool:
    """A datagram of only CR and LF (RFC 5626 §3.5.1 sends CRLFCRLF, many phones one CRLF)."""
    return bool(data) and not data.strip(b"\r\n")


def stun_binding_response(data: bytes, ip: str, port: int) -> bytes | None:
    """The Binding success response to a STUN Binding request from ``ip``:``port``; None
    when ``data`` is not a well-formed Binding request (nothing is sent then)."""
    if len(data) < _HEADER.size:
        return None
    kind, length, cookie, transaction = _HEADER.unpack_from(data)
    if (kind != BINDING_REQUEST or cookie != MAGIC_COOKIE or length % 4
            or len(data) != _HEADER.size + length):
        return None
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        family, mask = 0x01, struct.pack("!I", MAGIC_COOKIE)
    else:
        family, mask = 0x02, struct.pack("!I", MAGIC_COOKIE) + transaction
    xored = bytes(a ^ b for a, b in zip(address.packed, mask))
    value = struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xored
    attribute = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    return _HEADER.pack(BINDING_SUCCESS, len(attribute), MAGIC_COOKIE, transaction) + attribute

"""NAT keepalives on the SIP UDP port (RFC 5626): CRLF dropped and counted, STUN Binding answered.
Raw sockets on loopback; the STUN reply is decoded here by hand, independently of the server's code."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from .sipclient import free_port, register_bytes, server_address

COOKIE = 0x2112A442


@pytest.fixture
def raw(server):
    """A plain UDP socket towards the server (bound on 127.0.0.1)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    yield s
    s.close()


async def receive(sock: socket.socket, timeout: float = 3.0) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65535), timeout)


async def test_crlf_keepalives_are_dropped_counted_and_no_parse_error(server, raw):
    target = server_address(server)
    for ping in (b"\r\n", b"\r\n\r\n", b"\n", b"\r\n\r\n\r\n"):
        raw.sendto(ping, target)
    # A REGISTER after them is answered, and is the only thing answered.
    raw.sendto(register_bytes("ka@example.com", ["<sip:ka@127.0.0.1:5999>"], local=raw.getsockname()), target)
    assert (await receive(raw)).startswith(b"SIP/2.0 200 OK")
    with pytest.raises(asyncio.TimeoutError):
        await receive(raw, timeout=0.3)
    stats = server.core.snapshot_stats()
    assert (stats["keepalives"], stats["parse_errors"]) == (4, 0)


async def test_leading_crlf_before_a_request_is_still_parsed(server, raw):
    data = b"\r\n" + register_bytes("lead@example.com", ["<sip:lead@127.0.0.1:5999>"], local=raw.getsockname())
    raw.sendto(data, server_address(server))
    assert (await receive(raw)).startswith(b"SIP/2.0 200 OK")
    assert server.core.snapshot_stats()["keepalives"] == 0


async def test_stun_binding_request_gets_xor_mapped_address(server, raw):
    transaction = os.urandom(12)
    raw.sendto(struct.pack("!HHI", 0x0001, 0, COOKIE) + transaction, server_address(server))
    answer = await receive(raw)
    kind, length, cookie = struct.unpack_from("!HHI", answer)
    assert (kind, cookie, answer[8:20]) == (0x0101, COOKIE, transaction), "Binding success, same transaction"
    assert length == len(answer) - 20
    attr_type, attr_len = struct.unpack_from("!HH", answer, 20)
    assert (attr_type, attr_len) == (0x0020, 8)
    _, family, xport = struct.unpack_from("!BBH", answer, 24)
    xaddr = struct.unpack_from("!I", answer, 28)[0]
    host, port = raw.getsockname()
    assert family == 0x01
    assert xport ^ (COOKIE >> 16) == port
    assert socket.inet_ntoa(struct.pack("!I", xaddr ^ COOKIE)) == host
    assert server.core.snapshot_stats()["keepalives"] == 1


async def test_stun_over_ipv6_xors_with_the_transaction_id(make_server):
    try:
        srv = await make_server(listen=[f"udp:[::1]:{free_port()}"])
    except OSError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::1", 0))
    s.setblocking(False)
    transaction = os.urandom(12)
    s.sendto(struct.pack("!HHI", 0x0001, 0, COOKIE) + transaction, server_address(srv))
    answer = await receive(s)
    _, family, xport = struct.unpack_from("!BBH", answer, 24)
    mask = struct.pack("!I", COOKIE) + transaction
    address = bytes(a ^ b for a, b in zip(answer[28:44], mask))
    assert family == 0x02 and xport ^ (COOKIE >> 16) == s.getsockname()[1]
    assert socket.inet_ntop(socket.AF_INET6, address) == "::1"
    s.close()


@pytest.mark.parametrize("junk", [
    struct.pack("!HHI", 0x0001, 0, 0xDEADBEEF) + bytes(12),  # no magic cookie: RFC 3489, not answered
    struct.pack("!HHI", 0x0011, 0, COOKIE) + bytes(12),  # a Binding indication: never answered
    struct.pack("!HHI", 0x0001, 8, COOKIE) + bytes(12),  # length says 8 more bytes that are not there
    b"\x00\x01",
])
async def test_other_binary_datagrams_get_nothing_and_count_as_parse_errors(server, raw, junk):
    raw.sendto(junk, server_address(server))
    with pytest.raises(asyncio.TimeoutError):
        await receive(raw, timeout=0.3)
    stats = server.core.snapshot_stats()
    assert (stats["keepalives"], stats["parse_errors"]) == (0, 1)

"""Transports: UDP replies per RFC 3261 §18.2.2, TCP framing and idle timeout, IPv6,
retransmissions, and malformed input that must never hurt the server."""

from __future__ import annotations

import asyncio
import socket

import pytest


from .sipclient import Collector, TcpPhone, UdpPhone, free_port, next_aor, register_bytes, server_address


async def test_retransmission_gets_same_response_and_is_processed_once(server):
    phone = await UdpPhone(server_address(server)).open()
    sub = server.core.subscribe()
    aor = next_aor()
    data = register_bytes(aor, [phone.contact], local=phone.local, branch="z9hG4bKretrans1")
    first = await phone.send(data)
    second = await phone.send(data)
    assert bytes(first) == bytes(second)
    handled = [e for e in sub.drain() if e.kind == "request.handled"]
    assert len(handled) == 1
    assert server.core.snapshot_stats()["retransmissions"] == 1
    phone.close()


async def test_reply_goes_to_rport_and_stamps_received(server):
    phone = await UdpPhone(server_address(server)).open()
    aor = next_aor()
    data = register_bytes(aor, [phone.contact], local=("192.0.2.1", 5999))
    r = await phone.send(data)  # Via says 192.0.2.1:5999, rport makes it come back to us
    via = r.vias[0]
    assert via.received == "127.0.0.1" and via.rport == str(phone.local[1])
    assert server.core.fetch_contacts(aor)[0].received == f"udp:127.0.0.1:{phone.local[1]}"
    phone.close()


async def test_tcp_register_and_keepalive(server):
    phone = await TcpPhone(server_address(server, "tcp")).open()
    aor = next_aor()
    host, port = phone.local
    r = await phone.send(register_bytes(aor, [f"<sip:p@{host}:{port};transport=tcp>"],
                                        local=phone.local, transport="TCP"))
    assert r.status == 200
    contact = server.core.fetch_contacts(aor)[0]
    assert contact.socket.startswith("tcp:") and contact.received == f"tcp:127.0.0.1:{port}"
    assert contact.conid is not None
    phone.writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(phone.reader.readexactly(2), 2) == b"\r\n"
    phone.close()


async def test_tcp_keeps_no_transaction_state_udp_does(server):
    """Over TCP nothing is retransmitted (Timer J is 0 s): its responses are not kept for 32 s."""
    tcp = await TcpPhone(server_address(server, "tcp")).open()
    udp = await UdpPhone(server_address(server)).open()
    before = len(server.core.transactions)
    r = await tcp.send(register_bytes(next_aor(), ["<sip:t@10.0.0.1>"], local=tcp.local, transport="TCP"))
    assert r.status == 200 and len(server.core.transactions) == before
    assert (await udp.send(register_bytes(next_aor(), [udp.contact], local=udp.local))).status == 200
    assert len(server.core.transactions) == before + 1
    tcp.close()
    udp.close()


async def test_tcp_two_messages_in_one_write_answered_in_order(server):
    phone = await TcpPhone(server_address(server, "tcp")).open()
    a, b = next_aor(), next_aor()
    phone.writer.write(register_bytes(a, ["<sip:a@10.0.0.1>"], local=phone.local, transport="TCP")
                       + register_bytes(b, ["<sip:b@10.0.0.1>"], local=phone.local, transport="TCP"))
    first, second = await phone.receive(), await phone.receive()
    assert first.to.uri.aor == a and second.to.uri.aor == b
    phone.close()


async def test_tcp_without_content_length_is_closed(server):
    reader, writer = await asyncio.open_connection(*server_address(server, "tcp"))
    data = register_bytes(next_aor(), ["<sip:a@10.0.0.1>"], local=("127.0.0.1", 1), transport="TCP")
    writer.write(data.replace(b"Content-Length: 0\r\n", b""))
    assert await asyncio.wait_for(reader.read(), 3) == b"", "closed without a reply"
    writer.close()


async def test_idle_tcp_connection_closed(make_server):
    srv = await make_server(tcp_idle_timeout=0.3)
    reader, writer = await asyncio.open_connection(*server_address(srv, "tcp"))
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()


async def test_malformed_datagram_gets_400_and_server_keeps_serving(server):
    phone = await UdpPhone(server_address(server)).open()
    good = next_aor()
    assert (await phone.register(good)).status == 200
    bad = register_bytes(next_aor(), [phone.contact], local=phone.local).replace(b"CSeq: 1 REGISTER", b"CSeq: x REGISTER")
    phone.send_raw(bad)
    assert (await phone.receive_raw()).startswith(b"SIP/2.0 400 Malformed CSeq\r\n")
    phone.send_raw(b"\x00\xff garbage \r\n\r\n")
    phone.send_raw(b"SIP/2.0 200 OK\r\n\r\n")  # a stray response: never answered
    with pytest.raises(asyncio.TimeoutError):
        await phone.receive(timeout=0.3)
    assert (await phone.register(next_aor())).status == 200
    assert server.core.fetch_contacts(good).count == 1
    phone.close()


async def test_ipv6(make_server):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    port = free_port()
    try:
        srv = await make_server(listen=[f"udp:[::1]:{port}", f"tcp:[::1]:{port}"])
    except OSError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    assert srv.core.listening == [f"udp:[::1]:{port}", f"tcp:[::1]:{port}"]
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Collector, local_addr=("::1", 0))
    local = transport.get_extra_info("sockname")
    aor = next_aor()
    data = register_bytes(aor, [f"<sip:v6@[::1]:{local[1]}>"], local=("[::1]", local[1]))
    transport.sendto(data, ("::1", port))
    reply = await asyncio.wait_for(protocol.queue.get(), 3)
    assert reply.startswith(b"SIP/2.0 200")
    assert srv.core.fetch_contacts(aor)[0].received == f"udp:[::1]:{local[1]}"
    transport.close()

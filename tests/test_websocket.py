"""SIP over WebSocket (RFC 7118): ws: and wss: listeners, the handshake's checks (path, the `sip`
subprotocol, Origin allow-list), message size caps, ping/pong, flows bound to the connection
and removed when it closes, and a stalled handshake that blocks nobody."""

from __future__ import annotations

import asyncio
import time

import pytest

from registrar_core.flows import REMOVED_FLOW_CLOSED

from .sipclient import server_address
from .processes import until
from .sipclient import TcpPhone, WsPhone, free_port, next_aor, register_bytes


async def ws_server(make_server, tls_files, **settings):
    port = free_port()
    return await make_server(listen=[f"udp:127.0.0.1:{port}", f"ws:127.0.0.1:{port}",
                                     f"wss:127.0.0.1:{free_port()}"], **tls_files.settings(), **settings)


def browser_register(aor: str, **kw) -> bytes:
    """What JsSIP sends: a Via and Contact at a *.invalid host, transport ws, RFC 5626 outbound."""
    return register_bytes(aor, ['<sip:k3j2@df7jal23ls0d.invalid;transport=ws>;reg-id=1;'
                                '+sip.instance="<urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427>"'],
                          local=("df7jal23ls0d.invalid", 0), transport="WSS",
                          extra=["Supported: path,gruu,outbound"], **kw)


@pytest.mark.parametrize("proto", ["ws", "wss"])
async def test_register_over_websocket_through_the_flow(make_server, tls_files, proto):
    srv = await ws_server(make_server, tls_files)
    tls = tls_files.client_context() if proto == "wss" else None
    phone = await WsPhone(server_address(srv, proto), tls).open()
    try:
        assert phone.status == 101
        aor = next_aor()
        r = await phone.send(browser_register(aor))
        assert r.status == 200, "the reply goes back on the WebSocket, not to the .invalid host"
        assert r.headers.get("Require") == "outbound" and r.headers.get("Flow-Timer") == "120", \
            "RFC 5626 §5.4: keepalives every 80-100 % of 120 s keep this flow (idle timeout 600 s)"
        contact = srv.core.fetch_contacts(aor)[0]
        assert contact.received == f"{proto}:127.0.0.1:{phone.local[1]}" and contact.conid is not None
        assert contact.instance and contact.regid == 1
        # A request the registrar sends (qualify's OPTIONS) goes through the flow, framed.
        srv.transports.send(contact.socket, contact.conid, ("df7jal23ls0d.invalid", 0),
                            b"OPTIONS sip:k3j2@df7jal23ls0d.invalid SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        deadline = time.monotonic() + 3
        while not phone.messages:
            await phone._pump(deadline - time.monotonic())
        assert phone.messages[0].startswith(b"OPTIONS sip:k3j2@df7jal23ls0d.invalid")
    finally:
        await phone.close()


async def test_a_closed_websocket_takes_its_contacts(make_server, tls_files):
    srv = await ws_server(make_server, tls_files)
    events = srv.core.subscribe()
    phone = await WsPhone(server_address(srv, "wss"), tls_files.client_context()).open()
    aor = next_aor()
    assert (await phone.send(browser_register(aor))).status == 200
    await phone.close()
    assert await until(lambda: srv.core.fetch_contacts(aor).count == 0, 10)
    kinds = [event.data["reason"] for event in events.drain() if event.kind == "contact.removed"]
    assert kinds == [REMOVED_FLOW_CLOSED]


@pytest.mark.parametrize(("kwargs", "status"), [
    ({"subprotocols": ("chat",)}, 400),
    ({"subprotocols": ()}, 400),
    ({"path": "/other"}, 404),
    ({"origin": "https://evil.example"}, 403),
])
async def test_the_handshake_is_checked(make_server, tls_files, kwargs, status):
    srv = await ws_server(make_server, tls_files, ws_path="/ws", ws_origins="https://phone.example.com")
    address = server_address(srv, "ws")
    refused = await WsPhone(address, **{"path": "/ws", "origin": "https://phone.example.com", **kwargs}).open()
    assert refused.status == status
    good = await WsPhone(address, path="/ws", origin="https://phone.example.com").open()
    assert good.status == 101, "the same handshake with the right values is accepted"
    await good.close()


async def test_an_oversized_message_closes_with_1009(make_server, tls_files):
    srv = await ws_server(make_server, tls_files, max_message_size=4096)
    phone = await WsPhone(server_address(srv, "ws")).open()
    phone.send_raw(b"x" * 100_000, text=False)
    with pytest.raises(ConnectionError, match="1009"):
        await phone.receive(5)
    # Others are unaffected.
    other = await WsPhone(server_address(srv, "ws")).open()
    assert (await other.send(browser_register(next_aor()))).status == 200
    await other.close()


async def test_pings_are_answered(make_server, tls_files):
    from wsproto.events import Ping, Pong

    srv = await ws_server(make_server, tls_files)
    phone = await WsPhone(server_address(srv, "ws")).open()
    phone.writer.write(phone.ws.send(Ping(payload=b"hello")))
    data = await asyncio.wait_for(phone.reader.read(1024), 3)
    phone.ws.receive_data(data)
    assert [e.payload for e in phone.ws.events() if isinstance(e, Pong)] == [b"hello"]
    await phone.close()


async def test_a_stalled_handshake_blocks_nobody(make_server, tls_files):
    srv = await ws_server(make_server, tls_files, tls_handshake_timeout=1.0)
    address = server_address(srv, "ws")
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n")  # and then nothing
    phone = await WsPhone(address).open()
    started = time.monotonic()
    assert (await phone.send(browser_register(next_aor()))).status == 200
    assert time.monotonic() - started < 0.1
    await phone.close()
    assert await asyncio.wait_for(reader.read(), 5) == b"", "closed at the handshake timeout"
    writer.close()


async def test_plain_tcp_is_unchanged_by_flows(make_server, tls_files):
    """TCP contacts stay when their connection closes, as before (only TLS/WS are flows here)."""
    port = free_port()
    srv = await make_server(listen=[f"tcp:127.0.0.1:{port}", f"ws:127.0.0.1:{free_port()}"])
    phone = await TcpPhone(server_address(srv, "tcp")).open()
    aor = next_aor()
    assert (await phone.send(register_bytes(aor, ["<sip:x@127.0.0.1:5999;transport=tcp>"], local=phone.local,
                                            transport="TCP"))).status == 200
    phone.close()
    assert await until(lambda: not srv.transports.connections, 5)
    await asyncio.sleep(0.2)
    assert srv.core.fetch_contacts(aor).count == 1


async def test_qualify_reaches_a_browser_through_its_websocket(make_server, tls_files):
    """The OPTIONS goes through the flow (the Contact host is .invalid) and the answer, coming
    back on the same WebSocket, marks the contact reachable."""
    srv = await ws_server(make_server, tls_files)
    phone = await WsPhone(server_address(srv, "wss"), tls_files.client_context()).open()
    try:
        aor = next_aor()
        assert (await phone.send(browser_register(aor))).status == 200
        ruid = srv.core.fetch_contacts(aor)[0].ruid
        probe = asyncio.create_task(srv.core.qualify_now(ruid))
        deadline = time.monotonic() + 5
        while not phone.messages:
            await phone._pump(deadline - time.monotonic())
        options = phone.messages.pop(0).decode()
        assert options.startswith("OPTIONS sip:k3j2@df7jal23ls0d.invalid")
        head = [line for line in options.split("\r\n")
                if line.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
        phone.send_raw(("\r\n".join(["SIP/2.0 200 OK", *head, "Content-Length: 0", "", ""])).encode())
        states = await asyncio.wait_for(probe, 10)
        assert states[ruid]["state"] == "reachable", states
    finally:
        await phone.close()


async def test_an_idle_websocket_is_pinged_and_kept_while_it_answers(make_server, tls_files):
    srv = await ws_server(make_server, tls_files, tcp_idle_timeout=1.0)
    answering = await WsPhone(server_address(srv, "ws")).open()  # its _pump answers pings
    silent = await WsPhone(server_address(srv, "ws")).open()  # never pumped again: no pong
    aor = next_aor()
    assert (await answering.send(browser_register(aor))).status == 200
    started = time.monotonic()
    while time.monotonic() - started < 2.5:  # 2.5 idle timeouts, answering every ping
        try:
            await answering._pump(0.2)
        except asyncio.TimeoutError:
            pass
    assert srv.core.fetch_contacts(aor).count == 1, "pongs kept the flow"
    data = b""
    while True:  # the silent one got a ping, then was closed
        chunk = await asyncio.wait_for(silent.reader.read(4096), 3)
        if not chunk:
            break
        data += chunk
    assert b"sipconsole" in data, "pinged before being closed"
    await answering.close()
    silent.writer.close()

"""Requests other than REGISTER: the registrar as a redirect server, over real sockets.

OPTIONS to the server -> 200 with Allow; caller check -> "403 Please register first";
a registered AOR -> 302 with its contacts q-ordered, leaving out those reachable only through
their flow (WebSocket, RFC 5626 outbound), 480 when only those are left; any other target,
known or not -> the same 404 (no enumeration); ACK -> nothing; unknown methods -> 501 with Allow.
"""

from __future__ import annotations

import asyncio

import pytest

from registrar_core.sip import split_values

from .processes import until
from .sipclient import TcpPhone, UdpPhone, WsPhone, free_port, next_aor, register_bytes, request_bytes, server_address


async def phones(srv, n: int) -> list[UdpPhone]:
    return [await UdpPhone(server_address(srv)).open() for _ in range(n)]


def allow(response) -> set[str]:
    return {m.strip() for m in split_values(response.headers.get("Allow") or "")}


def targets(response) -> list[str]:
    return [str(c.uri) for c in response.contacts]


async def test_options_to_the_server_is_200_with_allow(server):
    (phone,) = await phones(server, 1)
    host, port = server_address(server)
    r = await phone.send(request_bytes("OPTIONS", f"sip:{host}:{port}", next_aor(), local=phone.local))
    assert (r.status, r.reason) == (200, "OK")
    assert {"REGISTER", "OPTIONS", "INVITE"} <= allow(r)
    assert r.to.tag, "a final response carries a To tag"


async def test_options_to_the_server_is_200_even_with_caller_check_on(make_server):
    srv = await make_server(caller_check=True)
    (phone,) = await phones(srv, 1)
    host, port = server_address(srv)
    r = await phone.send(request_bytes("OPTIONS", f"sip:{host}:{port}", next_aor(), local=phone.local))
    assert r.status == 200 and "INVITE" in allow(r)


async def test_ack_is_never_answered(server):
    (phone,) = await phones(server, 1)
    aor = next_aor()
    await phone.register(aor)
    phone.send_raw(request_bytes("ACK", f"sip:{aor}", next_aor(), local=phone.local))
    with pytest.raises(asyncio.TimeoutError):
        await phone.receive(timeout=0.3)
    # The socket still answers: the ACK was dropped, not the phone.
    r = await phone.send(request_bytes("INVITE", f"sip:{aor}", next_aor(), local=phone.local))
    assert r.status == 302


async def test_unknown_method_is_501_with_allow(server):
    (phone,) = await phones(server, 1)
    r = await phone.send(request_bytes("FROBNICATE", f"sip:{next_aor()}", next_aor(), local=phone.local))
    assert r.status == 501
    assert {"REGISTER", "OPTIONS", "INVITE"} <= allow(r)
    assert "FROBNICATE" not in allow(r)


async def test_in_dialog_request_is_481_with_allow(server):
    (phone,) = await phones(server, 1)
    r = await phone.send(request_bytes("BYE", f"sip:{next_aor()}", next_aor(), local=phone.local))
    assert r.status == 481 and "INVITE" in allow(r)


async def test_registered_aor_is_302_with_contacts_in_q_order(server):
    device, caller = await phones(server, 2)
    aor = next_aor("callee")
    host, port = device.local
    await device.register(aor, contacts=[f"<sip:b@{host}:{port}>;q=0.3", f"<sip:a@{host}:{port}>;q=0.9",
                                         f"<sip:c@{host}:{port}>;q=0.6"])
    r = await caller.send(request_bytes("INVITE", f"sip:{aor}", next_aor(), local=caller.local))
    assert (r.status, r.reason) == (302, "Moved Temporarily")
    assert targets(r) == [f"sip:a@{host}:{port}", f"sip:c@{host}:{port}", f"sip:b@{host}:{port}"]
    assert [c.param("q") for c in r.contacts] == ["0.9", "0.6", "0.3"]
    # MESSAGE is redirected the same way.
    r = await caller.send(request_bytes("MESSAGE", f"sip:{aor}", next_aor(), local=caller.local))
    assert r.status == 302 and len(r.contacts) == 3


def _shape(response) -> tuple[str, list[str]]:
    """What a scanner can compare: the status line and the header names, in order."""
    return f"{response.status} {response.reason}", [name for name, _ in response.headers]


# SUBSCRIBE is the reg event's (test_reg_event.py: the same answers for any AOR there too).
@pytest.mark.parametrize("method", ["OPTIONS", "INVITE", "MESSAGE", "REFER"])
async def test_no_enumeration_known_and_unknown_targets_answer_alike(server, method):
    device, caller = await phones(server, 2)
    subscriber = next_aor("provisioned")
    await server.core.subscribers.add(subscriber, "secret-password")
    gone = next_aor("gone")  # registered, then unregistered by the operator
    await device.register(gone)
    await server.core.unregister(gone)
    left = next_aor("bye")  # unregistered itself (Expires: 0)
    await device.register(left)
    await device.register(left, expires=0, cseq=2)
    shapes = {}
    for target in (subscriber, gone, left, next_aor("nobody")):
        r = await caller.send(request_bytes(method, f"sip:{target}", next_aor(), local=caller.local))
        shapes[target] = _shape(r)
    assert len({repr(shape) for shape in shapes.values()}) == 1, shapes
    assert shapes[subscriber][0] == "404 Not Found"


async def test_caller_check_403_for_unregistered_302_for_registered_device(make_server):
    srv = await make_server(caller_check=True)
    callee, caller, stranger = await phones(srv, 3)
    callee_aor, caller_aor = next_aor("callee"), next_aor("caller")
    await callee.register(callee_aor)
    await caller.register(caller_aor)

    async def invite(phone, from_aor):
        return await phone.send(request_bytes("INVITE", f"sip:{callee_aor}", from_aor, local=phone.local))

    r = await invite(stranger, next_aor("unregistered"))
    assert (r.status, r.reason) == (403, "Please register first")
    assert not r.headers.get("Contact")
    # The registered caller's AOR, sent from a device that is not its registered contact.
    r = await invite(stranger, caller_aor)
    assert (r.status, r.reason) == (403, "Please register first")
    r = await invite(caller, caller_aor)
    assert r.status == 302 and targets(r) == [callee.contact.strip("<>")]
    # The check comes before the lookup: an unregistered caller learns nothing about the callee.
    r = await stranger.send(request_bytes("INVITE", f"sip:{next_aor('nobody')}", next_aor(), local=stranger.local))
    assert r.status == 403


async def test_caller_check_runtime_toggle(server):
    callee, stranger = await phones(server, 2)
    aor = next_aor("callee")
    await callee.register(aor)

    async def invite():
        return await stranger.send(request_bytes("INVITE", f"sip:{aor}", next_aor(), local=stranger.local))

    assert server.core.caller_check is False
    assert (await invite()).status == 302
    await server.core.set_caller_check(True)
    assert server.core.caller_check is True
    r = await invite()
    assert (r.status, r.reason) == (403, "Please register first")
    await server.core.set_caller_check(False)
    assert (await invite()).status == 302


async def test_caller_check_over_tcp_uses_the_registering_connection(make_server):
    srv = await make_server(caller_check=True)
    callee = (await phones(srv, 1))[0]
    aor = next_aor("callee")
    await callee.register(aor)
    tcp = await TcpPhone(server_address(srv, "tcp")).open()
    try:
        me = next_aor("tcpcaller")
        host, port = tcp.local
        r = await tcp.send(register_bytes(me, [f"<sip:me@{host}:{port};transport=tcp>"], local=tcp.local,
                                          transport="TCP"))
        assert r.status == 200
        invite = request_bytes("INVITE", f"sip:{aor}", me, local=tcp.local).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        r = await tcp.send(invite)
        assert r.status == 302 and targets(r) == [callee.contact.strip("<>")]
    finally:
        tcp.close()
    # A new connection is another device (another source port).
    tcp2 = await TcpPhone(server_address(srv, "tcp")).open()
    try:
        invite = request_bytes("INVITE", f"sip:{aor}", me, local=tcp2.local).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        r = await tcp2.send(invite)
        assert (r.status, r.reason) == (403, "Please register first")
    finally:
        tcp2.close()


async def test_retransmitted_invite_gets_the_same_answer_once_processed(server):
    device, caller = await phones(server, 2)
    aor = next_aor("rtx")
    await device.register(aor)
    data = request_bytes("INVITE", f"sip:{aor}", next_aor(), local=caller.local)
    first = await caller.send(data)
    again = await caller.send(data)
    assert first.status == again.status == 302
    assert first.to.tag == again.to.tag and targets(first) == targets(again)


async def test_contacts_reachable_only_through_their_flow_are_not_redirected_to(make_server):
    """A browser on a WebSocket (a *.invalid host, RFC 5626 outbound) cannot be called at its
    Contact: the 302 leaves it out; with only such contacts left the answer is 480 with a Warning."""
    port = free_port()
    srv = await make_server(listen=[f"udp:127.0.0.1:{port}", f"ws:127.0.0.1:{port}"])
    aor = next_aor("browser")
    browser = await WsPhone(server_address(srv, "ws")).open()
    desk, caller = await phones(srv, 2)
    try:
        assert browser.status == 101
        r = await browser.send(register_bytes(
            aor, ['<sip:k3j2@df7jal23ls0d.invalid;transport=ws>;reg-id=1;'
                  '+sip.instance="<urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427>"'],
            local=("df7jal23ls0d.invalid", 0), transport="WS", extra=["Supported: path,gruu,outbound"]))
        assert r.status == 200
        assert (await desk.register(aor, call_id="desk@t")).status == 200

        async def invite():
            return await caller.send(request_bytes("INVITE", f"sip:{aor}", next_aor(), local=caller.local))

        r = await invite()
        assert r.status == 302 and targets(r) == [desk.contact.strip("<>")]
        assert (await desk.register(aor, call_id="desk@t", cseq=2, expires=0)).status == 200
        r = await invite()
        assert (r.status, r.reason) == (480, "Temporarily Unavailable") and not r.contacts
        assert "reachable only through its connection" in r.headers.get("Warning")
        await browser.close()
        assert await until(lambda: srv.core.fetch_contacts(aor).count == 0)  # the flow went: nothing registered
        assert (await invite()).status == 404
    finally:
        desk.close()
        caller.close()

"""GRUU (RFC 5627) over real UDP sockets, and the sans-IO issuing and recognising of registrar_core/gruu.py.

A REGISTER with ``Supported: gruu`` gets ``pub-gruu`` and ``temp-gruu`` (quoted) on each Contact
with ``+sip.instance`` in its 200; a request to a pub-gruu is redirected (302) to that instance's
contacts alone; a temp-gruu does the same until the instance registers with a new Call-ID, and
keeps working across a restart and at another node sharing the database and the key; a tampered,
foreign or stale GRUU gets the 404 of any unknown target. Real clients: sipp and baresip.
"""

from __future__ import annotations

import asyncio
import re
import uuid

from registrar_core.gruu import TEMP_PREFIX, Gruus
from registrar_core.location import Contact
from registrar_core.sip import parse_uri

from .processes import ServeProcess, run_baresip, run_sipp, until, write_injection
from .sipclient import UdpPhone, free_port, next_aor, register_bytes, request_bytes, server_address

GRUU = ["Supported: path, gruu, outbound"]
TEMP = re.compile(r'sip:tgruu\.[A-Za-z0-9_-]+@example\.com;gr')


def instance() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def device(phone: UdpPhone, user: str, urn: str | None) -> str:
    """A Contact of ``phone`` (as ``user``), with ``+sip.instance`` when ``urn`` is given."""
    host, port = phone.local
    return f'<sip:{user}@{host}:{port}>' + (f';+sip.instance="<{urn}>"' if urn else "")


def gruus(response) -> dict[str, tuple[str | None, str | None]]:
    """Contact URI -> (pub-gruu, temp-gruu) as the 200 gives them, quotes removed."""
    def unquoted(value: str | None) -> str | None:
        if value is None:
            return None
        assert value[0] == value[-1] == '"', f"GRUU params are quoted strings: {value}"
        return value[1:-1]
    return {c.uri.raw: (unquoted(c.param("pub-gruu")), unquoted(c.param("temp-gruu"))) for c in response.contacts}


def targets(response) -> list[str]:
    return [c.uri.raw for c in response.contacts]


async def phones(srv, n: int) -> list[UdpPhone]:
    return [await UdpPhone(server_address(srv)).open() for _ in range(n)]


async def invite(caller: UdpPhone, target: str, method: str = "INVITE"):
    return await caller.send(request_bytes(method, target, next_aor("caller"), local=caller.local))


async def test_200_carries_quoted_pub_and_temp_gruu(server):
    phone, = await phones(server, 1)
    aor, urn = next_aor("alice"), instance()
    r = await phone.register(aor, [device(phone, "alice", urn)], extra=GRUU)
    assert r.status == 200
    (contact,) = r.headers.get_all("Contact")
    assert f';+sip.instance="<{urn}>"' in contact, "the instance is echoed"
    assert f';pub-gruu="sip:{aor};gr={urn}"' in contact
    temp = re.search(r';temp-gruu="([^"]*)"', contact)
    assert temp and TEMP.fullmatch(temp.group(1)), contact
    assert aor.split("@")[0] not in temp.group(1), "a temp-gruu hides the AOR (RFC 5627 §3.1.2)"
    assert "gruu" in [v.strip() for v in r.headers.get("Supported").split(",")]
    assert r.headers.get("Require") is None, "no Require: gruu (RFC 5627 §5.2)"


async def test_no_gruu_without_supported_or_without_instance(server):
    phone, = await phones(server, 1)
    aor, urn = next_aor("bob"), instance()
    r = await phone.register(aor, [device(phone, "bob", urn)])  # no Supported: gruu
    assert r.status == 200 and gruus(r) == {device(phone, "bob", None).strip("<>"): (None, None)}
    assert "pub-gruu" not in r.headers.get("Contact")
    # With Supported: gruu, only the binding with +sip.instance gets GRUUs.
    r = await phone.register(aor, [device(phone, "bob", urn), device(phone, "plain", None)], extra=GRUU,
                             call_id="bob-2@test")
    found = gruus(r)
    host, port = phone.local
    assert found[f"sip:plain@{host}:{port}"] == (None, None)
    pub, temp = found[f"sip:bob@{host}:{port}"]
    assert pub == f"sip:{aor};gr={urn}" and temp and TEMP.fullmatch(temp)


async def test_require_gruu_is_accepted(server):
    phone, = await phones(server, 1)
    r = await phone.register(next_aor(), [device(phone, "c", instance())], extra=[*GRUU, "Require: gruu"])
    assert r.status == 200 and "pub-gruu" in r.headers.get("Contact")


async def test_pub_gruu_reaches_only_its_instance(server):
    desk, mobile, caller = await phones(server, 3)
    aor, desk_urn, mobile_urn = next_aor("carol"), instance(), instance()
    r = await desk.register(aor, [device(desk, "desk", desk_urn) + ";q=0.9"], extra=GRUU)
    desk_pub, _ = gruus(r)[device(desk, "desk", None).strip("<>")]
    r = await mobile.register(aor, [device(mobile, "mobile", mobile_urn) + ";q=0.5"], extra=GRUU)
    assert len(r.contacts) == 2
    mobile_pub, _ = gruus(r)[device(mobile, "mobile", None).strip("<>")]

    assert targets(await invite(caller, f"sip:{aor}")) == [device(desk, "desk", None).strip("<>"),
                                                         device(mobile, "mobile", None).strip("<>")]
    for method in ("INVITE", "OPTIONS", "MESSAGE"):
        r = await invite(caller, desk_pub, method)
        assert (r.status, targets(r)) == (302, [device(desk, "desk", None).strip("<>")]), method
    r = await invite(caller, mobile_pub)
    assert (r.status, targets(r)) == (302, [device(mobile, "mobile", None).strip("<>")])
    assert server.core.registered(parse_uri(desk_pub)), "the facade's lookup resolves GRUUs too"


async def test_temp_gruu_works_until_the_call_id_changes(server):
    phone, caller = await phones(server, 2)
    aor, urn = next_aor("dave"), instance()
    uri = device(phone, "dave", None).strip("<>")
    r1 = await phone.register(aor, [device(phone, "dave", urn)], extra=GRUU, call_id="dave-boot-1@test", cseq=1)
    r2 = await phone.register(aor, [device(phone, "dave", urn)], extra=GRUU, call_id="dave-boot-1@test", cseq=2)
    first, second = gruus(r1)[uri][1], gruus(r2)[uri][1]
    assert first and second and first != second, "every REGISTER gets a new temp-gruu (RFC 5627 §5.4)"
    for temp in (first, second):  # ... and the earlier ones stay valid
        r = await invite(caller, temp)
        assert (r.status, targets(r)) == (302, [uri])

    # The device restarts: same instance, new Call-ID. Every temp-gruu issued before stops working.
    r3 = await phone.register(aor, [device(phone, "dave", urn)], extra=GRUU, call_id="dave-boot-2@test", cseq=1)
    third = gruus(r3)[uri][1]
    for temp in (first, second):
        assert (await invite(caller, temp)).status == 404
    assert targets(await invite(caller, third)) == [uri]
    # The pub-gruu stays the same and keeps working.
    assert gruus(r3)[uri][0] == gruus(r1)[uri][0]
    assert targets(await invite(caller, gruus(r3)[uri][0])) == [uri]


async def test_tampered_foreign_and_stale_gruus_get_the_unknown_target_answer(server, short_dir):
    phone, caller = await phones(server, 2)
    aor, urn = next_aor("erin"), instance()
    uri = device(phone, "erin", None).strip("<>")
    r = await phone.register(aor, [device(phone, "erin", urn)], extra=GRUU)
    pub, temp = gruus(r)[uri]
    assert temp and targets(await invite(caller, temp)) == [uri]
    unknown = await invite(caller, f"sip:{next_aor('nobody')}")
    assert unknown.status == 404

    user = temp[len("sip:"):temp.index("@")]
    token = user[len(TEMP_PREFIX):]
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    other_key = Gruus(short_dir / "another-node.key")  # a registrar with another auth key
    contact = server.core.lookup(aor)[0]
    for bad in (
        temp.replace(token, flipped),  # one character changed
        temp.replace(token, token[:-4]),  # cut short
        temp.replace("@example.com", "@example.org"),  # moved to another domain
        other_key.temp_gruu(contact),  # issued with another key
        f"sip:{TEMP_PREFIX}not*base64@example.com;gr",
        f"sip:{aor};gr={instance()}",  # a pub-gruu of an instance never registered here
        f"sip:{next_aor('nobody')};gr={urn}",  # this instance, another AOR
    ):
        r = await invite(caller, bad)
        assert (r.status, r.reason, [n for n, _ in r.headers]) == \
            (unknown.status, unknown.reason, [n for n, _ in unknown.headers]), bad

    # Unregistered: the GRUUs reach nothing, with the same answer.
    await phone.register(aor, [device(phone, "erin", urn)], expires=0, cseq=2)
    for gruu in (pub, temp):
        assert (await invite(caller, gruu)).status == 404


async def test_an_instance_registering_its_aor_or_its_gruu_as_contact_gets_403(server):
    """RFC 5627 §5.1: such a binding would route every request for the AOR back to it."""
    phone, = await phones(server, 1)
    aor, urn = next_aor("kim"), instance()
    r = await phone.register(aor, [device(phone, "kim", urn)], extra=GRUU, call_id="kim@test", cseq=1)
    pub, temp = gruus(r)[device(phone, "kim", None).strip("<>")]
    for cseq, looping in enumerate((f"sip:{aor}", pub, temp), start=2):
        r = await phone.register(aor, [f'<{looping}>;+sip.instance="<{urn}>"'], extra=GRUU, call_id="kim@test", cseq=cseq)
        assert (r.status, r.headers.get("P-Registrar-Error")) == \
            (403, "Contact is the AOR or one of its GRUUs: requests would loop"), looping
    assert [c.addr for c in server.core.lookup(aor)] == [device(phone, "kim", None).strip("<>")], "nothing was bound"
    # The same URIs are no loop for another AOR, nor without an instance (RFC 3261 alone).
    r = await phone.register(next_aor("lee"), [f'<{pub}>;+sip.instance="<{instance()}>"'], extra=GRUU)
    assert r.status == 200
    r = await phone.register(aor, [f"<sip:{aor}:5070>;+sip.instance=\"<{urn}>\""], extra=GRUU, call_id="kim@test", cseq=9)
    assert r.status == 200, "with a port it is another URI (RFC 3261 §19.1.4)"


def test_every_node_with_the_same_key_recognises_a_temp_gruu(short_dir):
    """No storage: a second Gruus (another node, or this one restarted) reading the same key
    file resolves what the first issued; one with another key does not."""
    issuer, peer, stranger = Gruus(short_dir / "auth.key"), Gruus(short_dir / "auth.key"), Gruus(short_dir / "x.key")
    urn = instance()
    contact = Contact("r1", "frank@example.com", "sip:f@192.0.2.1", 0.0, "call-1", 1, instance=f"<{urn}>")
    temp = parse_uri(issuer.temp_gruu(contact))
    target = peer.target(temp)
    assert target is not None and (target.aor, target.instance) == ("frank@example.com", urn)
    assert target.select([contact]) == [contact]
    assert target.select([contact.updated(callid="call-2")]) == []
    assert stranger.target(temp).select([contact]) == []
    assert peer.target(parse_uri("sip:frank@example.com")) is None, "not a GRUU: the AOR's contacts"


def test_temp_gruu_round_trips_any_instance_and_is_short_for_a_uuid(short_dir):
    gruus = Gruus(short_dir / "auth.key")
    for aor, urn in (("ivy@example.com", instance()), ("example.com", instance()),
                     ("ivy@example.com", f"urn:uuid:{str(uuid.uuid4()).upper()}"),  # not canonical: kept as text
                     ("ivy@example.com", "urn:x:any;thing\\at all")):
        contact = Contact("r1", aor, "sip:i@192.0.2.1", 0.0, "call-1", 1, instance=f"<{urn}>")
        temp = gruus.temp_gruu(contact)
        target = gruus.target(parse_uri(temp))
        assert target is not None and (target.aor, target.instance) == (aor, urn), temp
        assert target.select([contact]) == [contact]
    # What phones send, a urn:uuid, travels as its 16 bytes: under 100 characters for a short AOR.
    contact = Contact("r1", "ivy@example.com", "sip:i@192.0.2.1", 0.0, "call-1", 1, instance=f"<{instance()}>")
    assert len(gruus.temp_gruu(contact)) <= 100


def test_pub_gruu_escapes_what_a_uri_parameter_cannot_hold(short_dir):
    gruus = Gruus(short_dir / "auth.key")
    contact = Contact("r1", "gina@example.com", "sip:g@192.0.2.1", 0.0, "c", 1, instance='<urn:x:a b%c;d>')
    pub, _ = gruus.of(contact)
    assert pub == "sip:gina@example.com;gr=urn:x:a%20b%25c%3Bd"
    target = gruus.target(parse_uri(pub))
    assert target is not None and target.select([contact]) == [contact]


async def test_temp_gruu_survives_a_restart(serve_process):
    """The binding is in the database and the key in its file: after a crash and a restart
    the temp-gruu issued before still reaches the device."""
    proc = serve_process.start()
    phone = await UdpPhone(("127.0.0.1", proc.port)).open()
    caller = await UdpPhone(("127.0.0.1", proc.port)).open()
    try:
        aor = next_aor("henry")
        r = await phone.send(register_bytes(aor, [device(phone, "henry", instance())], local=phone.local, extra=GRUU))
        uri = device(phone, "henry", None).strip("<>")
        pub, temp = gruus(r)[uri]
        proc.kill()
        proc.start()
        for gruu in (pub, temp):
            r = await invite(caller, gruu)
            assert (r.status, targets(r)) == (302, [uri])
    finally:
        phone.close()
        caller.close()


async def test_gruus_issued_by_one_node_reach_the_device_through_another(pg_dsn, short_dir):
    """Two registrars on one PostgreSQL database with the same --auth-key (README "Scaling
    out"): the GRUUs node a puts in its 200 are resolved by node b, which stores nothing of them."""
    key = short_dir / "shared-auth.key"
    a, b = ServeProcess(short_dir, free_port(), "-a"), ServeProcess(short_dir, free_port(), "-b")
    a.db = b.db = pg_dsn  # type: ignore[assignment]  # the command line takes str(db)
    phone = caller = None
    try:
        a.start("--auth-key", str(key))
        b.start("--auth-key", str(key))
        phone = await UdpPhone(("127.0.0.1", a.port)).open()
        caller = await UdpPhone(("127.0.0.1", b.port)).open()
        aor = next_aor("judy")
        r = await phone.send(register_bytes(aor, [device(phone, "judy", instance())], local=phone.local, extra=GRUU))
        uri = device(phone, "judy", None).strip("<>")
        pub, temp = gruus(r)[uri]
        assert temp is not None
        # Node b learns the binding through the database's change feed: poll its answer.
        answers: list = []

        async def reached() -> bool:
            answers.append(await invite(caller, temp))
            return answers[-1].status == 302

        deadline = asyncio.get_running_loop().time() + 15
        while not await reached() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
        assert targets(answers[-1]) == [uri], answers[-1]
        assert targets(await invite(caller, pub)) == [uri]
    finally:
        for udp in (phone, caller):
            if udp is not None:
                udp.close()
        a.stop()
        b.stop()


def test_sipp_registers_two_instances_and_reaches_one_by_its_gruus(serve_process, tmp_path):
    """sipp as the real client: the 200's GRUUs taken with its regexp actions, then a MESSAGE to
    the pub-gruu and one to the temp-gruu each redirected to that device alone (check_it_inverse:
    the other device's contact is not there)."""
    serve_process.start()
    inf = write_injection(tmp_path / "aors.csv", [(f"gruu{i}", "example.com") for i in range(5)])
    result = run_sipp("register_gruu.xml", serve_process.port, "-inf", str(inf), calls=5, rate=50)
    assert (result.successful, result.failed) == (5, 0), result.output[-3000:]


async def test_baresip_keeps_its_pub_gruu_and_is_reached_through_it(make_server, short_dir):
    """baresip 1.0 as an RFC 5626 outbound client (its instance id from uuid.so) registers with
    Supported: gruu and +sip.instance, keeps the pub-gruu of our 200 (its /uastat prints it),
    and a MESSAGE to that pub-gruu is redirected to baresip alone, not to the AOR's other device."""
    srv = await make_server()
    host, port = server_address(srv)
    other, caller = await phones(srv, 2)
    aor = f"100@{host}"
    await other.register(aor, [device(other, "other", instance())], extra=GRUU)
    proc = await run_baresip(
        short_dir / "baresip-gruu",
        f'<sip:100@{host}:{port};transport=udp>;regint=600;sipnat=outbound;outbound="sip:{host}:{port};transport=udp"',
        modules=("uuid.so", "stdio.so", "debug_cmd.so"))
    output = b""
    try:
        def baresip_contacts() -> list[Contact]:
            return [c for c in srv.core.fetch_contacts(aor) if "baresip" in c.user_agent]
        assert await until(lambda: bool(baresip_contacts())), "baresip did not register"
        (contact,) = baresip_contacts()
        assert contact.instance and contact.regid == 1
        proc.stdin.write(b"/uastat\n")
        await proc.stdin.drain()
        deadline = asyncio.get_running_loop().time() + 20
        while b"pub-gruu:" not in output and asyncio.get_running_loop().time() < deadline:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            if not line:
                break  # baresip exited
            output += line
        found = re.search(rb"pub-gruu: +(\S+)", output)
        assert found, output.decode(errors="replace")
        pub = found.group(1).decode()
        assert pub == f"sip:{aor};gr={contact.instance[1:-1]}"
        r = await invite(caller, pub, "MESSAGE")
        assert (r.status, targets(r)) == (302, [contact.addr])
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 20)

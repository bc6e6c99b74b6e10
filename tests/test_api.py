"""The public core API (registrar_core.api.RegistrarCore) against a registrar on real sockets.

Kamailio's registrar functions under Pythonic names: save() and its flags, unregister(),
fetch_contacts() ($ulc), lookup(), registered(), from_registered_device() (reg_from_user),
the single-contact and caller-check policies, and the event stream. Devices are UdpPhones
on their own sockets; where the API takes a request, it is the bytes a phone would send,
parsed, with the phone's real address as its source.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
import zlib

import pytest

from registrar_core.api import NotFound, Profile
from registrar_core.control import LocalClient
from registrar_core.events import SUBSCRIBER_CHANGED
from registrar_core.location import (
    SAVE_MEMORY_ONLY,
    SAVE_NO_EXPIRES_RANDOM,
    SAVE_NO_REPLY,
    SAVE_SINGLE_CONTACT,
)
from registrar_core.pipeline import reply_address
from registrar_core.sip import parse_message
from registrar_core.source import Source

from .sipclient import UdpPhone, next_aor, register_bytes, request_bytes, server_address

# Every attribute of Kamailio's $ulc(profile=>attr) that a contact carries (count is the profile's).
ULC_ATTRIBUTES = ("aor", "domain", "aorhash", "addr", "path", "received", "expires", "callid", "q",
                  "cseq", "flags", "cflags", "user_agent", "socket", "modified", "methods", "ruid",
                  "regid", "instance")
INSTANCE = "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"


async def phones(srv, n: int) -> list[UdpPhone]:
    return [await UdpPhone(server_address(srv)).open() for _ in range(n)]


def source_of(srv, phone: UdpPhone) -> Source:
    """Where the registrar would see ``phone``'s datagrams come from."""
    host, port = phone.local
    return Source("udp", host, port, srv.core.listening[0])


def register_request(phone: UdpPhone, aor: str, contact: str | None = None, **kw):
    return parse_message(register_bytes(aor, [contact or phone.contact], local=phone.local, **kw))


def contact_uris(response) -> list[str]:
    return [str(c.uri) for c in response.contacts] if response.contacts else []


def db_rows(srv) -> list[tuple[str, str]]:
    """(aor, addr) of every contact row actually in the SQLite file."""
    with sqlite3.connect(srv.config.db) as db:
        return sorted(db.execute("SELECT aor, addr FROM contacts").fetchall())


# -- fetch_contacts: every $ulc attribute ------------------------------------------------------

async def test_fetch_contacts_returns_every_ulc_attribute_with_its_value(server):
    (phone,) = await phones(server, 1)
    aor = next_aor("ulc")
    host, port = phone.local
    uri = f"sip:ulc@{host}:{port};transport=udp"
    before = time.time()
    response = await phone.register(
        aor, contacts=[f'<{uri}>;q=0.7;+sip.instance="{INSTANCE}";reg-id=1'],
        call_id="ulc-call@test", cseq=41, expires=1800,
        extra=["Path: <sip:edge1.example.net;lr>", "Path: <sip:edge2.example.net;lr;ob>",
               "Supported: path, outbound", "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS"])
    assert response.status == 200
    profile = server.core.fetch_contacts(aor)
    assert isinstance(profile, Profile)
    assert profile.count == 1 and profile.aor == aor
    c = profile[0]
    for name in ULC_ATTRIBUTES:
        assert hasattr(c, name), name
    assert c.aor == aor
    assert c.domain == "example.com"
    assert isinstance(c.aorhash, int) and c.aorhash == zlib.crc32(aor.encode())
    assert c.addr == uri
    assert c.path == ("<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr;ob>")
    assert c.received == f"udp:{host}:{port}"
    assert before + 1800 - 1 <= c.expires <= time.time() + 1800  # absolute, as $ulc(expires)
    assert c.callid == "ulc-call@test"
    assert c.q == pytest.approx(0.7)
    assert c.cseq == 41
    assert c.flags == 0 and c.cflags == 0
    assert c.user_agent == "sipconsole-tests"
    assert c.socket == server.core.listening[0]
    assert before - 1 <= c.modified <= time.time()
    assert set(c.methods.replace(" ", "").split(",")) == {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS"}
    assert c.ruid and c.ruid.startswith("uloc-")
    assert c.regid == 1
    assert c.instance.strip('"') == INSTANCE
    # The JSON form (ctl show, console) carries the same attributes, expires as seconds left.
    data = profile.to_dict()
    assert data["count"] == 1 and data["aor"] == aor
    row = data["contacts"][0]
    assert set(ULC_ATTRIBUTES) <= set(row)
    assert {f.name for f in dataclasses.fields(c)} <= set(row), "every Contact field is in its JSON form"
    assert 1790 <= row["expires"] <= 1800
    assert row["path"] == list(c.path) and row["ruid"] == c.ruid and row["aorhash"] == c.aorhash


async def test_ulc_instance_is_the_unquoted_value_as_in_kamailio(server):
    (phone,) = await phones(server, 1)
    aor = next_aor("inst")
    await phone.register(aor, contacts=[f'{phone.contact};+sip.instance="{INSTANCE}";reg-id=1'],
                         extra=["Supported: outbound"])
    assert server.core.fetch_contacts(aor)[0].instance == INSTANCE


async def test_fetch_contacts_is_a_read_only_snapshot(server):
    a, b = await phones(server, 2)
    aor = next_aor("snap")
    await a.register(aor)
    profile = server.core.fetch_contacts(f"sip:{aor}")  # both AOR spellings are accepted
    assert profile.count == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile[0].q = 1.0  # type: ignore[misc]
    assert isinstance(profile.contacts, tuple)
    await b.register(aor)
    assert profile.count == 1, "a fetched profile must not change under the caller"
    assert server.core.fetch_contacts(aor).count == 2
    assert server.core.fetch_contacts(next_aor("nobody")).count == 0


# -- lookup, registered ---------------------------------------------------------------------

async def test_lookup_orders_by_q_and_a_dropped_branch_stays_in_the_table(server):
    phone, caller = await phones(server, 2)
    aor = next_aor("fork")
    host, port = phone.local
    contacts = [f"<sip:low@{host}:{port}>;q=0.1", f"<sip:high@{host}:{port}>;q=1.0",
                f"<sip:mid@{host}:{port}>;q=0.5"]
    assert (await phone.register(aor, contacts=contacts)).status == 200
    targets = server.core.lookup(aor)
    assert [t.addr.split("@")[0] for t in targets] == ["sip:high", "sip:mid", "sip:low"]
    assert [t.q for t in targets] == [1.0, 0.5, 0.1]
    # Kamailio's remove_branch(): the caller drops a branch from its destination set ...
    dropped = targets.pop(1)
    assert dropped.addr.startswith("sip:mid@")
    # ... and the location table is untouched.
    assert len(server.core.lookup(f"sip:{aor}")) == 3
    assert server.core.fetch_contacts(aor).count == 3
    r = await caller.send(request_bytes("INVITE", f"sip:{aor}", next_aor("c"), local=caller.local))
    assert r.status == 302
    assert [str(c.uri).split("@")[0] for c in r.contacts] == ["sip:high", "sip:mid", "sip:low"]


async def test_registered(server):
    (phone,) = await phones(server, 1)
    aor = next_aor("reg")
    assert not server.core.registered(aor)
    await phone.register(aor)
    assert server.core.registered(aor)
    assert server.core.registered(f"sip:{aor}")
    assert server.core.registered(f"sip:{aor.upper().split('@')[0]}@EXAMPLE.com") is False  # users are case-sensitive
    await server.core.unregister(aor)
    assert not server.core.registered(aor)


# -- from_registered_device (reg_from_user) -------------------------------------------------

async def test_from_registered_device(server):
    device, other = await phones(server, 2)
    aor = next_aor("dev")
    await device.register(aor)
    callee = f"sip:{next_aor('callee')}"

    def invite(phone, from_aor):
        return parse_message(request_bytes("INVITE", callee, from_aor, local=phone.local))

    core = server.core
    assert core.from_registered_device(invite(device, aor), source_of(server, device))
    # Same AOR in From, but not from the registered device's address.
    assert not core.from_registered_device(invite(other, aor), source_of(server, other))
    # The registered device claiming another (unregistered) AOR.
    assert not core.from_registered_device(invite(device, next_aor("x")), source_of(server, device))
    # Same address over another transport is another device.
    host, port = device.local
    tcp = Source("tcp", host, port, core.listening[0])
    assert not core.from_registered_device(invite(device, aor), tcp)
    await core.unregister(aor)
    assert not core.from_registered_device(invite(device, aor), source_of(server, device))


# -- unregister -----------------------------------------------------------------------------

async def test_unregister_whole_aor_one_contact_and_not_found(server):
    a, b = await phones(server, 2)
    aor = next_aor("unreg")
    await a.register(aor)
    await b.register(aor)
    profile = server.core.fetch_contacts(aor)
    assert profile.count == 2
    ruid_a = next(c.ruid for c in profile if c.received.endswith(f":{a.local[1]}"))
    removed = await server.core.unregister(f"sip:{aor}", ruid_a)
    assert [c.ruid for c in removed] == [ruid_a]
    left = server.core.fetch_contacts(aor)
    assert left.count == 1 and left[0].ruid != ruid_a
    query = await a.send(register_bytes(aor, None, local=a.local, expires=None))  # a REGISTER query
    assert query.status == 200 and len(query.contacts) == 1
    with pytest.raises(NotFound) as info:
        await server.core.unregister(aor, "uloc-doesnotexist")
    assert "uloc-doesnotexist" in str(info.value) and "\n" not in str(info.value)
    removed = await server.core.unregister(aor)
    assert len(removed) == 1
    assert server.core.fetch_contacts(aor).count == 0
    assert db_rows(server) == []
    with pytest.raises(NotFound) as info:
        await server.core.unregister(aor)
    assert aor in str(info.value)
    with pytest.raises(NotFound):
        await server.core.unregister(next_aor("never"))


# -- save() flags ---------------------------------------------------------------------------

async def test_save_flag_single_contact_replaces_the_others_in_one_save(server):
    first, second, third = await phones(server, 3)
    aor = next_aor("single")
    await first.register(aor)
    await second.register(aor)
    assert server.core.fetch_contacts(aor).count == 2
    sub = server.core.subscribe()
    try:
        response = await server.core.save(register_request(third, aor), SAVE_SINGLE_CONTACT,
                                          source=source_of(server, third))
        assert response.status == 200
        assert contact_uris(response) == [third.contact.strip("<>")]
        profile = server.core.fetch_contacts(aor)
        assert [c.addr for c in profile] == [third.contact.strip("<>")]
        assert db_rows(server) == [(aor, third.contact.strip("<>"))]
        events = sub.drain()
    finally:
        sub.close()
    kinds = [(e.kind, e.data.get("reason")) for e in events if e.kind.startswith("contact.")]
    assert sorted(kinds, key=str) == sorted([("contact.removed", "replaced")] * 2 + [("contact.added", None)], key=str)
    # Without the flag (and with the policy off) a further device adds its binding.
    await first.register(aor)
    assert server.core.fetch_contacts(aor).count == 2


async def test_save_flag_memory_only_is_not_in_the_database_after_restart(make_server):
    srv = await make_server()
    mem, durable = await phones(srv, 2)
    aor_mem, aor_durable = next_aor("mem"), next_aor("durable")
    r = await srv.core.save(register_request(mem, aor_mem), SAVE_MEMORY_ONLY, source=source_of(srv, mem))
    assert r.status == 200
    assert (await durable.register(aor_durable)).status == 200
    assert srv.core.registered(aor_mem) and srv.core.registered(aor_durable)
    assert srv.core.fetch_contacts(aor_mem)[0].flags & SAVE_MEMORY_ONLY
    assert [a for a, _ in db_rows(srv)] == [aor_durable]
    await srv.stop()
    again = await make_server()  # same database file
    assert again.core.registered(aor_durable)
    assert not again.core.registered(aor_mem)


async def test_save_flag_no_reply_sends_nothing_and_returns_the_reply_to_send_later(server):
    """0x02: Kamailio's save() then sends no reply; reg_send_reply() sends it later.

    Our save() never transmits: it returns the reply, which the caller may send when it
    chooses (here through the core's socket-aware sender, as reg_send_reply would).
    """
    (phone,) = await phones(server, 1)
    aor = next_aor("norpl")
    request = register_request(phone, aor)
    source = source_of(server, phone)
    response = await server.core.save(request, SAVE_NO_REPLY, source=source)
    assert response.status == 200 and contact_uris(response) == [phone.contact.strip("<>")]
    assert server.core.registered(aor), "no-reply still saves the binding"
    with pytest.raises(asyncio.TimeoutError):
        await phone.receive(timeout=0.3)
    # reg_send_reply(): the caller sends the deferred reply from the socket that took the
    # request, to where RFC 3261 §18.2.2 / RFC 3581 say responses go.
    assert server.core.sender(source.local, None, reply_address(request, source), bytes(response))
    late = await phone.receive()
    assert late.status == 200 and late.call_id == request.call_id


async def test_save_flag_no_expires_randomisation(make_server):
    srv = await make_server(expires_range=50)
    (phone,) = await phones(srv, 1)
    host, port = phone.local
    randomised, fixed = [], []
    for i in range(10):
        for flags, into in ((0, randomised), (SAVE_NO_EXPIRES_RANDOM, fixed)):
            aor = next_aor("rand")
            request = register_request(phone, aor, f"<sip:d{i}@{host}:{port}>", expires=3600)
            r = await srv.core.save(request, flags, source=source_of(srv, phone))
            assert r.status == 200
            c = srv.core.fetch_contacts(aor)[0]
            into.append(round(c.expires - c.modified))
    assert fixed == [3600] * 10
    assert all(1800 <= e <= 3600 for e in randomised), randomised
    assert any(e < 3600 for e in randomised), "expires_range=50 must shorten some registrations"


# -- single-contact policy from Python ----------------------------------------------------------

async def test_single_contact_policy_global_and_per_aor(server):
    a, b = await phones(server, 2)
    core = server.core
    solo, multi = next_aor("solo"), next_aor("multi")
    assert core.single_contact() is False
    await core.set_single_contact(True, aor=f"sip:{solo}")
    assert core.single_contact(solo) is True and core.single_contact() is False
    assert core.single_contact_overrides() == {solo: True}
    for aor in (solo, multi):
        await a.register(aor)
        r = await b.register(aor)
        assert r.status == 200
    assert [c.addr for c in core.fetch_contacts(solo)] == [b.contact.strip("<>")]
    assert core.fetch_contacts(multi).count == 2
    # Globally on, with an AOR override off.
    await core.set_single_contact(True)
    await core.set_single_contact(False, aor=multi)
    await a.register(multi)
    assert core.fetch_contacts(multi).count == 2
    other = next_aor("other")
    await a.register(other)
    await b.register(other)
    assert [c.addr for c in core.fetch_contacts(other)] == [b.contact.strip("<>")]
    # Dropping the override: the AOR follows the global policy again.
    await core.set_single_contact(None, aor=multi)
    assert core.single_contact(multi) is True
    await a.register(multi, cseq=5)
    assert [c.addr for c in core.fetch_contacts(multi)] == [a.contact.strip("<>")]


# -- events, stats, dump, the JSON face -------------------------------------------------------

async def test_event_stream_delivers_contact_added_and_removed(server):
    (phone,) = await phones(server, 1)
    aor = next_aor("ev")
    sub = server.core.subscribe()
    try:
        await phone.register(aor)
        ruid = server.core.fetch_contacts(aor)[0].ruid
        await server.core.unregister(aor)
        await server.core.set_caller_check(True)
        events = sub.drain()
    finally:
        sub.close()
    added = [e for e in events if e.kind == "contact.added"]
    removed = [e for e in events if e.kind == "contact.removed"]
    assert [(e.data["aor"], e.data["ruid"]) for e in added] == [(aor, ruid)]
    assert [(e.data["aor"], e.data["ruid"], e.data["reason"]) for e in removed] == [(aor, ruid, "admin")]
    # In process the event holds the Contact itself; its JSON form (ctl, console) the $ulc dict.
    assert added[0].data["contact"].addr == phone.contact.strip("<>")
    assert added[0].to_dict()["contact"]["addr"] == phone.contact.strip("<>")
    assert any(e.kind == "policy.changed" and e.data["name"] == "caller_check" for e in events)


async def test_dump_stats_and_local_client_agree(server):
    a, b = await phones(server, 2)
    aor1, aor2 = next_aor("d"), next_aor("d")
    await a.register(aor1)
    await b.register(aor1)
    await a.register(aor2)
    dump = server.core.dump()
    assert {p.aor: p.count for p in dump} == {aor1: 2, aor2: 1}
    stats = server.core.snapshot_stats()
    assert stats["registered_users"] == 2 and stats["location_contacts"] == 3
    assert stats["accepted_regs"] == 3
    client = await LocalClient(server.core).connect()
    shown = await client.call("show", aor=f"sip:{aor1}")
    assert shown["aor"] == aor1 and shown["count"] == 2
    assert {c["ruid"] for c in shown["contacts"]} == {c.ruid for c in server.core.fetch_contacts(aor1)}
    dumped = await client.call("dump")
    assert dumped["table"] == "location"
    assert sorted(x["aor"] for x in dumped["aors"]) == sorted([aor1, aor2])


async def test_subscriber_changes_through_the_python_api_are_published(server):
    """The core publishes subscriber.changed, not the control socket: embedders' changes show too."""
    core = server.core
    sub = core.subscribe()
    try:
        user = await core.add_subscriber("kim@example.com", "pw1")
        await core.add_subscriber(user, "pw2", replace=True)
        await core.remove_subscriber(user)
        changes = [(e.data["action"], e.data["user"]) for e in sub.drain() if e.kind == SUBSCRIBER_CHANGED]
    finally:
        sub.close()
    assert changes == [("added", "kim@example.com"), ("password", "kim@example.com"), ("removed", "kim@example.com")]

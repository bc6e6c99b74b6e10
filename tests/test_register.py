"""RFC 3261 §10.3 REGISTER processing over a real UDP socket."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils

import pytest

from registrar_core import events as ev
from registrar_core.config import ConfigError, build_config
from registrar_core.events import EventBus
from registrar_core.location import Contact, LocationService

from .sipclient import UdpPhone, next_aor, register_bytes, server_address


@pytest.fixture
async def phone(server):
    p = await UdpPhone(server_address(server)).open()
    yield p
    p.close()


def bindings(response) -> dict[str, dict[str, str | None]]:
    """Contact URI -> its params, from a 200's Contact list."""
    out = {}
    for c in response.contacts:
        out[c.uri.raw] = {n.lower(): v for n, v in c.params}
    return out


async def test_register_refresh_query(server, phone):
    aor = next_aor()
    first = await phone.register(aor, call_id="c1@test", cseq=1)
    assert first.status == 200
    [(uri, params)] = bindings(first).items()
    assert params["expires"] == "3600"
    assert first.headers.get("Date") and email.utils.parsedate_to_datetime(first.headers.get("Date"))
    assert first.to.tag, "a final response carries a To tag"
    ruid = server.core.fetch_contacts(aor)[0].ruid

    refreshed = await phone.register(aor, call_id="c1@test", cseq=2, expires=1800)
    assert bindings(refreshed)[uri]["expires"] == "1800"
    profile = server.core.fetch_contacts(aor)
    assert profile.count == 1 and profile[0].ruid == ruid and profile[0].cseq == 2

    query = await phone.register(aor, contacts=[], call_id="q@test", expires=None)
    assert query.status == 200 and list(bindings(query)) == [uri]
    assert server.core.fetch_contacts(aor).count == 1, "a query changes nothing"


async def test_multiple_contacts_with_q(server, phone):
    aor = next_aor()
    r = await phone.register(aor, contacts=["<sip:a@10.0.0.1>;q=0.5", "<sip:b@10.0.0.2>;q=1.0",
                                            "<sip:c@10.0.0.3>;q=0.1"])
    assert r.status == 200
    got = bindings(r)
    assert {u: p["q"] for u, p in got.items()} == {
        "sip:a@10.0.0.1": "0.5", "sip:b@10.0.0.2": "1", "sip:c@10.0.0.3": "0.1"}
    assert [c.addr for c in server.core.lookup(f"sip:{aor}")] == [
        "sip:b@10.0.0.2", "sip:a@10.0.0.1", "sip:c@10.0.0.3"]


async def test_contact_expires_param_beats_header(server, phone):
    aor = next_aor()
    r = await phone.register(aor, contacts=["<sip:a@10.0.0.1>;expires=120", "<sip:b@10.0.0.1>"], expires=300)
    got = bindings(r)
    assert got["sip:a@10.0.0.1"]["expires"] == "120"
    assert got["sip:b@10.0.0.1"]["expires"] == "300"


async def test_default_and_max_expires(make_server):
    srv = await make_server(default_expires=900, max_expires=1000)
    phone = await UdpPhone(server_address(srv)).open()
    aor = next_aor()
    r = await phone.register(aor, contacts=["<sip:a@10.0.0.1>", "<sip:b@10.0.0.1>;expires=99999"], expires=None)
    got = bindings(r)
    assert got["sip:a@10.0.0.1"]["expires"] == "900"
    assert got["sip:b@10.0.0.1"]["expires"] == "1000", "longer than max is shortened"
    phone.close()


async def test_interval_too_brief(server, phone):
    aor = next_aor()
    r = await phone.register(aor, expires=30)
    assert r.status == 423
    assert r.headers.get("Min-Expires") == "60"
    assert r.headers.get("P-Registrar-Error")
    assert server.core.fetch_contacts(aor).count == 0


async def test_min_expires_clamp_mode(make_server):
    srv = await make_server(min_expires_mode="clamp")
    phone = await UdpPhone(server_address(srv)).open()
    r = await phone.register(next_aor(), expires=30)
    assert r.status == 200 and list(bindings(r).values())[0]["expires"] == "60"
    phone.close()


async def test_remove_one_contact_with_expires_zero(server, phone):
    aor = next_aor()
    await phone.register(aor, contacts=["<sip:a@10.0.0.1>", "<sip:b@10.0.0.1>"], call_id="x@t", cseq=1)
    r = await phone.register(aor, contacts=["<sip:a@10.0.0.1>;expires=0"], call_id="x@t", cseq=2)
    assert list(bindings(r)) == ["sip:b@10.0.0.1"]


async def test_wildcard_removes_all(server, phone):
    aor = next_aor()
    await phone.register(aor, contacts=["<sip:a@10.0.0.1>", "<sip:b@10.0.0.1>"], call_id="w@t", cseq=1)
    r = await phone.register(aor, contacts=["*"], call_id="w@t", cseq=2, expires=0)
    assert r.status == 200 and r.contacts == []
    assert server.core.fetch_contacts(aor).count == 0


@pytest.mark.parametrize(
    "contacts, expires",
    [(["*"], 3600), (["*"], None), (["*", "<sip:a@10.0.0.1>"], 0)],
    ids=["nonzero-expires", "no-expires", "with-other-contact"],
)
async def test_wildcard_misuse_is_400(server, phone, contacts, expires):
    aor = next_aor()
    await phone.register(aor, contacts=["<sip:keep@10.0.0.1>"])
    r = await phone.register(aor, contacts=contacts, expires=expires)
    assert r.status == 400 and r.headers.get("P-Registrar-Error")
    assert server.core.fetch_contacts(aor).count == 1


async def test_cseq_ordering(server, phone):
    aor = next_aor()
    await phone.register(aor, call_id="o@t", cseq=5, expires=600)
    old = await phone.register(aor, call_id="o@t", cseq=4, expires=1200)
    assert old.status == 500, "RFC 3261 §10.3 step 7: out of order, the request fails"
    assert "Out of order" in old.headers.get("P-Registrar-Error")
    [binding] = server.core.fetch_contacts(aor)
    assert (binding.cseq, binding.expires - binding.modified) == (5, 600), "older CSeq updated nothing"
    wildcard = await phone.register(aor, contacts=["*"], call_id="o@t", cseq=3, expires=0)
    assert wildcard.status == 500 and server.core.fetch_contacts(aor).count == 1, "step 6 too"
    equal = await phone.register(aor, call_id="o@t", cseq=5, expires=0)
    assert server.core.fetch_contacts(aor).count == 1, "equal CSeq on the same Call-ID updates nothing"
    assert equal.status == 200
    other_callid = await phone.register(aor, call_id="other@t", cseq=1, expires=0)
    assert other_callid.status == 200 and server.core.fetch_contacts(aor).count == 0


async def test_require_unknown_extension_is_420(server, phone):
    r = await phone.register(next_aor(), extra=["Require: foo, path"])
    assert r.status == 420 and r.headers.get("Unsupported") == "foo"
    assert server.core.snapshot_stats()["rejected_regs"] == 1
    r = await phone.register(next_aor(), extra=["Proxy-Require: bar"])
    assert r.status == 420 and r.headers.get("Unsupported") == "bar", "Proxy-Require alone is checked too"


async def test_non_sip_to_is_400(server, phone):
    data = register_bytes("x@example.com", [phone.contact], local=phone.local)
    data = data.replace(b"To: <sip:x@example.com>", b"To: <tel:+15551234>")
    assert (await phone.send(data)).status == 400


async def test_foreign_domain_is_404_when_domains_configured(make_server):
    srv = await make_server(domain=["example.com"])
    phone = await UdpPhone(server_address(srv)).open()
    assert (await phone.register("a@example.com")).status == 200
    r = await phone.register("a@elsewhere.org")
    assert r.status == 404 and r.headers.get("P-Registrar-Error")
    phone.close()


async def test_aor_is_canonical(server, phone):
    await phone.register("%61lice@EXAMPLE.com")
    assert server.core.fetch_contacts("alice@example.com").count == 1


async def test_path_stored_in_order_and_echoed(server, phone):
    aor = next_aor()
    path = ["<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>"]
    r = await phone.register(aor, extra=["Supported: path", *(f"Path: {p}" for p in path)])
    assert r.status == 200
    assert r.headers.values("Path") == path
    assert list(server.core.fetch_contacts(aor)[0].path) == path


async def test_path_without_supported_is_420(server, phone):
    r = await phone.register(next_aor(), extra=["Path: <sip:edge.example.net;lr>"])
    assert r.status == 420 and r.headers.get("Unsupported") == "path"


async def test_outbound_instance_and_regid_match_bindings(server, phone):
    aor = next_aor()
    inst = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    first = f"<sip:a@10.0.0.1:5060>;+sip.instance={inst};reg-id=1"
    moved = f"<sip:a@10.0.0.9:6000>;+sip.instance={inst};reg-id=1"
    r1 = await phone.register(aor, contacts=[first], extra=["Supported: outbound, path"])
    assert r1.status == 200 and r1.headers.get("Require") == "outbound"
    ruid = server.core.fetch_contacts(aor)[0].ruid
    r2 = await phone.register(aor, contacts=[moved], extra=["Supported: outbound, path"])
    profile = server.core.fetch_contacts(aor)
    assert profile.count == 1, "same instance and reg-id replaces the old flow"
    assert profile[0].ruid == ruid and profile[0].addr == "sip:a@10.0.0.9:6000"
    assert profile[0].instance == inst.strip('"') and profile[0].regid == 1
    assert list(bindings(r2)) == ["sip:a@10.0.0.9:6000"]


async def test_max_contacts_rejects(make_server):
    srv = await make_server(max_contacts=2)
    phone = await UdpPhone(server_address(srv)).open()
    aor = next_aor()
    assert (await phone.register(aor, contacts=["<sip:a@10.0.0.1>", "<sip:b@10.0.0.1>"])).status == 200
    r = await phone.register(aor, contacts=["<sip:c@10.0.0.1>"])
    assert r.status == 503 and "Too many" in r.headers.get("P-Registrar-Error")
    assert srv.core.fetch_contacts(aor).count == 2
    refresh = await phone.register(aor, contacts=["<sip:a@10.0.0.1>"])
    assert refresh.status == 200, "refreshing an existing binding is not a new contact"
    phone.close()


async def test_unknown_params_and_escaped_headers_kept_byte_exact(server, phone):
    aor = next_aor()
    contacts = ["sip:+19725552222@gw1.example.net;unknownparam",
                "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>;Foo=\"Bar\""]
    r = await phone.register(aor, contacts=contacts)
    got = bindings(r)
    assert got["sip:+19725552222@gw1.example.net"]["unknownparam"] is None
    assert "sip:user@example.com?Route=%3Csip:sip.example.com%3E" in got
    stored = {c.addr: c.params for c in server.core.fetch_contacts(aor)}
    assert stored["sip:+19725552222@gw1.example.net"] == ";unknownparam"
    assert stored["sip:user@example.com?Route=%3Csip:sip.example.com%3E"] == ';Foo="Bar"'


async def test_expired_contact_removed_by_timer_with_event(make_server):
    srv = await make_server(min_expires=1)
    sub = srv.core.subscribe()
    phone = await UdpPhone(server_address(srv)).open()
    aor = next_aor()
    assert (await phone.register(aor, expires=1)).status == 200
    deadline = asyncio.get_running_loop().time() + 5
    expired = []
    while not expired and asyncio.get_running_loop().time() < deadline:
        event = await asyncio.wait_for(sub.get(), 5)
        if event.kind == ev.CONTACT_EXPIRED:
            expired.append(event)
    assert expired and expired[0].data["aor"] == aor
    assert srv.core.fetch_contacts(aor).count == 0
    assert srv.core.snapshot_stats()["expired_contacts"] == 1
    phone.close()


async def test_events_and_counters(server, phone):
    sub = server.core.subscribe()
    aor = next_aor()
    await phone.register(aor, call_id="e@t", cseq=1)
    await phone.register(aor, call_id="e@t", cseq=2)
    await phone.register(aor, expires=30)  # 423
    kinds = [e.kind for e in sub.drain()]
    assert kinds.count(ev.CONTACT_ADDED) == 1 and kinds.count(ev.CONTACT_REFRESHED) == 1
    assert kinds.count(ev.REQUEST_HANDLED) == 3
    stats = server.core.snapshot_stats()
    assert stats["accepted_regs"] == 2 and stats["rejected_regs"] == 1 and stats["challenged"] == 0
    assert stats["registered_users"] == 1 and stats["location_contacts"] == 1


async def test_storage_failure_gives_500_and_changes_nothing(server, phone):
    aor = next_aor()
    assert (await phone.register(aor, contacts=["<sip:a@10.0.0.1>"])).status == 200
    store = server.core.location.store
    await store._require().execute("CREATE TRIGGER fail BEFORE INSERT ON contacts BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    r = await phone.register(aor, contacts=["<sip:b@10.0.0.1>"])
    assert r.status == 500 and r.headers.get("Retry-After")
    assert [c.addr for c in server.core.fetch_contacts(aor)] == ["sip:a@10.0.0.1"]
    assert server.core.snapshot_stats()["storage_error"]
    await store._require().execute("DROP TRIGGER fail")
    assert (await phone.register(aor, contacts=["<sip:b@10.0.0.1>"])).status == 200
    assert server.core.snapshot_stats()["storage_error"] is None
    assert server.core.fetch_contacts(aor).count == 2


async def test_refreshes_keep_one_expiry_entry_per_binding_and_expire_on_time():
    """A refresh that moves a binding's expiry later adds no expiry entry (a busy registrar's
    expiry index would grow by one per REGISTER); the binding still expires at its latest time, and a
    refresh that brings the time earlier is honoured."""
    now = [1000.0]
    location = LocationService(None, EventBus(), clock=lambda: now[0])
    first = Contact(ruid="r1", aor="a@x", addr="sip:a@10.0.0.1", expires=1060.0, callid="c", cseq=1)
    await location.apply("location", [(first, True)], [])
    for cseq in range(2, 50):  # refreshed again and again, each time 60 s from now
        now[0] += 1
        later = dataclasses.replace(first, cseq=cseq, expires=now[0] + 60)
        await location.apply("location", [(later, False)], [])
    assert sum(len(due) for due in location._due.values()) == 2  # one (aor, ruid) entry
    now[0] = 1061.0  # the first expiry time: moved on, not expired
    assert await location.expire_now() == 0 and location.contacts("location", "a@x")
    now[0] = later.expires
    assert await location.expire_now() == 1 and not location.contacts("location", "a@x")
    # An earlier time than the binding had: it expires at that time.
    await location.apply("location", [(dataclasses.replace(first, expires=now[0] + 600), True)], [])
    await location.apply("location", [(dataclasses.replace(first, cseq=2, expires=now[0] + 30), False)], [])
    now[0] += 30
    assert await location.expire_now() == 1


async def test_max_contacts_evict_oldest_removes_the_binding_closest_to_expiry_in_the_same_commit(make_server):
    srv = await make_server(max_contacts=2, max_contacts_mode="evict-oldest")
    phone = await UdpPhone(server_address(srv)).open()
    aor = next_aor()
    assert (await phone.register(aor, contacts=["<sip:a@10.0.0.1>"], expires=3600, call_id="a@t")).status == 200
    assert (await phone.register(aor, contacts=["<sip:b@10.0.0.1>"], expires=600, call_id="b@t")).status == 200
    [b] = [c for c in srv.core.fetch_contacts(aor) if c.addr == "sip:b@10.0.0.1"]
    sub = srv.core.subscribe()
    commits = srv.core.location.commit_size.sum
    r = await phone.register(aor, contacts=["<sip:c@10.0.0.1>"], expires=3600, call_id="c@t")
    assert r.status == 200
    assert set(bindings(r)) == {"sip:a@10.0.0.1", "sip:c@10.0.0.1"}, "b expired soonest: it went"
    assert srv.core.location.commit_size.sum == commits + 1, "the eviction and the new binding: one change"
    events = [e for e in sub.drain() if e.kind in (ev.CONTACT_REMOVED, ev.CONTACT_ADDED)]
    assert [(e.kind, e.data["ruid"], e.data.get("reason")) for e in events][0] == (ev.CONTACT_REMOVED, b.ruid, "evicted")
    assert events[1].kind == ev.CONTACT_ADDED and events[1].data["contact"].addr == "sip:c@10.0.0.1"
    sub.close()
    phone.close()


async def test_max_contacts_evict_oldest_spares_what_the_register_refreshes(make_server):
    srv = await make_server(max_contacts=2, max_contacts_mode="evict-oldest")
    phone = await UdpPhone(server_address(srv)).open()
    aor = next_aor()
    assert (await phone.register(aor, contacts=["<sip:a@10.0.0.1>"], expires=3600, call_id="a@t")).status == 200
    assert (await phone.register(aor, contacts=["<sip:b@10.0.0.1>"], expires=600, call_id="b@t")).status == 200
    # b (closest to expiry) is refreshed by the same REGISTER that adds c: a goes instead.
    r = await phone.register(aor, contacts=["<sip:b@10.0.0.1>", "<sip:c@10.0.0.1>"], call_id="b@t", cseq=2)
    assert r.status == 200 and set(bindings(r)) == {"sip:b@10.0.0.1", "sip:c@10.0.0.1"}
    # More new contacts than the limit in one REGISTER: nothing to evict makes room, refused.
    over = await phone.register(aor, contacts=[f"<sip:{n}@10.0.0.2>" for n in "xyz"], call_id="x@t")
    assert over.status == 503 and "Too many" in over.headers.get("P-Registrar-Error")
    assert {c.addr for c in srv.core.fetch_contacts(aor)} == {"sip:b@10.0.0.1", "sip:c@10.0.0.1"}
    phone.close()


def test_max_contacts_mode_is_reject_or_evict_oldest():
    assert build_config({}).max_contacts_mode == "reject"
    assert build_config({"max-contacts-mode": "evict-oldest"}).max_contacts_mode == "evict-oldest"
    with pytest.raises(ConfigError) as caught:
        build_config({"max-contacts-mode": "evict"})
    assert str(caught.value) == "max-contacts-mode must be 'reject' or 'evict-oldest'"

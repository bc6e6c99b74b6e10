"""The reg event package (RFC 3680 over RFC 6665) against an in-process registrar on real
loopback UDP sockets: a watcher subscribes, the registrar NOTIFYs it as phones register."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time

import pytest

from registrar_core.client_transactions import T1
from registrar_core.sip import parse_uri

from .processes import run_sipp, until, write_injection
from .sipclient import UdpPhone, UdpWatcher, authorization, challenges, next_aor, server_address
from .xsd import reginfo_errors


def reginfo(notify) -> dict:
    """The parts of a NOTIFY a test asserts on: Subscription-State, version, states, events."""
    assert reginfo_errors(notify.body) == ""  # RFC 3680's schema, every NOTIFY
    body = notify.body.decode()
    head = re.search(r'<reginfo [^>]*version="(\d+)" state="(\w+)"', body)
    reg = re.search(r'<registration aor="([^"]+)" id="[^"]+" state="(\w+)"', body)
    contacts = re.findall(r'<contact id="[^"]+" state="(\w+)" event="(\w+)"(?: expires="(\d+)")?', body)
    uris = re.findall(r"<uri>([^<]+)</uri>", body)
    return {"state": notify.headers.get("Subscription-State"), "version": int(head.group(1)),
            "full": head.group(2) == "full", "aor": reg.group(1), "registration": reg.group(2),
            "contacts": [(s, e) for s, e, _ in contacts], "expires": [int(x) for _, _, x in contacts if x],
            "uris": uris, "type": notify.headers.get("Content-Type"), "event": notify.headers.get("Event")}


async def watcher_of(server, aor: str, expires: int = 600) -> tuple[UdpWatcher, dict]:
    """A watcher subscribed to ``aor`` and the first NOTIFY it got (full state)."""
    watcher = await UdpWatcher(server_address(server)).open()
    response = await watcher.subscribe(aor, expires)
    assert response.status == 200, response
    assert response.headers.get("Expires") == str(expires) and response.headers.get("Contact")
    return watcher, reginfo(await watcher.notify())


async def test_full_state_then_a_partial_notify_for_each_change(server):
    aor = next_aor("watched")
    phone = await UdpPhone(server_address(server)).open()
    other = await UdpPhone(server_address(server)).open()
    assert (await phone.register(aor, expires=600)).status == 200
    watcher, first = await watcher_of(server, aor)
    assert first["type"] == "application/reginfo+xml" and first["event"] == "reg"
    assert first["state"].startswith("active;expires=")
    assert (first["version"], first["full"], first["registration"]) == (0, True, "active")
    assert first["aor"] == f"sip:{aor}" and first["contacts"] == [("active", "registered")]
    assert first["uris"] == [phone.contact.strip("<>")]

    assert (await other.register(aor, expires=600)).status == 200
    n = reginfo(await watcher.notify())
    assert (n["version"], n["full"], n["contacts"], n["registration"]) == (1, False, [("active", "registered")], "active")
    assert n["uris"] == [other.contact.strip("<>")]

    call_id = "refresh-" + aor
    phone2 = await UdpPhone(server_address(server)).open()
    assert (await phone2.register(aor, expires=600, call_id=call_id)).status == 200
    n = reginfo(await watcher.notify())
    assert n["version"] == 2 and n["contacts"] == [("active", "registered")]
    assert (await phone2.register(aor, expires=1200, call_id=call_id, cseq=2)).status == 200
    n = reginfo(await watcher.notify())
    assert n["version"] == 3 and n["contacts"] == [("active", "refreshed")] and n["expires"][0] > 900
    assert (await phone2.register(aor, expires=300, call_id=call_id, cseq=3)).status == 200
    n = reginfo(await watcher.notify())
    assert n["version"] == 4 and n["contacts"] == [("active", "shortened")] and n["expires"][0] <= 300
    assert (await phone2.register(aor, expires=0, call_id=call_id, cseq=4)).status == 200
    n = reginfo(await watcher.notify())
    assert n["version"] == 5 and n["contacts"] == [("terminated", "unregistered")]
    assert n["registration"] == "active"  # two contacts are left

    await server.core.unregister(aor)  # the operator: both remaining contacts, rejected
    n = reginfo(await watcher.notify())
    assert n["version"] == 6 and n["registration"] == "terminated"
    assert sorted(n["contacts"]) == [("terminated", "rejected")] * 2
    for p in (phone, other, phone2, watcher):
        p.close()


async def test_expired_and_deactivated_contacts(server):
    aor = next_aor("expiring")
    phone = await UdpPhone(server_address(server)).open()
    watcher, first = await watcher_of(server, aor)
    assert (first["registration"], first["contacts"]) == ("init", [])  # nobody registered yet
    assert (await phone.register(aor, expires=600)).status == 200
    n = reginfo(await watcher.notify())
    assert n["contacts"] == [("active", "registered")]
    contact = server.core.fetch_contacts(aor)[0]
    await server.core.location.apply("location", [], [(contact, "connection-closed")])
    n = reginfo(await watcher.notify())
    assert n["contacts"] == [("terminated", "deactivated")] and n["registration"] == "terminated"
    assert (await phone.register(aor, expires=600, cseq=5)).status == 200
    assert reginfo(await watcher.notify())["contacts"] == [("active", "registered")]
    contact = server.core.fetch_contacts(aor)[0]
    await server.core.location.apply("location", [], [(contact, "expired")])
    n = reginfo(await watcher.notify())
    assert n["contacts"] == [("terminated", "expired")] and n["version"] == 4
    phone.close()
    watcher.close()


async def test_refresh_gets_full_state_and_unsubscribe_a_terminated_notify(server):
    aor = next_aor("refreshing")
    watcher, first = await watcher_of(server, aor)
    assert first["version"] == 0
    listed = server.core.reg_subscriptions(aor)
    assert [(s["aor"], s["watcher"]) for s in listed] == [(aor, "sip:watcher@example.net")]
    assert 590 <= listed[0]["expires"] <= 600
    r = await watcher.subscribe(aor, 1200)  # in-dialog: To tag
    assert r.status == 200 and r.headers.get("Expires") == "1200" and r.to.tag == watcher.to_tag
    n = reginfo(await watcher.notify())
    assert n["full"] and n["version"] == 1
    assert server.core.reg_subscriptions(aor)[0]["expires"] > 1100
    r = await watcher.subscribe(aor, 0)
    assert r.status == 200
    n = reginfo(await watcher.notify())
    assert n["state"] == "terminated;reason=timeout" and n["version"] == 2
    assert server.core.reg_subscriptions(aor) == []
    assert server.core.location.watch is None  # nobody watches: REGISTERs pay nothing
    r = await watcher.subscribe(aor, 600)  # the dialog is over
    assert r.status == 481
    watcher.close()


async def test_subscription_expiry_ends_with_terminated_timeout(server):
    aor = next_aor("short")
    server.core.reg_events.min_expires = 1
    watcher, _ = await watcher_of(server, aor, expires=1)
    n = reginfo(await watcher.notify(timeout=5))
    assert n["state"] == "terminated;reason=timeout"
    assert server.core.reg_subscriptions() == []
    watcher.close()


async def test_a_watcher_that_stops_answering_is_retransmitted_to_then_dropped(server):
    aor = next_aor("silent")
    server.core.reg_events.notify_timeout = 8 * T1  # Timer F shortened: E fires at 0.5, 1, 2 s
    watcher, _ = await watcher_of(server, aor)
    watcher.protocol.answer_with = None
    phone = await UdpPhone(server_address(server)).open()
    assert (await phone.register(aor, expires=600)).status == 200
    first = await watcher.notify()
    again = await watcher.notify()  # the same NOTIFY, retransmitted (RFC 3261 §17.1.2.2)
    assert bytes(again) == bytes(first)
    assert await until(lambda: server.core.reg_subscriptions(aor) == [], timeout=15)
    stats = server.core.snapshot_stats()  # what `ctl stats` prints
    assert stats["reg_subscriptions_dropped"] == 1 and stats["reg_notify_failed"] == 1
    assert stats["reg_subscriptions"] == 0 and stats["reg_notify_sent"] == 2  # full state, then the change
    phone.close()
    watcher.close()


async def test_a_481_ends_the_subscription(server):
    aor = next_aor("gone")
    watcher, _ = await watcher_of(server, aor)
    watcher.protocol.answer_with = 481
    phone = await UdpPhone(server_address(server)).open()
    assert (await phone.register(aor, expires=600)).status == 200
    await watcher.notify()
    assert await until(lambda: server.core.reg_subscriptions(aor) == [], timeout=5)
    phone.close()
    watcher.close()


async def test_other_events_get_489_and_bad_subscribes_a_clear_answer(server):
    watcher = await UdpWatcher(server_address(server)).open()
    r = await watcher.subscribe(next_aor(), event="presence")
    assert r.status == 489 and r.headers.get("Allow-Events") == "reg"
    r = await watcher.subscribe(next_aor(), 10)
    assert r.status == 423 and r.headers.get("Min-Expires") == "60"
    r = await watcher.subscribe(next_aor(), accept="application/pidf+xml")
    assert r.status == 406
    assert server.core.reg_subscriptions() == []
    watcher.close()


async def test_digest_as_the_aors_user_or_a_trusted_peer(make_server, short_dir):
    srv = await make_server(auth=True)
    alice, bob = next_aor("alice"), next_aor("bob")
    await srv.core.subscribers.add(alice, "alice-secret")
    await srv.core.subscribers.add(bob, "bob-secret")
    watcher = await UdpWatcher(server_address(srv)).open()
    r = await watcher.subscribe(alice)
    assert r.status == 401
    # Bob's own credentials do not open Alice's registration.
    auth = authorization(challenges(r)[0], bob.split("@")[0], "bob-secret", f"sip:{alice}", method="SUBSCRIBE")
    r = await watcher.subscribe(alice, extra=[auth])
    assert r.status == 403
    # An AOR nobody provisioned gets the same 401 as Alice's: no existence told.
    stranger = await UdpWatcher(server_address(srv)).open()
    r_unknown = await stranger.subscribe(next_aor("nobody"))
    assert r_unknown.status == 401
    stranger.close()
    r = await watcher.subscribe(alice)
    auth = authorization(challenges(r)[0], alice.split("@")[0], "alice-secret", f"sip:{alice}", method="SUBSCRIBE")
    r = await watcher.subscribe(alice, extra=[auth])
    assert r.status == 200
    assert reginfo(await watcher.notify())["version"] == 0
    watcher.close()

    trusted = await make_server(auth=True, trusted="127.0.0.0/8", db=str(short_dir / "trusted.db"))
    peer = await UdpWatcher(server_address(trusted)).open()
    r = await peer.subscribe(next_aor("anyone"))  # no credentials asked of a trusted peer
    assert r.status == 200
    assert reginfo(await peer.notify())["registration"] == "init"
    peer.close()


async def test_stopping_the_registrar_ends_subscriptions_with_deactivated(make_server):
    srv = await make_server()
    aor = next_aor("restart")
    watcher, _ = await watcher_of(srv, aor)
    await srv.stop()
    n = reginfo(await watcher.notify())
    assert n["state"] == "terminated;reason=deactivated" and n["version"] == 1
    watcher.close()


async def test_notifies_coalesce_per_loop_iteration_and_wait_for_the_previous_answer(server):
    aor = next_aor("busy")
    watcher, _ = await watcher_of(server, aor)
    phones = [await UdpPhone(server_address(server)).open() for _ in range(3)]
    await asyncio.gather(*(p.register(aor, expires=600) for p in phones))
    seen: list[tuple[str, str]] = []
    versions = []
    while len(seen) < 3:
        n = reginfo(await watcher.notify())
        seen += n["contacts"]
        versions.append(n["version"])
    assert seen == [("active", "registered")] * 3
    assert versions == list(range(1, len(versions) + 1))  # one at a time, no gap
    for p in phones:
        p.close()
    watcher.close()


@pytest.mark.parametrize("aor_kind", ["registered", "unknown"])
async def test_trusted_watch_of_an_unknown_aor_looks_like_an_empty_one(server, aor_kind):
    aor = next_aor(aor_kind)
    if aor_kind == "registered":
        phone = await UdpPhone(server_address(server)).open()
        await phone.register(aor, expires=600)
        await server.core.unregister(aor)
        phone.close()
    watcher, first = await watcher_of(server, aor)
    assert (first["registration"], first["contacts"]) == ("init", [])
    watcher.close()


# -- sipp as the watcher, against `sipconsole serve` (tests/scenarios/reg_event*.xml) -------------
@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_sipp_watches_registered_refreshed_shortened_expired_unregistered(serve_process, tmp_path, transport):
    serve_process.start("--min-expires", "1")
    inf = write_injection(tmp_path / "aor.csv", [(f"sipp-watched-{transport}", "example.com")])
    result = run_sipp("reg_event.xml", serve_process.port, "-inf", str(inf), transport=transport, timeout=30)
    assert (result.successful, result.failed) == (1, 0), result.output[-3000:]
    code, listed = serve_process.ctl("subscriptions")
    assert code == 0 and listed["subscriptions"] == []  # unsubscribed


def test_sipp_watches_deactivated_and_rejected(serve_process, tmp_path):
    serve_process.start("--single-contact")
    aor = "sipp-policy@example.com"
    inf = write_injection(tmp_path / "aor.csv", [("sipp-policy", "example.com")])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_sipp, "reg_event_registrar.xml", serve_process.port, "-inf", str(inf), timeout=30)
        deadline = time.monotonic() + 25
        desk = []
        while not desk and time.monotonic() < deadline and not running.done():
            code, shown = serve_process.ctl("show", aor)
            desk = [c for c in shown["contacts"] if "-desk@" in c["addr"]] if code == 0 else []
            time.sleep(0.1)
        assert desk, running.result().output[-3000:] if running.done() else "the second device never registered"
        code, listed = serve_process.ctl("subscriptions", aor)
        assert code == 0 and [s["watcher"] for s in listed["subscriptions"]] == ["sip:watcher@example.com"]
        code, text = serve_process.ctl("subscriptions", json_output=False)
        header, row = text.splitlines()
        assert header.split() == ["AOR", "WATCHER", "SOURCE", "EXPIRES", "VERSION"]
        assert row.split()[:2] == [aor, "sip:watcher@example.com"]
        assert row.split()[2].startswith("udp:127.0.0.1:")  # sipp's port (5060, or the next free one)
        assert 500 < int(row.split()[3]) <= 600
        assert serve_process.ctl("subscriptions", "not an aor")[0] == 2
        assert serve_process.ctl("unregister", aor)[0] == 0
        result = running.result()
    assert (result.successful, result.failed) == (1, 0), result.output[-3000:]


async def test_a_domain_not_served_here_gets_404_and_a_subscribe_without_contact_400(make_server):
    srv = await make_server(domain=["example.com"])
    watcher = await UdpWatcher(server_address(srv)).open()
    r = await watcher.subscribe("alice@elsewhere.org")
    assert r.status == 404
    data = watcher.subscribe_bytes(next_aor()).replace(b"Contact: ", b"X-No-Contact: ")
    watcher.protocol.transport.sendto(data, watcher.server)
    r = await asyncio.wait_for(watcher.protocol.responses.get(), 5)
    assert r.status == 400 and "Contact" in (r.headers.get("Warning") or "")
    assert srv.core.reg_subscriptions() == []
    watcher.close()


async def test_a_refresh_from_a_new_address_takes_the_notifies_there(server):
    aor = next_aor("moving")
    old, _ = await watcher_of(server, aor)
    new = await UdpWatcher(server_address(server)).open()  # the same dialog, a new NAT binding
    new.call_id, new.from_tag, new.to_tag, new.cseq = old.call_id, old.from_tag, old.to_tag, old.cseq
    assert (await new.subscribe(aor, 600)).status == 200
    assert reginfo(await new.notify())["full"]
    phone = await UdpPhone(server_address(server)).open()
    assert (await phone.register(aor, expires=600)).status == 200
    assert reginfo(await new.notify())["contacts"] == [("active", "registered")]
    assert old.protocol.requests.empty()
    for p in (old, new, phone):
        p.close()


async def test_watchers_of_one_aor_are_capped(server):
    aor = next_aor("popular")
    server.core.reg_events.max_per_aor = 2
    watchers = [(await watcher_of(server, aor))[0] for _ in range(2)]
    third = await UdpWatcher(server_address(server)).open()
    r = await third.subscribe(aor)
    assert r.status == 403 and "2 watchers of this AOR already" in r.headers.get("Warning")
    assert (await third.subscribe(next_aor("other"))).status == 200  # another AOR is another count
    assert len(server.core.reg_subscriptions(aor)) == 2
    for w in (*watchers, third):
        w.close()



def gruus_in(notify) -> tuple[str, str, int]:
    """(pub-gruu, temp-gruu, first-cseq) of the one contact of a NOTIFY (valid per the schema)."""
    reginfo(notify)
    body = notify.body.decode()
    pub = re.search(r'<gr:pub-gruu uri="([^"]+)"/>', body)
    temp = re.search(r'<gr:temp-gruu uri="([^"]+)" first-cseq="(\d+)"/>', body)
    assert pub and temp, body
    return pub.group(1), temp.group(1), int(temp.group(2))


async def test_a_binding_with_an_instance_carries_its_gruus_in_the_notify(server):
    """RFC 5628: a contact registered with +sip.instance has <gr:pub-gruu> (the one the 200
    gave) and a <gr:temp-gruu> that reaches that device, in the full and the partial state."""
    aor = next_aor("gruu")
    urn = "urn:uuid:6f3a2c1e-8b4d-4e2a-9c1b-0d5e7f9a1b2c"
    phone = await UdpPhone(server_address(server)).open()
    device = f'<sip:dev@127.0.0.1:{phone.local[1]}>;+sip.instance="<{urn}>"'
    ok = await phone.register(aor, [device], expires=600, call_id="gruu@t", extra=["Supported: gruu"])
    assert ok.status == 200
    given = re.search(r';pub-gruu="([^"]+)"', ok.headers.get("Contact")).group(1)
    watcher = await UdpWatcher(server_address(server)).open()
    assert (await watcher.subscribe(aor, 600)).status == 200
    full = gruus_in(await watcher.notify())
    assert (await phone.register(aor, [device], expires=600, call_id="gruu@t", cseq=2,
                                 extra=["Supported: gruu"])).status == 200
    partial = gruus_in(await watcher.notify())
    for pub, temp, first_cseq in (full, partial):
        assert pub == given
        reached = server.core.lookup(parse_uri(temp))
        assert [c.instance for c in reached] == [f"<{urn}>"], "the NOTIFY's temp-gruu reaches the device"
    assert (full[2], partial[2]) == (1, 2)
    watcher.close()
    phone.close()

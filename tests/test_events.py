"""The event bus: a full subscription gets every event as published; a compact one (a console)
gets the same view, built once a frame: the first requests of the frame, each changed contact once."""

from __future__ import annotations

import asyncio
import json

import orjson

from registrar_core.events import (CONTACT_ADDED, CONTACT_REFRESHED, CONTACT_REMOVED, EVENTS_LOST,
                                   REQUEST_HANDLED, TRAFFIC_PER_FRAME, CompactSubscription, EventBus, expanded)
from registrar_core.location import Contact
from registrar_core.source import parse_address

from .sipclient import UdpPhone, register_bytes

COMPACT_FIELDS = ("aor", "ruid", "expires_at", "modified", "user_agent")


def contact(ruid: str, expires: float, user_agent: str = "desk") -> Contact:
    return Contact(ruid, "amy@example.com", f"sip:{ruid}@192.0.2.1", expires, "call", 1,
                   user_agent=user_agent, modified=expires - 3600)  # 3600 s registrations


def frame(sub: CompactSubscription) -> list[dict]:
    """A frame as a console reads it: encoded as the control socket does, parsed, expanded."""
    return [expanded(record) for record in json.loads(orjson.dumps(sub.records()))]


def compact_view(records: list[dict]) -> tuple[list[dict], dict[str, tuple[str, dict]], list[dict]]:
    """(request.handled records, ruid -> (kind, contact fields) of adds and refreshes, removals)."""
    requests = [r for r in records if r["kind"] == REQUEST_HANDLED]
    changes = {r["ruid"]: (r["kind"], r["contact"]) for r in records if r["kind"] in (CONTACT_ADDED, CONTACT_REFRESHED)}
    removals = [r for r in records if r["kind"] == CONTACT_REMOVED]
    return requests, changes, removals


async def test_a_compact_subscription_shows_what_a_full_one_shows_cut_to_a_frame(server):
    """REGISTERs over UDP (new AORs, refreshes, an unregistration) while a console and ``ctl
    events`` listen: the console's frame holds the first TRAFFIC_PER_FRAME of the requests the
    full subscription got, each added or refreshed contact once in its latest state (added if
    it was added in the frame), and the removals as they were published."""
    _, host, port = parse_address(server.core.listening[0])
    phones = [await UdpPhone((host, port)).open() for _ in range(10)]
    full, compact = server.core.subscribe(), server.core.subscribe_compact()
    try:
        async def refreshes(phone: UdpPhone, n: int) -> None:
            aor = f"ev{n}@example.com"
            for cseq in range(1, 30):
                response = await phone.send(register_bytes(aor, [phone.contact], local=phone.local,
                                                           call_id=f"c{n}", cseq=cseq))
                assert response.status == 200
            gone = await phone.send(register_bytes(aor, [phone.contact], local=phone.local, call_id=f"c{n}",
                                                   cseq=30, expires=0)) if n % 3 == 0 else None
            assert gone is None or gone.status == 200

        await asyncio.gather(*(refreshes(phone, n) for n, phone in enumerate(phones)))
        events = [e.to_dict() for e in full.drain()]
        records = frame(compact)
    finally:
        full.close()
        compact.close()
        for phone in phones:
            phone.close()
    requests, changes, removals = compact_view(records)
    handled = [e for e in events if e["kind"] == REQUEST_HANDLED]
    assert len(handled) == 10 * 29 + 4 > TRAFFIC_PER_FRAME
    assert requests == handled[:TRAFFIC_PER_FRAME]
    assert requests[0]["user_agent"] == "sipconsole-tests" and requests[0]["source"].startswith("udp:127.0.0.1:")
    expected: dict[str, tuple[str, dict]] = {}
    for e in events:
        if e["kind"] in (CONTACT_ADDED, CONTACT_REFRESHED):
            kind = CONTACT_ADDED if expected.get(e["ruid"], ("",))[0] == CONTACT_ADDED else e["kind"]
            fields = {"aor": e["contact"]["aor"], "ruid": e["ruid"], "expires_at": e["contact"]["expires_at"],
                      "modified": e["contact"]["modified"], "user_agent": e["contact"]["user_agent"]}
            expected[e["ruid"]] = (kind, fields)
        elif e["kind"] == CONTACT_REMOVED:
            expected.pop(e["ruid"], None)  # the removal is the contact's latest event
    assert len(expected) == 6 and {kind for kind, _ in expected.values()} == {CONTACT_ADDED}
    assert changes == expected
    assert [{k: v for k, v in r.items() if k != "time"} for r in removals] == [
        {k: v for k, v in e.items() if k != "time"} for e in events if e["kind"] == CONTACT_REMOVED]
    assert len(removals) == 4 and {r["reason"] for r in removals} == {"unregistered"}
    assert compact.records() == []  # taken: the next frame starts empty


def test_a_frame_keeps_each_contact_once_and_the_removal_last():
    bus = EventBus(clock=lambda: 100.0)
    sub = bus.subscribe_compact()
    bus.changed("location", contact("r1", 1000.0), True)
    bus.changed("location", contact("r1", 2000.0, "phone 2"), False)  # refreshed in the same frame
    bus.changed("location", contact("r2", 1000.0), False)
    bus.changed("location", contact("r3", 1000.0), True)
    gone = contact("r3", 1000.0)
    bus.publish(CONTACT_REMOVED, table="location", aor=gone.aor, ruid="r3", reason="admin", contact=gone)
    records = frame(sub)
    assert [(r["kind"], r["ruid"]) for r in records] == [
        (CONTACT_REMOVED, "r3"), (CONTACT_ADDED, "r1"), (CONTACT_REFRESHED, "r2")]
    assert records[0]["contact"]["addr"] == "sip:r3@192.0.2.1"  # a removal keeps the whole contact
    assert records[1]["contact"] == {"aor": "amy@example.com", "ruid": "r1", "expires_at": 2000.0,
                                     "modified": -1600.0, "user_agent": "phone 2"}
    assert tuple(records[2]["contact"]) == COMPACT_FIELDS


def test_a_compact_subscriber_that_falls_behind_gets_events_lost():
    bus = EventBus(clock=lambda: 100.0)
    sub = bus.subscribe_compact(maxsize=3)
    for n in range(3):
        bus.changed("location", contact(f"r{n}", 1000.0), True)
    bus.changed("location", contact("r0", 1500.0), False)  # a mark already held: no more to keep
    bus.changed("location", contact("r9", 1000.0), True)  # the fourth: everything queued is lost
    bus.changed("location", contact("r8", 1000.0), False)
    records = frame(sub)
    assert [r["kind"] for r in records] == [EVENTS_LOST, CONTACT_REFRESHED]
    assert records[0]["dropped"] == 4 and bus.dropped == 4
    assert records[1]["ruid"] == "r8"
    sub.close()
    assert not bus.active
    bus.changed("location", contact("r7", 1000.0), True)  # nobody listens: nothing kept
    assert sub.records() == []


class _Note:
    """What the pipeline hands to request.handled: the request's AOR, source and User-Agent."""

    def __init__(self, n: int) -> None:
        self.aor, self.source, self.user_agent = f"u{n}@example.com", f"udp:192.0.2.{n % 250}:5060", "desk"


def test_requests_come_in_order_merged_with_the_events_by_time_frame_after_frame():
    """A frame holds its requests oldest first, the other events between them by time; the next
    frame starts from its own requests, whether the last one had more than it keeps or not."""
    now = [0.0]
    bus = EventBus(clock=lambda: now[0])
    sub = bus.subscribe_compact()
    for total in (3, TRAFFIC_PER_FRAME + 7, 1):
        for n in range(total):
            now[0] += 1.0
            bus.handled("REGISTER", _Note(n), 200, "OK")
            if n == 1:
                bus.publish("security", event="ban", ip="192.0.2.9", port=5060, user="")
        records = frame(sub)
        requests = [r for r in records if r["kind"] == REQUEST_HANDLED]
        shown = min(total, TRAFFIC_PER_FRAME)
        assert [r["aor"] for r in requests] == [f"u{n}@example.com" for n in range(shown)]
        assert [r["time"] for r in records if "time" in r] == sorted(r["time"] for r in records)
        assert [r["kind"] for r in records].count("security") == (1 if total > 1 else 0)
        assert not sub.pending() and sub.records() == []
    sub.close()

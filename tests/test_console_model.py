"""The console's mirror of the location table: incremental updates equal a full rebuild."""

from __future__ import annotations

import random

import pytest

from console.feed import EventBuffer
from console.format import countdown, duration, sparkline
from console.model import SORTS, Registry

POLICY = {"single_contact": False, "single_contact_overrides": {}, "caller_check": False}


def contact(aor: str, ruid: str, modified: float, expires_at: float, agent: str = "ua") -> dict:
    return {"aor": aor, "ruid": ruid, "modified": modified, "expires_at": expires_at, "user_agent": agent}


def event(kind: str, c: dict, **extra) -> dict:
    return {"kind": kind, "time": c["modified"], "table": "location", "aor": c["aor"], "ruid": c["ruid"],
            "contact": c, **extra}


def view(registry: Registry) -> list[str]:
    return [registry.aor_at(i) for i in range(len(registry))]


def expected(registry: Registry) -> list[str]:
    rows = [r for r in registry.rows.values() if registry.filter in r.aor.lower()]
    rows.sort(key=SORTS[registry.sort], reverse=registry.reverse)
    return [r.aor for r in rows]


@pytest.mark.parametrize("sort", sorted(SORTS))
def test_incremental_updates_match_a_rebuild(sort):
    rng = random.Random(sort)
    registry = Registry()
    registry.load({"aors": []}, POLICY)
    registry.set_sort(sort, reverse=sort == "expires")
    registry.set_filter("1")
    live: dict[str, dict] = {}
    for step in range(3000):
        aor = f"user{rng.randrange(60)}@example.com"
        if live and rng.random() < 0.3:
            gone = live.pop(rng.choice(list(live)))
            batch = [event(rng.choice(["contact.removed", "contact.expired"]), gone, reason="x")]
        else:
            ruid = f"r{rng.randrange(150)}"
            c = contact(aor, ruid, step, step + rng.randrange(1, 500), rng.choice("abc"))
            if ruid in live and live[ruid]["aor"] != aor:
                continue
            live[ruid] = c
            batch = [event("contact.added", c)]
        registry.apply(batch)
        if step % 97 == 0:
            registry.set_filter(rng.choice(["", "1", "12", "user2"]))
        assert view(registry) == expected(registry)
    assert registry.contacts == len(live)


def test_stale_events_do_not_undo_newer_state():
    registry = Registry()
    fresh = contact("a@x", "r1", modified=200, expires_at=900)
    registry.load({"aors": [{"aor": "a@x", "contacts": [fresh]}]}, POLICY)
    registry.apply([event("contact.refreshed", contact("a@x", "r1", modified=100, expires_at=500))])
    assert registry.rows["a@x"].soonest == 900
    registry.apply([event("contact.removed", contact("a@x", "r9", 50, 60), reason="admin")])
    assert registry.contacts == 1


def test_policy_events_and_forget():
    registry = Registry()
    registry.load({"aors": [{"aor": "a@x", "contacts": [contact("a@x", "r1", 1, 9)]}]}, POLICY)
    registry.apply([{"kind": "policy.changed", "table": "location", "aor": "a@x", "name": "single_contact",
                     "value": "on"},
                    {"kind": "policy.changed", "table": "location", "aor": "", "name": "caller_check",
                     "value": "on"}])
    assert registry.single_contact_for("a@x") and registry.caller_check and not registry.single_contact
    registry.apply([{"kind": "policy.changed", "table": "location", "aor": "a@x", "name": "single_contact",
                     "value": None}])
    assert not registry.single_contact_for("a@x")
    registry.forget([{"aor": "a@x", "ruid": "r1"}])
    assert len(registry) == 0 and registry.contacts == 0


def test_event_buffer_keeps_the_latest_event_per_contact():
    buffer = EventBuffer(traffic_limit=3)
    a1 = contact("a@x", "r1", 1, 10)
    buffer.add([event("contact.added", a1), event("contact.refreshed", {**a1, "modified": 2})])
    buffer.add([event("contact.removed", a1, reason="admin")])
    buffer.add([{"kind": "request.handled", "n": i} for i in range(5)])
    buffer.add([{"kind": "storage.state", "ok": False, "error": "disk"},
                {"kind": "storage.state", "ok": True, "error": None}])
    changes, traffic = buffer.take()
    assert [e["kind"] for e in changes] == ["storage.state", "contact.removed"]
    assert changes[0]["ok"] and [t["n"] for t in traffic] == [2, 3, 4]
    assert len(buffer) == 0


def test_formats():
    assert [duration(s) for s in (5, 65, 3700, 90000)] == ["5s", "1m05s", "1h01m", "1d01h"]
    assert countdown(100, 99.2) == ("1s", "warn")
    assert countdown(100, 100) == ("expired", "error")
    assert countdown(1000, 0)[1] == ""
    assert sparkline([0, 1, 2, 4], 4) == " ▂▄█"
    assert len(sparkline(list(range(120)), 40)) == 40

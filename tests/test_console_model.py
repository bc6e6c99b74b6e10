"""The console's mirror of the location table: incremental updates equal a full rebuild."""

from __future__ import annotations

import random

import pytest

from console.feed import EventBuffer
from console.format import ADDRESS_WIDTH, countdown, duration, short_address, sparkline
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
    for r in rows:  # each row's summary is its bindings' now, however it changed
        newest = max(r.bindings.values(), key=lambda b: b.modified)
        assert (r.soonest, r.newest, r.agent) == (min(b.expires_at for b in r.bindings.values()), newest.modified,
                                                  newest.user_agent)
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
    batch: list[dict] = []  # a flush applies several: an AOR may come and go within one
    for step in range(3000):
        aor = f"user{rng.randrange(60)}@example.com"
        if live and rng.random() < 0.3:
            gone = live.pop(rng.choice(list(live)))
            batch.append(event(rng.choice(["contact.removed", "contact.expired"]), gone, reason="x"))
        else:
            ruid = f"r{rng.randrange(150)}"
            c = contact(aor, ruid, step, step + rng.randrange(1, 500), rng.choice("abc"))
            if ruid in live and live[ruid]["aor"] != aor:
                continue
            live[ruid] = c
            batch.append(event("contact.added", c))
        if rng.random() < 0.6:
            continue
        registry.apply(batch)
        batch = []
        if step % 97 == 0:
            registry.set_filter(rng.choice(["", "1", "12", "user2"]))
        assert view(registry) == expected(registry)
    registry.apply(batch)
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


def test_event_buffer_says_when_a_contact_event_came_whole():
    """The contacts pane reads compact records only when its AOR's row changed; a whole event
    (a removal, reachability) it reads in any case: the buffer says whether one came."""
    buffer = EventBuffer(traffic_limit=3)
    buffer.add([["contact.refreshed", "location", "a@x", "r1", 10.0, 1.0, "ua"],
                ["request.handled", 1.0, "REGISTER", "a@x", "udp:1.2.3.4:5060", 200, "OK", "ua"],
                {"kind": "storage.state", "ok": True, "error": None}])
    assert not buffer.whole
    buffer.add([{"kind": "contact.reachability", "ruid": "r1", "state": "up", "rtt_ms": 3}])
    assert buffer.whole
    buffer.take()
    assert not buffer.whole
    buffer.add([event("contact.removed", contact("a@x", "r1", 1, 10), reason="admin")])
    assert buffer.whole


def test_formats():
    assert [duration(s) for s in (5, 65, 3700, 90000)] == ["5s", "1m05s", "1h01m", "1d01h"]
    assert countdown(100, 99.2) == ("1s", "warn")
    assert countdown(100, 100) == ("expired", "error")
    assert countdown(1000, 0)[1] == ""
    assert sparkline([0, 1, 2, 4], 4) == " ▂▄█"
    assert len(sparkline(list(range(120)), 40)) == 40
    # Transport addresses: every IPv4 one whole; a long IPv6 one keeps transport, both ends and port.
    assert short_address("tcp:255.255.255.255:65535") == "tcp:255.255.255.255:65535"
    assert len("tcp:255.255.255.255:65535") == ADDRESS_WIDTH
    assert short_address("udp:[::1]:5060") == "udp:[::1]:5060"
    v6 = short_address("udp:[2001:db8:85a3:8d3:1319:8a2e:370:7348]:5060")
    assert v6 == "udp:[2001:db…0:7348]:5060" and len(v6) == ADDRESS_WIDTH
    assert short_address("sip:a-very-long-host-name.example.com:5060") == "sip:a-very-long-host-name.example.com:5060"


# -- the paged initial load --------------------------------------------------------------------

async def _paged_world(seed: int):
    """A memory-only core with 300 AORs (1-3 contacts each), registered through REGISTER bytes."""
    from registrar_core.api import RegistrarCore
    from registrar_core.config import build_config
    from registrar_core.control import LocalClient
    from registrar_core.source import Source

    from .sipclient import register_bytes

    core = RegistrarCore(build_config({"auth": False, "ip_budget": 0, "db": "/nonexistent/location.db"}),
                         memory_only=True)
    rng = random.Random(seed)
    serial = iter(range(1, 1_000_000))

    async def register(user: str, device: int, expires: int = 3600) -> None:
        n = next(serial)
        port = 10_000 + device
        data = register_bytes(f"{user}@example.com", [f"<sip:{user}@192.0.2.1:{port}>"], local=("192.0.2.1", port),
                              call_id=f"{user}-{device}", cseq=n, expires=expires)
        await core.handle(data, Source("udp", "192.0.2.1", port, "udp:198.51.100.7:5060"))

    for i in range(300):
        for device in range(rng.randrange(1, 4)):
            await register(f"u{i:03d}", device)
    return core, LocalClient(core), rng, register


def rows_of(registry: Registry) -> dict[str, dict[str, tuple]]:
    return {aor: {ruid: (b.expires_at, b.modified, b.user_agent) for ruid, b in row.bindings.items()}
            for aor, row in registry.rows.items()}


@pytest.mark.parametrize("overlap", [64, 1])  # 1: every deletion before the page shifts past it
async def test_paged_load_equals_a_full_load_while_the_table_changes(overlap):
    """Between two pages AORs go (shifting the positions), come and refresh; the pages plus
    the events received meanwhile give exactly the table a full dump gives afterwards."""
    from console.model import read_table

    core, client, rng, register = await _paged_world(overlap)
    sub = core.subscribe()  # the console subscribes before its first page
    fresh = iter(range(1000, 2000))

    async def changing_call(method: str, **params):
        if method == "dump" and params.get("offset"):
            aors = list(core.location.aors())
            for aor in rng.sample(aors, 6):  # whole AORs go: everything after them slides back
                await core.unregister(aor)
            for _ in range(3):
                await register(f"n{next(fresh)}", 0)
            for aor in rng.sample(list(core.location.aors()), 4):
                await register(aor.split("@")[0], 0, expires=1800)
        return await client.call(method, **params)

    registry = Registry()
    pages = 0
    async for entries, reached, total in read_table(changing_call, page=40, overlap=overlap):
        registry.add_entries(entries)
        pages += 1
    registry.finish_load(await client.call("policy.get"))
    assert pages >= 7
    registry.apply([e.to_dict() for e in sub.drain()])

    full = Registry()
    full.load(await client.call("dump"), await client.call("policy.get"))
    assert rows_of(registry) == rows_of(full)
    assert registry.contacts == full.contacts
    assert view(registry) == view(full)
    sub.close()


async def test_plain_offset_paging_would_skip_aors():
    """Why read_table overlaps and checks: offset += limit misses AORs that slid back."""
    core, client, rng, _ = await _paged_world(7)
    offset, seen = 0, set()
    while offset is not None:
        if offset:
            for aor in rng.sample(list(core.location.aors()), 6):
                await core.unregister(aor)
        reply = await client.call("dump", offset=offset, limit=40)
        seen |= {e["aor"] for e in reply["aors"]}
        offset = reply["next"]
    assert set(core.location.aors()) - seen, "some AORs were never read"


def test_events_lost_drops_what_came_before_and_asks_for_a_reload():
    buffer = EventBuffer(traffic_limit=10)
    a1 = contact("a@x", "r1", 1, 10)
    buffer.add([event("contact.added", a1), {"kind": "request.handled", "n": 1}])
    buffer.add([{"kind": "events.lost", "dropped": 5}, event("contact.added", contact("b@x", "r2", 2, 20)),
                {"kind": "security", "event": "ban", "ip": "192.0.2.9", "port": 5060, "user": ""}])
    assert buffer.lost
    changes, traffic = buffer.take()
    assert [e["ruid"] for e in changes] == ["r2"]
    assert [e["kind"] for e in traffic] == ["request.handled", "security"]


def test_collector_pauses_nest():
    import gc

    from console.memory import collector_paused

    assert gc.isenabled()
    first = collector_paused()
    first.__enter__()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the first block still runs
    first.__exit__(None, None, None)
    assert gc.isenabled()


def test_after_a_load_young_passes_collect_cycles_and_a_middle_pass_freezes_its_survivors():
    import gc

    from console import memory

    memory.release()  # conftest gives the collector's settings back after the test
    assert gc.get_threshold() == memory.THRESHOLDS
    frozen = gc.get_freeze_count()
    kept = [[] for _ in range(100)]  # alive through the passes below
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect(0) >= 1  # a young pass still reclaims a cycle that died young
    assert gc.get_freeze_count() == frozen  # and freezes nothing
    gc.collect(1)
    assert gc.get_freeze_count() >= frozen + len(kept)  # the middle pass's survivors: out of later passes
    memory.release()  # a reload registers the freezing once, not twice
    assert gc.callbacks.count(memory._freeze_survivors) == 1


def test_a_column_shown_again_catches_up_with_the_changes_made_meanwhile():
    rng = random.Random(5)
    registry = Registry()
    registry.load({"aors": [{"aor": f"u{i}@x", "contacts": [contact(f"u{i}@x", f"r{i}", i, 1000 + i)]}
                            for i in range(300)]}, POLICY)
    live = {f"r{i}": f"u{i}@x" for i in range(300)}
    for step in range(400):
        registry.set_sort(rng.choice(sorted(SORTS)), reverse=rng.random() < 0.5)
        if step % 50 == 0:
            registry.set_filter(rng.choice(["", "1", "u2"]))
        for _ in range(rng.randrange(1, 8)):
            ruid = rng.choice(sorted(live))
            if rng.random() < 0.2:
                registry.apply([event("contact.removed", contact(live.pop(ruid), ruid, 0, 0), reason="x")])
            else:
                aor = live.setdefault(f"n{step}", f"u{rng.randrange(400)}@x") if rng.random() < 0.1 else live[ruid]
                ruid = next(r for r, a in live.items() if a == aor)
                registry.apply([event("contact.refreshed",
                                      contact(aor, ruid, 1000 + step, 2000 + rng.randrange(500), rng.choice("aBc")))])
        assert view(registry) == expected(registry)
    assert len(registry._kept) > 1  # the test went through kept orders, not only rebuilds


def test_compact_records_as_they_come_give_the_table_their_expanded_form_gives():
    """The console reads a compact subscription's arrays without expanding them (feed.Record):
    the same frames, taken apart by the buffer and the registry, give the same rows as the dicts
    events.expanded makes of them."""
    import orjson

    from registrar_core.events import CONTACT_REMOVED, EventBus, expanded
    from registrar_core.location import Contact

    bus = EventBus()
    sub = bus.subscribe_compact()
    as_records, as_dicts = Registry(), Registry()
    for registry in (as_records, as_dicts):
        registry.load({"aors": [{"aor": "a@x", "contacts": [contact("a@x", "ra", 1, 100, "old")]}]}, POLICY)
    raw, rich = EventBuffer(traffic_limit=10), EventBuffer(traffic_limit=10)

    def bound(aor: str, ruid: str, n: int, agent: str) -> Contact:
        return Contact(ruid, aor, f"sip:{ruid}@192.0.2.1", 100.0 + n, "call", n, user_agent=agent, modified=float(n))

    for n in range(1, 30):
        bus.changed("location", bound(f"u{n % 7}@x", f"r{n % 7}", n, f"ua{n % 3}"), n < 7)
        bus.changed("location", bound("a@x", "ra", n, "new"), False)
        if n % 10 == 0:
            gone = bound(f"u{n % 7}@x", f"r{n % 7}", n, "x")
            bus.publish(CONTACT_REMOVED, table="location", aor=gone.aor, ruid=gone.ruid, contact=gone, reason="expired")
        if n % 4 == 0:  # a frame
            records = orjson.loads(orjson.dumps(sub.records(), default=str))
            assert any(isinstance(r, list) for r in records)
            raw.add(records)
            rich.add([expanded(r) for r in records])
            as_records.apply(raw.take()[0])
            as_dicts.apply(rich.take()[0])
    summary = {aor: (row.count, row.soonest, row.newest, row.agent) for aor, row in as_dicts.rows.items()}
    assert {aor: (row.count, row.soonest, row.newest, row.agent) for aor, row in as_records.rows.items()} == summary
    assert summary["a@x"] == (1, 128.0, 28.0, "new") and view(as_records) == view(as_dicts) == expected(as_dicts)


def test_a_row_summarises_the_soonest_expiry_and_the_newest_binding():
    rng = random.Random(3)
    registry = Registry()
    registry.load({"aors": []}, POLICY)
    for step in range(300):
        n = rng.randrange(1, 5)
        registry.apply([event("contact.refreshed", contact("a@x", f"r{step}-{i}", rng.choice([10, 20, 30]),
                                                          rng.uniform(0, 100), f"ua{step}-{i}")) for i in range(n)])
        bindings = list(registry.rows["a@x"].bindings.values())
        newest = max(b.modified for b in bindings)
        row = registry.rows["a@x"]
        assert row.soonest == min(b.expires_at for b in bindings) and row.newest == newest
        assert row.agent == next(b.user_agent for b in bindings if b.modified == newest)  # the first of equals

"""registrar_core/location/service.py directly: the per-AOR KeyedLock, the merge of a group
commit's changes, and group commit through a real SQLite store."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from registrar_core.events import EventBus
from registrar_core.location import SAVE_MEMORY_ONLY, Batch, Contact, LocationService, SqliteStore, StorageError
from registrar_core.location.service import KeyedLock, _merge, _Pending
from registrar_core.location.store import Written

NOW = time.time()


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def contact(n: int, **changes: object) -> Contact:
    values: dict[str, object] = dict(ruid=f"ruid-{n}", aor=f"u{n}@example.com", addr=f"sip:u{n}@192.0.2.1",
                                     expires=NOW + 3600, callid=f"call-{n}", cseq=1, modified=NOW)
    values.update(changes)
    return Contact(**values)  # type: ignore[arg-type]


def ignore(error: StorageError | None) -> None:
    pass


# -- KeyedLock --------------------------------------------------------------------------


async def test_keyed_lock_runs_a_free_key_at_once_and_hands_a_held_one_on_in_order_from_the_loop():
    lock = KeyedLock()
    ran: list[str] = []
    lock.run("a", lambda: ran.append("a1"))
    lock.run("a", lambda: ran.append("a2"))
    lock.run("a", lambda: ran.append("a3"))
    lock.run("b", lambda: ran.append("b1"))  # another key is not held up by "a"
    assert ran == ["a1", "b1"]
    lock.release("a")
    assert ran == ["a1", "b1"], "the next holder runs from the loop, not inside release()"
    await eventually(lambda: len(ran) == 3, "the second holder of a")
    assert ran == ["a1", "b1", "a2"]
    lock.release("a")
    await eventually(lambda: len(ran) == 4, "the third holder of a")
    lock.release("a")
    lock.release("b")
    lock.run("a", lambda: ran.append("a4"))  # free again: at once
    assert ran == ["a1", "b1", "a2", "a3", "a4"]
    lock.release("a")


async def test_keyed_lock_a_long_chain_of_holders_that_release_at_once_does_not_recurse():
    lock = KeyedLock()
    done: list[int] = []
    count = sys.getrecursionlimit() * 2

    def holder(n: int) -> Callable[[], None]:
        def run() -> None:
            done.append(n)
            lock.release("k")
        return run

    lock.run("k", lambda: None)
    for n in range(count):
        lock.run("k", holder(n))
    lock.release("k")
    await eventually(lambda: len(done) == count, "every holder")
    assert done == list(range(count))


async def test_keyed_lock_acquire_lets_one_coroutine_at_a_time_hold_a_key_in_arrival_order():
    lock = KeyedLock()
    inside = 0
    most = 0
    order: list[int] = []

    async def worker(n: int) -> None:
        nonlocal inside, most
        await lock.acquire("aor")
        try:
            inside += 1
            most = max(most, inside)
            order.append(n)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            inside -= 1
        finally:
            lock.release("aor")

    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(20))), 30)
    assert most == 1 and order == list(range(20))


@pytest.mark.parametrize("when", ["while-waiting", "once-handed-the-key"])
async def test_keyed_lock_a_cancelled_waiter_passes_the_key_on(when):
    lock = KeyedLock()
    await lock.acquire("aor")
    cancelled = asyncio.create_task(lock.acquire("aor"))
    after = asyncio.create_task(lock.acquire("aor"))
    await asyncio.sleep(0)  # both are queued
    if when == "while-waiting":
        cancelled.cancel()
        await asyncio.sleep(0)
        lock.release("aor")
    else:
        lock.release("aor")
        await asyncio.sleep(0)  # `cancelled` is handed the key, and is cancelled before it resumes
        cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.wait_for(after, 10)  # the key was not lost with the cancelled waiter
    lock.release("aor")
    await asyncio.wait_for(lock.acquire("aor"), 10)
    lock.release("aor")


# -- the merge of a group commit ---------------------------------------------------------


def nothing(table: str, aor: str, ruid: str) -> Contact | None:
    """Memory before the batch, as LocationService._binding: empty."""
    return None


def test_the_fields_bindings_share_are_one_interned_copy_whatever_came_between():
    """Contact interns received, socket, user agent, Allow and node (memory: one copy each);
    remembering the last one interned must hand out that copy, never a look-alike."""
    def text(value: str) -> str:
        return "".join(list(value))  # a fresh, not interned, equal string

    fields = ("received", "socket", "user_agent", "methods", "node")
    values = {"received": "udp:192.0.2.7:5060", "socket": "udp:127.0.0.1:5060", "user_agent": "phone/1.0",
              "methods": "INVITE,ACK", "node": "node-a"}
    first = Contact("r1", "a@example.com", "sip:a@192.0.2.7", 0.0, "c1", 1,
                    **{f: text(values[f]) for f in fields})  # type: ignore[arg-type]
    other = Contact("r2", "b@example.com", "sip:b@192.0.2.8", 0.0, "c2", 1,
                    **{f: text(values[f] + "x") for f in fields})  # type: ignore[arg-type]
    again = Contact("r3", "c@example.com", "sip:c@192.0.2.9", 0.0, "c3", 1,
                    **{f: text(values[f]) for f in fields})  # type: ignore[arg-type]
    same = Contact("r4", "d@example.com", "sip:d@192.0.2.9", 0.0, "c4", 1,
                   **{f: text(values[f]) for f in fields})  # type: ignore[arg-type]
    for f in fields:
        assert getattr(first, f) == values[f] and getattr(other, f) == values[f] + "x"
        assert getattr(again, f) is getattr(first, f) is getattr(same, f) is sys.intern(text(values[f])), f


def test_merge_keeps_the_last_change_to_each_binding_in_the_order_first_seen():
    added, refreshed = contact(1), contact(1, cseq=2)
    removed, readded = contact(2), contact(2, cseq=5)
    short_lived = contact(3)
    merged = _merge([
        _Pending("location", [(added, True), (removed, True)], [], None, ignore),
        _Pending("location", [(short_lived, True)], [(removed, "unregistered")], None, ignore),
        _Pending("location", [(refreshed, False)], [(short_lived, "unregistered")], None, ignore),
        _Pending("location", [(readded, True)], [], None, ignore),
    ], nothing, NOW)
    assert merged.puts == [("location", refreshed), ("location", readded)]
    assert merged.deletes == [short_lived.ruid]
    assert merged.policies == [] and merged.subscribers == []
    # Every change is journaled in order (removals before the puts of the same change); the
    # refresh of a binding memory does not hold yet changes nothing worth a row.
    assert [(r[3], r[4]) for r in merged.journal] == [
        ("ruid-1", "registered"), ("ruid-2", "registered"), ("ruid-2", "unregistered"),
        ("ruid-3", "registered"), ("ruid-3", "unregistered"), ("ruid-2", "registered")]
    assert {r[0] for r in merged.journal} == {NOW}


def test_merge_journals_a_refresh_only_when_it_changes_how_the_binding_is_reached():
    old = contact(1, received="udp:192.0.2.1:5060")
    def memory(table: str, aor: str, ruid: str) -> Contact | None:  # what LocationService._binding finds
        return old if (table, aor, ruid) == ("location", old.aor, old.ruid) else None
    renewed = old.updated(cseq=2, expires=NOW + 7200, modified=NOW + 1)
    moved = renewed.updated(cseq=3, received="udp:192.0.2.1:6000", user_agent="Phone/2")
    merged = _merge([_Pending("location", [(renewed, False)], [], None, ignore)], memory, NOW)
    assert merged.journal == [], "a plain refresh: no row"
    merged = _merge([_Pending("location", [(moved, False)], [], None, ignore),
                     _Pending("location", [], [(moved, "admin")], None, ignore, "by ctl uid=0 pid=1")], memory, NOW)
    assert merged.journal == [
        (NOW, "location", old.aor, old.ruid, "refreshed", old.addr, "udp:192.0.2.1:6000", NOW + 1,
         "received udp:192.0.2.1:5060 -> udp:192.0.2.1:6000; user agent - -> Phone/2"),
        (NOW, "location", old.aor, old.ruid, "admin", old.addr, "udp:192.0.2.1:6000", NOW + 1, "by ctl uid=0 pid=1")]


def test_merge_marks_as_renewed_only_refreshes_that_change_expiry_call_id_and_cseq_alone():
    held = contact(1, q=0.5, params=";transport=tcp", received="udp:192.0.2.1:5060", user_agent="Phone/1")
    memory_only = contact(2, flags=SAVE_MEMORY_ONLY)
    def memory(table: str, aor: str, ruid: str) -> Contact | None:
        return {held.ruid: held, memory_only.ruid: memory_only}.get(ruid) if table == "location" else None
    reregister = held.updated(cseq=2, callid="rebooted", expires=NOW + 60, modified=NOW + 1)
    assert _merge([_Pending("location", [(reregister, False)], [], None, ignore)], memory, NOW).renewed == {held.ruid}
    for changed in (reregister.updated(q=1.0), reregister.updated(params=""), reregister.updated(methods="INVITE"),
                    reregister.updated(received="udp:192.0.2.1:6000"), reregister.updated(flags=1),
                    reregister.updated(node="b")):
        assert _merge([_Pending("location", [(changed, False)], [], None, ignore)], memory, NOW).renewed == set()
    # Stored whole: a binding memory does not hold (or not in that table), one held in memory only
    # (its row was never written), one that a later change of the batch removes or changes.
    assert _merge([_Pending("other", [(reregister, False)], [], None, ignore)], memory, NOW).renewed == set()
    saved = memory_only.updated(cseq=2, flags=0)
    assert _merge([_Pending("location", [(saved, False)], [], None, ignore)], memory, NOW).renewed == set()
    merged = _merge([_Pending("location", [(reregister, False)], [], None, ignore),
                     _Pending("location", [], [(reregister, "admin")], None, ignore)], memory, NOW)
    assert merged.renewed == set() and merged.puts == []
    merged = _merge([_Pending("location", [(reregister, False)], [], None, ignore),
                     _Pending("location", [(reregister.updated(cseq=3, q=None), False)], [], None, ignore)], memory, NOW)
    assert merged.renewed == set() and len(merged.puts) == 1


def test_merge_keeps_each_change_with_its_table_and_every_policy_and_subscriber_change_in_order():
    one, two = contact(1), contact(2)
    policy = [("location", "*", "single_contact", "1"), ("location", "*", "single_contact", None)]
    merged = _merge([
        _Pending("location", [(one, True)], [], None, ignore),
        _Pending("", [], [], Batch(policies=policy[:1], subscribers=[("a", "x", ("1", "2", "3"))]), ignore),
        _Pending("other", [(two, True)], [], None, ignore),
        _Pending("", [], [], Batch(policies=policy[1:], subscribers=[("a", "x", None)]), ignore),
    ], nothing, NOW)
    assert merged.puts == [("location", one), ("other", two)] and merged.deletes == []
    assert merged.policies == policy
    assert merged.subscribers == [("a", "x", ("1", "2", "3")), ("a", "x", None)]


# -- group commit through a real store ---------------------------------------------------


class RecordingStore(SqliteStore):
    """The real SQLite store, remembering the batches it was asked to write."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[Batch] = []
        self.from_task: list[bool] = []  # was each write started by a task (or by a callback)?
        self.meanwhile: Callable[[], None] | None = None  # run once, right after the next write starts

    def write_then(self, batch: Batch, done: Written) -> None:
        self.batches.append(batch)
        self.from_task.append(asyncio.current_task() is not None)
        super().write_then(batch, done)
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()


async def test_changes_submitted_together_go_in_one_write_and_reach_memory_only_after_it(tmp_path):
    store = RecordingStore(tmp_path / "location.db")
    service = LocationService(store, EventBus())
    await service.start()
    try:
        outcomes: list[StorageError | None] = []
        doomed = contact(0)
        service.submit("location", [(doomed, True)], [], outcomes.append)
        service.submit("location", [], [(doomed, "unregistered")], outcomes.append)
        for n in range(1, 50):
            service.submit("location", [(contact(n), True)], [], outcomes.append)
        assert not service.contacts("location", contact(1).aor), "in memory before it was durable"
        await eventually(lambda: len(outcomes) == 51, "the group commit")
        assert outcomes == [None] * 51
        assert len(store.batches) == 1
        assert store.batches[0].deletes == [doomed.ruid] and len(store.batches[0].puts) == 49
        assert service.counts() == (49, 49) and not service.contacts("location", doomed.aor)
    finally:
        await service.stop()
    reopened = SqliteStore(tmp_path / "location.db")
    await reopened.open()
    try:
        assert sorted(c.ruid for _, c in await reopened.load(NOW)) == sorted(f"ruid-{n}" for n in range(1, 50))
    finally:
        await reopened.close()


async def test_changes_submitted_while_a_group_is_with_the_store_go_to_it_as_soon_as_that_group_is_back(tmp_path):
    """The group's outcome is acted on where the store hands it back (a callback, not the
    writer task a loop turn later): the changes that came meanwhile are handed to the store
    there, and each group reaches memory only once durable."""
    store = RecordingStore(tmp_path / "location.db")
    service = LocationService(store, EventBus())
    await service.start()
    try:
        outcomes: list[StorageError | None] = []
        store.meanwhile = lambda: [service.submit("location", [(contact(n), True)], [], outcomes.append)
                                   for n in range(1, 11)]
        service.submit("location", [(contact(0), True)], [], outcomes.append)
        await eventually(lambda: len(outcomes) == 11, "both groups")
        assert outcomes == [None] * 11
        assert [len(b.puts) for b in store.batches] == [1, 10]
        assert store.from_task == [True, False], "the second group waited for the writer task"
        assert service.counts() == (11, 11)
    finally:
        await service.stop()


async def test_stop_lets_the_group_with_the_store_finish_and_answers_it(tmp_path):
    """A group already handed to the store at stop() is committed: its changes are answered as
    committed, not failed as "shutting down" while the database makes them durable."""
    store = RecordingStore(tmp_path / "location.db")
    service = LocationService(store, EventBus())
    await service.start()
    outcomes: list[StorageError | None] = []
    service.submit("location", [(contact(1), True)], [], outcomes.append)
    await eventually(lambda: bool(store.batches), "the group handed to the store")
    await service.stop()
    assert outcomes == [None] and service.counts() == (1, 1), "committed, so applied and answered"
    reopened = SqliteStore(tmp_path / "location.db")
    await reopened.open()
    try:
        assert [c.ruid for _, c in await reopened.load(NOW)] == ["ruid-1"]
    finally:
        await reopened.close()

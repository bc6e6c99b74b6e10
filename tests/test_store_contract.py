"""The promises of every location Store (registrar_core/location/store.py), written once.

Each test runs against every implementation in STORES: a factory that, given a fresh
temporary directory, returns a function making new store objects on one new database
(each call a new connection to the same data, as a restart makes): an SQLite file, and a
fresh database of a throwaway PostgreSQL server (tests/postgres.py). Storage faults and their recovery
need a way to break each kind of storage: the SQLite ones are in test_reliability_storage.py.
"""

from __future__ import annotations

import asyncio
import ctypes
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from registrar_core.location import Batch, Contact, SqliteStore, StorageError, Store
from registrar_core.location.postgres_store import PostgresStore


def _sqlite(request: pytest.FixtureRequest, directory: Path) -> Callable[[], Store]:
    return lambda: SqliteStore(directory / "location.db")


def _postgresql(request: pytest.FixtureRequest, directory: Path) -> Callable[[], Store]:
    dsn = request.getfixturevalue("pg_dsn")  # a fresh database of the session's server
    return lambda: PostgresStore(dsn)


STORES: dict[str, Callable[[pytest.FixtureRequest, Path], Callable[[], Store]]] = {
    "sqlite": _sqlite, "postgresql": _postgresql}


@pytest.fixture(params=sorted(STORES))
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    return STORES[request.param](request, tmp_path)


@asynccontextmanager
async def opened(new_store: Callable[[], Store]) -> AsyncIterator[Store]:
    store = new_store()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


NOW = time.time()


def contact(n: int, **changes: object) -> Contact:
    values: dict[str, object] = dict(
        ruid=f"ruid-{n}", aor=f"u{n}@example.com", addr=f"sip:u{n}@192.0.2.1:5060", expires=NOW + 3600,
        callid=f"call-{n}", cseq=n, received="udp:192.0.2.1:5060", socket="udp:127.0.0.1:5060",
        modified=NOW + n / 1000)
    values.update(changes)
    return Contact(**values)  # type: ignore[arg-type]


async def everything(store: Store) -> tuple[list[tuple[str, Contact]], list[tuple[str, str, str, str]],
                                            list[tuple[str, str, tuple[str, str, str]]]]:
    return await store.load(NOW), sorted(await store.load_policies()), await store.load_subscribers()


async def test_a_new_database_is_created_empty_and_says_where_it_is(new_store):
    async with opened(new_store) as store:
        assert await everything(store) == ([], [], [])
        assert store.describe().strip()


async def test_every_field_of_a_binding_survives_a_new_connection_except_its_tcp_connection(new_store):
    full = contact(1, q=0.5, params=";transport=tcp;+sip.instance=\"<urn:uuid:1>\"", user_agent="Téléphone/1 ☎",
                   path=("<sip:edge1.example.com;lr>", "<sip:edge2.example.com;lr>"), methods="INVITE,BYE",
                   flags=3, cflags=4, instance="<urn:uuid:1>", regid=2, conid=17)
    bare = contact(2, received="", socket="")
    async with opened(new_store) as store:
        await store.write(Batch(puts=[("location", full), ("other", bare)]))
    async with opened(new_store) as store:
        assert await store.load(NOW) == [("location", full.updated(conid=None)), ("other", bare)]


async def test_load_deletes_expired_bindings_and_returns_the_rest_oldest_modified_first(new_store):
    newest, oldest = contact(1, modified=NOW + 5), contact(2, modified=NOW - 5)
    gone = contact(3, expires=NOW - 1)
    async with opened(new_store) as store:
        await store.write(Batch(puts=[("location", newest), ("location", gone), ("location", oldest)]))
        assert await store.load(NOW) == [("location", oldest), ("location", newest)]
    async with opened(new_store) as store:  # deleted, not only left out
        assert await store.load(NOW - 3600) == [("location", oldest), ("location", newest)]


async def test_a_put_replaces_the_binding_with_its_ruid_and_deletes_go_first(new_store):
    first, other = contact(1), contact(2)
    refreshed = first.updated(cseq=99, expires=NOW + 60, addr="sip:u1@192.0.2.9:5070")
    async with opened(new_store) as store:
        await store.write(Batch(puts=[("location", first), ("location", other)]))
        await store.write(Batch(puts=[("location", refreshed)]))
        assert await store.load(NOW) == [("location", refreshed), ("location", other)]
        again = refreshed.updated(cseq=100)
        await store.write(Batch(puts=[("location", again)], deletes=[first.ruid, other.ruid, "no-such-ruid"]))
        assert await store.load(NOW) == [("location", again)]


async def test_renewals_write_their_expiry_call_id_and_cseq_alone_or_among_other_changes(new_store):
    """Batch.renewed: refreshes that change only expires, callid, cseq and modified (a store may
    write only those), in a group of their own and in one with other changes."""
    first = contact(1, q=0.5, path=("<sip:edge.example.com;lr>",), user_agent="Phone/1", methods="INVITE")
    second, third = contact(2), contact(3, modified=NOW + 3)
    renewed = first.updated(expires=NOW + 60, callid="rebooted", cseq=7, modified=NOW + 1)
    again = renewed.updated(expires=NOW + 90, cseq=8, modified=NOW + 2)
    async with opened(new_store) as store:
        await store.write(Batch(puts=[("location", first), ("location", second)]))
        await store.write(Batch(puts=[("location", renewed)], refreshes={first.ruid}, renewed={first.ruid}))
        assert await store.load(NOW) == [("location", second), ("location", renewed)]
        await store.write(Batch(puts=[("location", third), ("location", again)], deletes=[second.ruid],
                                refreshes={first.ruid}, renewed={first.ruid}))
    async with opened(new_store) as store:
        assert await store.load(NOW) == [("location", again), ("location", third)]


async def test_policies_are_set_replaced_and_deleted(new_store):
    async with opened(new_store) as store:
        await store.write(Batch(policies=[("location", "a@x", "single_contact", "1"),
                                          ("location", "*", "caller_check", "1"),
                                          ("other", "a@x", "single_contact", "0")]))
        await store.write(Batch(policies=[("location", "a@x", "single_contact", "0"),
                                          ("location", "*", "caller_check", None),
                                          ("location", "never-set@x", "single_contact", None)]))
    async with opened(new_store) as store:
        assert sorted(await store.load_policies()) == [("location", "a@x", "single_contact", "0"),
                                                       ("other", "a@x", "single_contact", "0")]


async def test_subscribers_are_added_replaced_removed_and_listed_by_domain_then_user(new_store):
    async with opened(new_store) as store:
        await store.write(Batch(subscribers=[("zoe", "a.example", ("m1", "s1", "t1")),
                                             ("bob", "b.example", ("m2", "s2", "t2")),
                                             ("amy", "b.example", ("m3", "s3", "t3")),
                                             ("gone", "a.example", ("m4", "s4", "t4"))]))
        await store.write(Batch(subscribers=[("bob", "b.example", ("m5", "s5", "t5")),
                                             ("gone", "a.example", None)]))
    async with opened(new_store) as store:
        assert await store.load_subscribers() == [("zoe", "a.example", ("m1", "s1", "t1")),
                                                  ("amy", "b.example", ("m3", "s3", "t3")),
                                                  ("bob", "b.example", ("m5", "s5", "t5"))]


async def test_a_large_batch_of_every_kind_is_stored_whole(new_store):
    """More rows than any one statement takes (SQLite: 256), in odd numbers."""
    kept = [contact(n) for n in range(777)]
    async with opened(new_store) as store:
        await store.write(Batch(puts=[("location", c) for c in kept]))
        replaced = [c.updated(cseq=c.cseq + 1) for c in kept[300:]]
        await store.write(Batch(
            puts=[("location", c) for c in replaced], deletes=[c.ruid for c in kept[:300]],
            policies=[("location", c.aor, "single_contact", "1") for c in kept[:10]],
            subscribers=[(f"u{n}", "example.com", ("m", "s", "t")) for n in range(300)]))
    async with opened(new_store) as store:
        loaded, policies, subscribers = await everything(store)
        assert loaded == [("location", c) for c in replaced]
        assert len(policies) == 10 and len(subscribers) == 300


@pytest.mark.parametrize("with_others", [False, True], ids=["alone", "with-deletes-and-policies"])
async def test_an_unstorable_value_fails_its_batch_whole_as_bad_data_and_the_store_goes_on(new_store, with_others):
    """An integer no database column holds (CSeq is 32-bit on the wire, not here)."""
    kept, fine = contact(1), contact(2)
    unstorable = contact(3, cseq=2 ** 70)
    async with opened(new_store) as store:
        await store.write(Batch(puts=[("location", kept)]))
        batch = Batch(puts=[("location", fine), ("location", unstorable)])
        if with_others:
            batch.deletes.append(kept.ruid)
            batch.policies.append(("location", kept.aor, "single_contact", "1"))
        with pytest.raises(StorageError) as refused:
            await store.write(batch)
        assert refused.value.bad_data
        assert await everything(store) == ([("location", kept)], [], [])
        await store.probe()
        await store.write(Batch(puts=[("location", fine)]))
        assert await store.load(NOW) == [("location", kept), ("location", fine)]


async def test_a_probe_writes_nothing_visible(new_store):
    async with opened(new_store) as store:
        await store.write(Batch(puts=[("location", contact(1))], policies=[("location", "*", "p", "v")]))
        before = await everything(store)
        await store.probe()
        await store.probe()
        assert await everything(store) == before


async def test_write_then_tells_each_outcome_later_on_the_loop(new_store):
    """The group commit's write: ``done`` is never called from inside write_then (the caller
    may be in the middle of its own bookkeeping), and each batch hears its own outcome."""
    async with opened(new_store) as store:
        told: dict[str, StorageError | None] = {}
        store.write_then(Batch(puts=[("location", contact(1))]), lambda e: told.setdefault("one", e))
        store.write_then(Batch(puts=[("location", contact(2, cseq=2 ** 70))]), lambda e: told.setdefault("bad", e))
        store.write_then(Batch(puts=[("location", contact(3))]), lambda e: told.setdefault("three", e))
        assert told == {}
        deadline = time.monotonic() + 10
        while len(told) < 3:
            assert time.monotonic() < deadline, f"outcomes told: {told}"
            await asyncio.sleep(0.005)
        assert told["one"] is None and told["three"] is None
        assert isinstance(told["bad"], StorageError) and told["bad"].bad_data
        assert sorted(c.ruid for _, c in await store.load(NOW)) == ["ruid-1", "ruid-3"]


async def test_a_closed_store_answers_storage_error(new_store):
    async with opened(new_store) as store:
        await store.write(Batch(puts=[("location", contact(1))]))
    for call in (lambda: store.write(Batch(puts=[("location", contact(2))])), store.probe,
                 lambda: store.load(NOW), store.load_policies, store.load_subscribers):
        with pytest.raises(StorageError):
            await call()
    async with opened(new_store) as store:
        assert await store.load(NOW) == [("location", contact(1))]


def journal_row(n: int, ts: float, event: str = "registered", aor: str = "u1@example.com",
                table: str = "location") -> tuple[float, str, str, str, str, str, str, float, str]:
    return (ts, table, aor, f"ruid-{n}", event, f"sip:u{n}@192.0.2.1:5060", "udp:192.0.2.1:5060", ts - 1, f"row {n}")


async def test_journal_rows_are_written_with_their_batch_and_read_back_per_aor_oldest_first(new_store):
    first, second = contact(1), contact(2, aor="u1@example.com")
    rows = [journal_row(1, NOW), journal_row(2, NOW + 1), journal_row(9, NOW, aor="other@example.com"),
            journal_row(8, NOW, table="other")]
    async with opened(new_store) as store:
        await store.write(Batch(puts=[("location", first), ("location", second)], journal=rows))
        await store.write(Batch(deletes=[first.ruid], journal=[journal_row(1, NOW + 2, "unregistered")]))
        refused = Batch(puts=[("location", contact(3, cseq=2 ** 70))], journal=[journal_row(3, NOW + 3)])
        with pytest.raises(StorageError):
            await store.write(refused)
    async with opened(new_store) as store:  # durable, and only with what committed
        history = await store.history("location", "u1@example.com", 0.0, 100)
        assert history == [rows[0], rows[1], journal_row(1, NOW + 2, "unregistered")]
        assert await store.history("location", "u1@example.com", NOW + 0.5, 100) == history[1:]
        assert await store.history("location", "u1@example.com", 0.0, 2) == history[1:], "the newest, oldest first"
        assert await store.history("other", "u1@example.com", 0.0, 100) == [rows[3]]
        assert await store.history("location", "nobody@example.com", 0.0, 100) == []


async def test_load_journals_the_bindings_that_expired_meanwhile(new_store):
    gone = contact(3, expires=NOW - 1)
    async with opened(new_store) as store:
        await store.write(Batch(puts=[("location", gone), ("location", contact(1))]))
        await store.load(NOW)
        [row] = await store.history("location", gone.aor, 0.0, 10)
        assert row[4:6] == ("expired", gone.addr) and row[7] == gone.modified


async def test_the_journal_is_pruned_by_age_and_row_cap_a_bounded_chunk_at_a_time(new_store):
    async with opened(new_store) as store:
        await store.write(Batch(journal=[journal_row(n, NOW - 100 + n) for n in range(10)]))
        assert await store.prune_journal(NOW - 1000, 8, 100) == 2, "the cap keeps the newest 8"
        assert await store.prune_journal(NOW - 95, 8, 100) == 3, "older than 95 s: n = 2, 3, 4"
        assert await store.prune_journal(NOW, 8, 2) == 2, "a chunk at most"
        assert [r[3] for r in await store.history("location", "u1@example.com", 0.0, 100)] == [
            "ruid-7", "ruid-8", "ruid-9"]
        assert await store.prune_journal(NOW, 8, 100) == 3
        assert await store.prune_journal(NOW, 8, 100) == 0, "an empty journal"


def _rows_in_database_file(path: Path) -> int:
    """Bindings in the SQLite database file itself: ``immutable`` reads it without the WAL."""
    try:
        with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as db:
            return db.execute("SELECT count(*) FROM contacts").fetchone()[0]
    except sqlite3.OperationalError:  # no table yet: the schema is still in the WAL only
        return 0


async def test_sqlite_checkpoints_its_wal_beside_the_commits_and_keeps_it_bounded(tmp_path):
    """SQLite only: committed pages reach the database file through a checkpoint on a connection
    of its own, with no further commit (the automatic one ran inside a COMMIT every 1,000 pages),
    and the WAL stays bounded while commits keep coming, though such a checkpoint seldom ends
    exactly at the WAL's end (SQLite starts the WAL afresh only after one that did)."""
    path = tmp_path / "location.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await store.write(Batch(puts=[("location", contact(n)) for n in range(100)]))
        deadline = time.monotonic() + 5
        while _rows_in_database_file(path) < 100:
            assert time.monotonic() < deadline, "the committed rows never reached the database file"
            await asyncio.sleep(0.02)
        assert store.checkpoints >= 1
        largest = 0
        for start in range(100, 10_100, 25):  # 10,000 new bindings: about 3,000 WAL pages in all
            await store.write(Batch(puts=[("location", contact(n)) for n in range(start, start + 25)]))
            largest = max(largest, Path(f"{path}-wal").stat().st_size)
        assert largest < 6 << 20, f"WAL grew to {largest} bytes (about 4 MiB expected: 1,000 pages)"
        assert len(await store.load(NOW)) == 10_100
    finally:
        await store.close()


async def test_sqlite_writes_a_renewal_as_five_columns_or_whole_when_the_file_does_not_hold_its_binding(tmp_path):
    """SQLite only (a shared store drops a refresh whose binding another registrar deleted): a
    renewal is an UPDATE of five columns, and one that finds no row is written as a whole row,
    in a group of renewals alone and among other changes."""
    store = SqliteStore(tmp_path / "location.db")
    await store.open()
    try:
        held, lost, other = contact(1), contact(2), contact(3)
        await store.write(Batch(puts=[("location", held)]))
        # Only the five columns: what else differs (here, against Batch.renewed's promise) stays as stored.
        wrong = held.updated(cseq=8, callid="rebooted", expires=NOW + 60, modified=NOW + 1, user_agent="other")
        await store.write(Batch(puts=[("location", wrong)], refreshes={held.ruid}, renewed={held.ruid}))
        assert await store.load(NOW) == [("location", wrong.updated(user_agent=held.user_agent))]
        renewals = [("location", held.updated(cseq=9, modified=NOW + 1)), ("location", lost)]
        await store.write(Batch(puts=renewals, refreshes={held.ruid, lost.ruid}, renewed={held.ruid, lost.ruid}))
        assert await store.load(NOW) == renewals[::-1]  # oldest modified first
        again = [("location", lost.updated(cseq=10, modified=NOW + 2)), ("location", other)]
        await store.write(Batch(puts=again, deletes=[lost.ruid], refreshes={lost.ruid}, renewed={lost.ruid}))
        assert await store.load(NOW) == [again[1], renewals[0], again[0]]
    finally:
        await store.close()


async def test_sqlite_writes_a_group_of_any_size_in_one_round_trip_to_its_thread(tmp_path, monkeypatch):
    """A group larger than one statement (MAX_CHUNK rows), with journal rows and deletes, is one
    call into the database thread, not one per statement: each call's result waits for a turn
    of the event loop, and under load a turn is milliseconds (issue 19.3). And the outcome comes
    back from the thread's own hand-off, not through a future whose task steps a turn later."""
    import aiosqlite

    from registrar_core.location import sqlite_store
    from registrar_core.location.sqlite_store import MAX_CHUNK

    store = SqliteStore(tmp_path / "location.db")
    await store.open()
    calls: list[object] = []
    execute = aiosqlite.Connection._execute
    commit = sqlite_store._commit

    async def counted(self: aiosqlite.Connection, fn: object, *args: object, **kwargs: object) -> object:
        if self is store._db:  # the writer's connection (not the background checkpointer's)
            calls.append(fn)
        return await execute(self, fn, *args, **kwargs)

    def counted_commit(*args: object) -> None:
        calls.append(commit)
        commit(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    monkeypatch.setattr(sqlite_store, "_commit", counted_commit)
    try:
        rows = [("location", contact(n)) for n in range(2 * MAX_CHUNK + 3)]
        journal = [(NOW, "location", c.aor, c.ruid, "registered", c.addr, "", NOW, "") for _, c in rows]
        await store.write(Batch(puts=rows, journal=journal))
        renewed = [("location", c.updated(cseq=c.cseq + 1, modified=NOW + 5)) for _, c in rows[1:]]
        ruids = {c.ruid for _, c in renewed}
        outcome: asyncio.Future[tuple[object, object]] = asyncio.get_running_loop().create_future()
        store.write_then(Batch(puts=renewed, deletes=[rows[0][1].ruid], refreshes=ruids, renewed=ruids),
                         lambda error: outcome.set_result((error, asyncio.current_task())))
        assert await outcome == (None, None), "told from a task, not from the thread's hand-off"
        assert calls == [commit, commit]
        assert sorted(await store.load(NOW), key=lambda r: r[1].ruid) == sorted(renewed, key=lambda r: r[1].ruid)
    finally:
        await store.close()


def _sqlite_memory() -> Callable[[], int] | None:
    """SQLite's own count of the memory it holds (the library sqlite3 uses), where ctypes finds it."""
    try:
        lib = ctypes.CDLL("libsqlite3.so.0")
    except OSError:
        return None
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return lib.sqlite3_memory_used


async def test_sqlite_group_commits_of_every_size_write_their_rows_alone_with_few_prepared_statements(tmp_path):
    """SQLite only: a group commit is one statement of a few padded sizes (a prepared statement
    per size 1..256 held 77 MB). The padding writes nothing of its own: an upsert repeats its last
    row, a renewal's padding matches no row (a renewal still writes its five columns alone)."""
    memory = _sqlite_memory()
    store = SqliteStore(tmp_path / "location.db")
    await store.open()
    try:
        before = memory() if memory else 0
        held = [("location", contact(n)) for n in range(1, 257)]
        for size in range(1, 257):
            await store.write(Batch(puts=held[:size]))
        assert await store.load(NOW) == held
        for size in range(1, 257):
            renewed = [(t, c.updated(cseq=1000 + size, user_agent="not written")) for t, c in held[:size]]
            ruids = {c.ruid for _, c in renewed}
            await store.write(Batch(puts=renewed, refreshes=ruids, renewed=ruids))
        assert await store.load(NOW) == [(t, c.updated(cseq=1256)) for t, c in held]
        if memory:
            grown = memory() - before
            assert grown < 8 << 20, f"SQLite holds {grown >> 20} MiB more after group commits of every size"
    finally:
        await store.close()

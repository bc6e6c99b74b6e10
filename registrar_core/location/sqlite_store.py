"""The SQLite Store: the location table in one file (WAL, synchronous=FULL) via aiosqlite.

Writes come in batches (group commit): one transaction makes many REGISTERs durable
with one fsync, and the caller answers 200 only after COMMIT has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import operator
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from sys import intern
from typing import TYPE_CHECKING

import aiosqlite

from ..awaitable import awaited, spawn
from ..journal import JOURNAL_COLUMNS, JournalRow
from .contact import Contact
from .nodes import NodeState
from .store import POLICY_AND_SUBSCRIBER_TABLES, Batch, Feed, StorageError, Written

if TYPE_CHECKING:
    from ..dblock import DatabaseLock

SCHEMA_VERSION = 3  # 1: contacts, policies; 2: subscribers; 3: journal
_SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
    ruid TEXT PRIMARY KEY,
    tbl TEXT NOT NULL,
    aor TEXT NOT NULL,
    addr TEXT NOT NULL,
    params TEXT NOT NULL,
    expires REAL NOT NULL,
    q REAL,
    callid TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    path TEXT NOT NULL,
    received TEXT NOT NULL,
    socket TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    methods TEXT NOT NULL,
    flags INTEGER NOT NULL,
    cflags INTEGER NOT NULL,
    instance TEXT NOT NULL,
    regid INTEGER NOT NULL,
    modified REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS contacts_aor ON contacts (tbl, aor);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    tbl TEXT NOT NULL,
    aor TEXT NOT NULL,
    ruid TEXT NOT NULL,
    event TEXT NOT NULL,
    addr TEXT NOT NULL,
    received TEXT NOT NULL,
    last_register REAL NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_aor ON journal (tbl, aor, ts);
""" + POLICY_AND_SUBSCRIBER_TABLES
# Bindings that expired while no registrar ran: journaled by the load that deletes them.
_JOURNAL_EXPIRED = (f"INSERT INTO journal ({JOURNAL_COLUMNS}) SELECT ?, tbl, aor, ruid, 'expired', addr, received, "
                    "modified, 'found expired at start' FROM contacts WHERE expires <= ?")
# The oldest rows, up to the first one both young enough and within the row cap, at most a
# chunk of them. Rows are found by id (the order they were written in): no index on ts alone
# is needed, and the scan for the age limit stops at the first row young enough.
_JOURNAL_PRUNE = """DELETE FROM journal WHERE id < min(max(
    coalesce((SELECT id FROM journal WHERE ts >= :before ORDER BY id LIMIT 1), (SELECT max(id) + 1 FROM journal)),
    (SELECT max(id) FROM journal) - :max_rows + 1),
    (SELECT min(id) FROM journal) + :chunk)"""
_COLUMNS = (
    "ruid, tbl, aor, addr, params, expires, q, callid, cseq, path, received, socket, "
    "user_agent, methods, flags, cflags, instance, regid, modified"
)
# The columns of an upsert in the order its values are made: a binding's own attributes, read in
# one C call (operator.attrgetter), then its table and its path as JSON. A function building a
# tuple per row took 0.46 us a row, in the database thread holding the GIL; this 0.24.
_ATTRIBUTES = ("ruid", "aor", "addr", "params", "expires", "q", "callid", "cseq", "received", "socket",
               "user_agent", "methods", "flags", "cflags", "instance", "regid", "modified")
_attributes = operator.attrgetter(*_ATTRIBUTES)
_WRITTEN = ", ".join(_ATTRIBUTES) + ", tbl, path"
# An update in place, not INSERT OR REPLACE (a delete and an insert: both indexes touched
# twice). A binding never changes table or AOR, so the (tbl, aor) index is left alone:
# SQLite CPU per refreshed binding 12.5 -> 8.7 us in random order.
_UPSERT_SET = " ON CONFLICT (ruid) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in _WRITTEN.split(", ") if c not in ("ruid", "tbl", "aor"))
_WIDTH = len(_ATTRIBUTES) + 2
_ROW_MARKS = "(" + ",".join("?" * _WIDTH) + ")"
# Rows go in a few multi-row statements, not one statement per row: sqlite3 takes the GIL
# back after every step, and on a busy registrar each time costs a thread switch (and up to
# the 5 ms switch interval of waiting). Chunk sizes are powers of two, so that a handful of
# statements cover every batch size and stay prepared in the statement cache. (SQLite before
# 3.32 takes at most 999 parameters in a statement: 19 columns x 32 rows.)
MAX_CHUNK = 256 if sqlite3.sqlite_version_info >= (3, 32, 0) else 32
# A renewal (Batch.renewed: a re-REGISTER that changes only these) writes 5 values, not 19: SQLite
# CPU per row 1.9 -> 1.2 us (250-row groups of 20,000 bindings in order), and fewer to bind while
# holding the GIL. UPDATE ... FROM needs SQLite 3.33; before, renewals are written as whole rows.
_RENEWED = ("ruid", "expires", "callid", "cseq", "modified")
RENEWS = sqlite3.sqlite_version_info >= (3, 33, 0)


LOAD_PAGE = 4096  # rows per round trip to the database thread while loading
# Checkpoints (committed pages copied from the WAL into the database file, which is then
# fsynced) run on a connection of their own, in its own thread, off the commit path. SQLite's
# automatic checkpoint runs inside the COMMIT that takes the WAL past wal_autocheckpoint (1,000
# pages): that group and every REGISTER queued behind it waited for it (5-15 ms under load, a
# commit otherwise takes 0.3-1 ms). The automatic one stays, as a backstop: a checkpoint beside
# a stream of commits rarely ends exactly at the WAL's end, and SQLite starts the WAL afresh
# only after one that did. The backstop, once per 1,000 pages, copies in its commit only the
# pages written since the last background checkpoint: 0.1 s of writes (a refresh writes a page
# or less), as much as before only at 10,000 pages a second.
CHECKPOINT_INTERVAL = 0.1  # seconds between background checkpoints while commits come
CHECKPOINT_WAIT = 5.0  # seconds a closing store waits for a background checkpoint to finish


def _chunks(count: int, largest: int = MAX_CHUNK) -> list[tuple[int, int]]:
    """(start, size) of the power-of-two chunks, largest first, that make up ``count``."""
    out = []
    start = 0
    size = largest
    while start < count:
        while size > count - start:
            size //= 2
        out.append((start, size))
        start += size
    return out


def _padded(rows: int) -> int:
    """The size of the statement that writes ``rows`` (>= 1) rows: the next of 1, 2, 3, 4, 6, 8,
    12, 16 ... 256 (powers of two and three quarters of them). The group commit writes a batch
    of any size in one statement, and a prepared statement per size held 77 MB of SQLite's
    memory at 1..256 rows (upserts 57, renewals 20); these 16 sizes hold 2.5 MB. Padding costs
    SQLite 0.1-0.15 us a row written (powers of two alone: 0.35 us a renewal, 0.5 an upsert;
    padding an upsert with rows that the WHERE of an INSERT ... SELECT leaves out: 1.7 us)."""
    size = 1 << (rows - 1).bit_length()
    return size * 3 // 4 if size >= 4 and rows <= size * 3 // 4 else size


def _upsert_sql(rows: int) -> str:
    """The upsert of ``rows`` rows, whose parameters :func:`_values` gives."""
    return _upsert_padded(_padded(rows))


@functools.cache  # rows: a size of _padded
def _upsert_padded(rows: int) -> str:
    return f"INSERT INTO contacts ({_WRITTEN}) VALUES " + ",".join([_ROW_MARKS] * rows) + _UPSERT_SET


def _renew_sql(rows: int) -> str:
    """The renewal of ``rows`` rows, whose parameters :func:`_renewals` gives."""
    return _renew_padded(_padded(rows))


@functools.cache  # rows: a size of _padded
def _renew_padded(rows: int) -> str:
    """An UPDATE from a VALUES list (its columns are column1...): a statement that starts with
    UPDATE, so that sqlite3 gives its rowcount (not one that starts WITH)."""
    marks = "(" + ",".join("?" * len(_RENEWED)) + ")"
    return ("UPDATE contacts SET " + ", ".join(f"{c} = v.column{i + 1}" for i, c in enumerate(_RENEWED) if i)
            + " FROM (VALUES " + ",".join([marks] * rows) + ") AS v WHERE contacts.ruid = v.column1")


@functools.cache  # rows <= MAX_CHUNK
def _journal_sql(rows: int) -> str:
    """Journal rows in multi-row statements, as the upserts (executemany steps once per row)."""
    return f"INSERT INTO journal ({JOURNAL_COLUMNS}) VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?)"] * rows)


@functools.cache  # rows <= MAX_CHUNK
def _delete_sql(rows: int) -> str:
    return "DELETE FROM contacts WHERE ruid IN (" + ",".join("?" * rows) + ")"


log = logging.getLogger(__name__)

# SQLite primary result codes after which this connection is closed and opened again
# (on the next write, at most once per REOPEN_INTERVAL): an I/O error or a read-only
# file may be cured by the operator (remount, chattr -i, fsck), which needs our file
# descriptors released and, for a connection SQLite opened read-only, a fresh open.
_RECONNECT_CODES = frozenset((
    sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_PROTOCOL,
))
REOPEN_INTERVAL = 0.5  # seconds between attempts to open the database again after a fault


class _FileMoved(Exception):
    """The database file at our path is gone or is another file than the one we opened."""


def _bad_data(exc: BaseException) -> bool:
    """Did the write fail because of what was written rather than where?"""
    return isinstance(exc, (sqlite3.InterfaceError, OverflowError, UnicodeError, TypeError))


def _needs_reconnect(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and (code & 0xFF) in _RECONNECT_CODES
    # aiosqlite's "no active connection", a dead worker thread...: start afresh.
    return not _bad_data(exc)


def _values(puts: list[tuple[str, Contact]]) -> list[object]:
    """The parameters of an upsert of ``puts`` (_WRITTEN's columns), row after row. Its padding
    repeats the last row (written again, the same values): cheaper for SQLite than rows a WHERE
    leaves out."""
    values: list[object] = []
    extend = values.extend
    append = values.append
    for table, contact in puts:
        extend(_attributes(contact))
        append(table)
        path = contact.path
        append(json.dumps(path) if path else "[]")
    values += values[-_WIDTH:] * (_padded(len(puts)) - len(puts))
    return values


_renewed = operator.attrgetter(*_RENEWED)


def _renewals(puts: list[tuple[str, Contact]]) -> list[object]:
    """The parameters of a renewal of ``puts`` (_RENEWED's columns), row after row. Its padding
    is NULL rows: they match no contact, so the rowcount counts the rows of ``puts``."""
    values: list[object] = []
    for _, contact in puts:
        values += _renewed(contact)
    values += [None] * (len(_RENEWED) * (_padded(len(puts)) - len(puts)))
    return values


def _write(conn: sqlite3.Connection, batch: Batch) -> None:
    """Write ``batch`` in one transaction on ``conn`` (in the database thread): all or nothing."""
    puts = batch.puts
    if 0 < len(puts) <= MAX_CHUNK and not (batch.deletes or batch.policies or batch.subscribers or batch.journal):
        # The usual group commit: one statement, its own transaction (no BEGIN and COMMIT:
        # sqlite3 takes the GIL back after each statement, a thread switch on a busy registrar).
        if RENEWS and len(batch.renewed) == len(puts):
            _renew_rows(conn, puts)
        else:
            conn.execute(_upsert_sql(len(puts)), _values(puts))
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        deletes = batch.deletes
        for start, size in _chunks(len(deletes)):
            conn.execute(_delete_sql(size), deletes[start:start + size])
        renewed: list[tuple[str, Contact]] = []
        if RENEWS and batch.renewed:
            renewed = [p for p in puts if p[1].ruid in batch.renewed]
            puts = [p for p in puts if p[1].ruid not in batch.renewed]
        for start, size in _chunks(len(puts)):
            conn.execute(_upsert_sql(size), _values(puts[start:start + size]))
        for start, size in _chunks(len(renewed)):
            _renew_rows(conn, renewed[start:start + size])
        journal = batch.journal
        for start, size in _chunks(len(journal)):
            conn.execute(_journal_sql(size), [v for row in journal[start:start + size] for v in row])
        for tbl, aor, name, value in batch.policies:
            if value is None:
                conn.execute("DELETE FROM policies WHERE tbl=? AND aor=? AND name=?", (tbl, aor, name))
            else:
                conn.execute("INSERT OR REPLACE INTO policies VALUES (?,?,?,?)", (tbl, aor, name, value))
        for username, domain, ha1s in batch.subscribers:
            if ha1s is None:
                conn.execute("DELETE FROM subscribers WHERE username=? AND domain=?", (username, domain))
            else:
                conn.execute("INSERT OR REPLACE INTO subscribers VALUES (?,?,?,?,?)", (username, domain, *ha1s))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _commit(conn: sqlite3.Connection, batch: Batch, check: Callable[[], None], loop: asyncio.AbstractEventLoop,
            then: Callable[[BaseException | None], None]) -> None:
    """Write ``batch`` and check the file is still ours (database thread), then hand the outcome
    to ``then`` on the loop."""
    try:
        _write(conn, batch)
        check()
    except BaseException as exc:  # handed over whatever it is, as aiosqlite's worker does
        loop.call_soon_threadsafe(then, exc)
    else:
        loop.call_soon_threadsafe(then, None)


def _renew_rows(conn: sqlite3.Connection, puts: list[tuple[str, Contact]]) -> None:
    """Write renewals (at most MAX_CHUNK), in a transaction or in their own (database thread)."""
    if conn.execute(_renew_sql(len(puts)), _renewals(puts)).rowcount != len(puts):
        # A binding the file does not hold (not expected): whole rows.
        conn.execute(_upsert_sql(len(puts)), _values(puts))


class SqliteStore:
    """The location table in one SQLite file (the :class:`~.store.Store` of a single registrar)."""

    def __init__(self, path: str | Path, *, reopen_interval: float = REOPEN_INTERVAL) -> None:
        self.path = str(path)
        self.reopen_interval = reopen_interval
        self.reconnects = 0  # successful re-opens after a fault
        self._db: aiosqlite.Connection | None = None
        self._opened = False  # open() succeeded and close() was not called: keep it open
        self._fault = ""  # why the connection was dropped (while _db is None and _opened)
        self._reopen_error = ""  # why the last attempt to open it again failed
        self._next_reopen = 0.0
        self._inode: int | None = None  # of the file first opened: acknowledged writes are there
        # The owner's lock on the file (dblock.py), let go while a fault keeps the file closed.
        self.lock: DatabaseLock | None = None
        self.checkpoints = 0  # background checkpoints done
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self._next_checkpoint = 0.0
        self._tasks: set[asyncio.Task[None]] = set()  # writes being refused or waiting for a reopen

    def describe(self) -> str:
        return f"SQLite {self.path}"

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        await self._connect(self.path, uri=False)
        self._inode = None if self.path == ":memory:" else Path(self.path).stat().st_ino
        self._opened = True

    def _check_identity(self) -> None:
        """Raise _FileMoved unless our path still names the file we first opened.

        SQLite goes on writing to a database file that was deleted or renamed away (its
        descriptor still works): those writes would be lost at the next start. Checked
        after every COMMIT, before anything is acknowledged. The inode alone is compared:
        the same filesystem mounted again (after an fsck) may come with another st_dev.
        """
        if self._inode is None:
            return
        try:
            inode = Path(self.path).stat().st_ino
        except FileNotFoundError:
            raise _FileMoved(f"database file {self.path} was removed") from None
        if inode != self._inode:
            raise _FileMoved(f"database file {self.path} was replaced by another file "
                             "(restart the registrar to use it)")

    async def _connect(self, target: str, *, uri: bool) -> None:
        try:
            db = await aiosqlite.connect(target, isolation_level=None, uri=uri,
                                         cached_statements=96)  # upserts, renewals (16 sizes each), journal, deletes (9)...
        except Exception as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from exc
        self._db = db
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=2000")
            async with db.execute("PRAGMA quick_check") as cur:
                result = (await cur.fetchone() or ("?",))[0]
            if result != "ok":
                raise StorageError(f"database {self.path} failed its integrity check: {result}")
            await self._migrate()
        except StorageError:
            await self._drop()
            raise
        except Exception as exc:
            await self._drop()
            raise StorageError(f"cannot use database {self.path}: {exc}") from exc

    async def _reopen(self) -> None:
        """After a fault dropped the connection: open the same file again (never create one).

        A file that is gone must not be replaced by an empty one: the bindings in
        memory were acknowledged against the old file, so writes keep failing
        until an operator puts it back (or restarts the registrar).
        """
        now = time.monotonic()
        if now < self._next_reopen or self.path == ":memory:":
            raise StorageError(self._fault_message())
        self._next_reopen = now + self.reopen_interval
        try:
            await self._connect(self._existing(), uri=True)
            try:
                if self.lock is not None:  # after the open: a missing file is not locked in its stead
                    self.lock.acquire()
                # SQLite quietly opens a file it may not write read-only: prove it can.
                await self._touch(self._require())
            except Exception as exc:
                await self._drop()
                if self.lock is not None:
                    self.lock.release()
                raise StorageError(str(exc) or type(exc).__name__) from exc
        except StorageError as exc:
            log.debug("database %s still unusable: %s", self.path, exc)
            self._reopen_error = str(exc)
            raise StorageError(self._fault_message()) from exc
        self.reconnects += 1
        log.info("database %s opened again after: %s", self.path, self._fault)
        self._fault = self._reopen_error = ""

    def _existing(self) -> str:
        """The URI of our database file that opens it only if it exists (never creates one)."""
        return "file:" + urllib.parse.quote(str(Path(self.path).absolute())) + "?mode=rw"

    def _fault_message(self) -> str:
        if self._reopen_error:
            return f"{self._fault} (cannot open it again: {self._reopen_error})"
        return self._fault

    async def _drop(self) -> None:
        """Close the connection without forgetting that it should be open."""
        await self._close_checkpointer()
        if self._db is not None:
            db, self._db = self._db, None
            try:
                await db.close()
            except Exception:
                pass

    async def _migrate(self) -> None:
        db = self._require()
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = row[0] if row else 0
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database {self.path} has schema {version}, newer than this release ({SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            await db.executescript(_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")
        # Earlier databases indexed expires: only the start-up purge used it, while every
        # refresh paid for it (a fifth of SQLite's CPU per row). Expiry runs from memory.
        await db.execute("DROP INDEX IF EXISTS contacts_expires")

    def _require(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError(self._fault_message() or "database is not open")
        return self._db

    async def _writable(self) -> aiosqlite.Connection:
        """The connection for a write, opened again first if a fault had dropped it."""
        if self._db is None and self._opened and self._fault:
            await self._reopen()
        return self._require()

    async def _failed(self, db: aiosqlite.Connection, exc: BaseException) -> StorageError:
        """Turn a failed write into a StorageError; drop the connection if it cannot go on."""
        try:
            stuck = db.in_transaction
        except Exception:
            stuck = True
        message = str(exc) or type(exc).__name__
        if _needs_reconnect(exc) or stuck:
            self._fault, self._reopen_error = message, ""
            self._next_reopen = time.monotonic() + self.reopen_interval
            log.warning("closing database %s after: %s (will open it again)", self.path, message)
            await self._drop()
            if self.lock is not None:  # no descriptor left on the filesystem: it can be unmounted
                self.lock.release()
        return StorageError(message, bad_data=_bad_data(exc))

    async def follow(self, feed: Feed) -> None:
        """One file, one registrar (dblock.py): nothing changes behind its back."""

    async def sweeps(self) -> bool:
        return True  # the file's only registrar

    async def nodes(self) -> list[NodeState]:
        return []  # one file, one registrar: it describes itself

    async def load(self, now: float | None = None) -> list[tuple[str, Contact]]:
        """Drop expired rows, then return every stored binding."""
        db = self._require()
        now = time.time() if now is None else now
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(_JOURNAL_EXPIRED, (now, now))
            await db.execute("DELETE FROM contacts WHERE expires <= ?", (now,))
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
        out: list[tuple[str, Contact]] = []
        async with db.execute(f"SELECT {_COLUMNS} FROM contacts ORDER BY modified") as cur:
            # In pages, not fetchall(): the rows of the whole table at once were the registrar's
            # peak of memory, kept by the allocator after they went (100k: 1,324 -> 1,xxx B/contact).
            while rows := await cur.fetchmany(LOAD_PAGE):
                # Positional, in Contact's order (a third faster than by keyword at 100k rows):
                # ruid, aor, addr, expires, callid, cseq, q, params, path, received, socket,
                # user_agent, methods, flags, cflags, instance, regid, conid, modified. The table
                # name interned: one string, not one per row left among the bindings (-60 B each).
                out += [(intern(r[1]), Contact(r[0], r[2], r[3], r[5], r[7], r[8], r[6], r[4],
                                       tuple(json.loads(r[9])) if r[9] != "[]" else (), r[10], r[11], r[12],
                                       r[13], r[14], r[15], r[16], r[17], None, r[18]))
                        for r in rows]
        return out

    async def load_policies(self) -> list[tuple[str, str, str, str]]:
        db = self._require()
        async with db.execute("SELECT tbl, aor, name, value FROM policies") as cur:
            return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]

    async def load_subscribers(self) -> list[tuple[str, str, tuple[str, str, str]]]:
        db = self._require()
        async with db.execute("SELECT username, domain, ha1_md5, ha1_sha256, ha1_sha512_256 "
                              "FROM subscribers ORDER BY domain, username") as cur:
            return [(r[0], r[1], (r[2], r[3], r[4])) for r in await cur.fetchall()]

    async def write(self, batch: Batch) -> None:
        """Apply one batch in one transaction; all or nothing."""
        error = await awaited(functools.partial(self.write_then, batch))
        if error is not None:
            raise error

    def write_then(self, batch: Batch, done: Written) -> None:
        """Apply one batch in one transaction; ``done`` hears the outcome on the loop."""
        db = self._db
        if db is None:  # closed, or dropped after a fault: opened again first (or refused)
            spawn(self._reopened_write(batch, done), self._tasks)
            return
        try:
            conn = db._conn
        except ValueError as exc:  # aiosqlite's "no active connection"
            spawn(self._refused(db, exc, done), self._tasks)
            return
        # Run whole in the database thread: one hand-off, however large the group (statement
        # by statement, each result taken by a turn of a busy loop, a large group waited six
        # turns or more and an open loop ran away: issue 19.3). The thread hands the outcome
        # back itself, so it is acted on in the loop's next turn, not the turn after (a future's
        # task steps a turn after the future is set). aiosqlite has no public call for either:
        # its worker runs what is on ``_tx`` and resolves the future queued with it, which
        # nobody awaits here (every version's worker needs one: 0.20 and 0.21 call its loop
        # unconditionally, and without one their thread would end).
        loop = asyncio.get_running_loop()
        db._tx.put_nowait((loop.create_future(), functools.partial(
            _commit, conn, batch, self._check_identity, loop, functools.partial(self._written, db, done))))

    def _written(self, db: aiosqlite.Connection, done: Written, exc: BaseException | None) -> None:
        """The database thread's outcome of a write, on the loop."""
        if exc is not None:
            spawn(self._refused(db, exc, done), self._tasks)
            return
        now = time.monotonic()
        if now >= self._next_checkpoint and self._checkpointing is None and self._inode is not None:
            self._next_checkpoint = now + CHECKPOINT_INTERVAL
            self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint())
        done(None)

    async def _reopened_write(self, batch: Batch, done: Written) -> None:
        try:
            await self._writable()
        except StorageError as exc:
            done(exc)
            return
        self.write_then(batch, done)

    async def _refused(self, db: aiosqlite.Connection, exc: BaseException, done: Written) -> None:
        error = await self._failed(db, exc)
        error.__cause__ = exc
        done(error)

    async def _checkpoint(self) -> None:
        """One PASSIVE checkpoint on the checkpointer's connection: it waits for no writer and
        no writer waits for it. A failure only closes that connection (the next one opens it
        again): faults of the file are the writer's to find and report."""
        try:
            if self._checkpointer is None:
                self._checkpointer = await aiosqlite.connect(self._existing(), uri=True, isolation_level=None)
                self._check_identity()  # the file we opened, not one put in its place
            async with self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)") as cursor:
                await cursor.fetchone()
            self.checkpoints += 1
        except Exception as exc:
            log.debug("background checkpoint of %s failed: %s", self.path, exc)
            await self._close_checkpointer()
        finally:
            self._checkpointing = None

    async def _close_checkpointer(self) -> None:
        task, self._checkpointing = self._checkpointing, None
        if task is not None and task is not asyncio.current_task():
            # Waited for, not cancelled at once: a cancelled aiosqlite.connect() leaves its
            # connection's thread behind, unowned and never closed. A PASSIVE checkpoint waits
            # for nobody, so this is short; a stuck file system gets CHECKPOINT_WAIT.
            await asyncio.wait({task}, timeout=CHECKPOINT_WAIT)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        db, self._checkpointer = self._checkpointer, None
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close()

    async def history(self, table: str, aor: str, since: float, limit: int) -> list[JournalRow]:
        db = self._require()
        try:
            async with db.execute(f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE tbl = ? AND aor = ? AND ts >= ? "
                                  "ORDER BY ts DESC, id DESC LIMIT ?", (table, aor, since, limit)) as cur:
                rows = list(await cur.fetchall())
        except Exception as exc:
            raise StorageError(str(exc) or type(exc).__name__) from exc
        return [tuple(r) for r in reversed(rows)]  # type: ignore[misc]

    async def prune_journal(self, before: float, max_rows: int, chunk: int) -> int:
        db = await self._writable()
        try:
            cur = await db.execute(_JOURNAL_PRUNE, {"before": before, "max_rows": max_rows, "chunk": chunk})
            return cur.rowcount
        except Exception as exc:
            raise await self._failed(db, exc) from exc

    async def probe(self) -> None:
        """One real write that changes nothing (a page goes to the WAL): is storage usable?"""
        db = await self._writable()
        try:
            await self._touch(db)
        except Exception as exc:
            raise await self._failed(db, exc) from exc

    async def _touch(self, db: aiosqlite.Connection) -> None:
        try:
            await db.execute("BEGIN IMMEDIATE")
            await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
        self._check_identity()

    async def close(self) -> None:
        if self._tasks:  # a refused write's drop, a reopen: theirs to finish before the close
            await asyncio.wait(set(self._tasks))
        self._opened = False
        self._fault = self._reopen_error = ""
        await self._drop()

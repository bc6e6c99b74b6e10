"""The PostgreSQL Store: the location table in a database several registrars can share (asyncpg).

The promises are the SQLite store's: a group commit is one transaction (the usual one a single
multi-row ``INSERT ... ON CONFLICT DO UPDATE``: measured fastest here, bench/), durable when it
returns (``synchronous_commit`` on), so the caller answers 200 only after COMMIT. A lost
connection or a refusing server is a StorageError; the next write or probe connects again
(at most every ``reconnect_interval``), so the registrar recovers without a restart.

Several registrars may share the database. Each commit also sends a NOTIFY (in the same
transaction: delivered after COMMIT, in commit order) naming the ruids it wrote and deleted;
every registrar LISTENs, fetches the written rows by ruid and tells its location service
(:meth:`PostgresStore.follow`). A lost listening connection means a full reload, never a
silently stale table.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import uuid

import asyncpg

from .contact import Contact
from .store import POLICY_AND_SUBSCRIBER_TABLES, Batch, Feed, StorageError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: contacts.node
# Taken while the schema is created or checked: nodes starting together on an empty database.
_SCHEMA_LOCK = 0x5C0_5C4E
# Held (a session lock) by the one registrar that deletes expired rows for all; released
# by PostgreSQL when its connection ends, so the next one to try takes over.
_SWEEPER_LOCK = 0x5C0_5EE9
_SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
    ruid TEXT PRIMARY KEY,
    tbl TEXT NOT NULL,
    aor TEXT NOT NULL,
    addr TEXT NOT NULL,
    params TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    q DOUBLE PRECISION,
    callid TEXT NOT NULL,
    cseq BIGINT NOT NULL,
    path TEXT NOT NULL,
    received TEXT NOT NULL,
    socket TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    methods TEXT NOT NULL,
    flags BIGINT NOT NULL,
    cflags BIGINT NOT NULL,
    instance TEXT NOT NULL,
    regid BIGINT NOT NULL,
    modified DOUBLE PRECISION NOT NULL,
    node TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS contacts_aor ON contacts (tbl, aor);
""" + POLICY_AND_SUBSCRIBER_TABLES
# Version 1 had no node column (rows made then: node unknown, "").
_MIGRATE_FROM_1 = "ALTER TABLE contacts ADD COLUMN IF NOT EXISTS node TEXT NOT NULL DEFAULT ''"
_COLUMN_NAMES = ("ruid", "tbl", "aor", "addr", "params", "expires", "q", "callid", "cseq", "path", "received",
                 "socket", "user_agent", "methods", "flags", "cflags", "instance", "regid", "modified", "node")
_COLUMNS = ", ".join(_COLUMN_NAMES)
# tbl and aor are left out of the SET (a binding never changes them): a refresh that changes
# no indexed column is a HOT update, no index touched (why there is no index on expires).
# The WHERE is RFC 3261 §10.3's Call-ID/CSeq rule kept by the database: a node whose copy of a
# binding is a few ms stale (the feed not yet heard) cannot overwrite a newer refresh made
# through another node. The ruids written come back, so the writer learns which it lost.
_UPSERT_SET = " ON CONFLICT (ruid) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in _COLUMN_NAMES[3:]) + (
    " WHERE contacts.callid <> excluded.callid OR excluded.cseq > contacts.cseq RETURNING ruid")
# Rows by a list of ruids, as a join: "ruid = ANY($1)" is planned once per connection (a generic
# plan after five runs), and a node that starts on an empty table keeps a sequential scan that
# compares every row with every ruid: with 50,000 rows a feed fetch of 10,000 ruids took 11 s
# (past COMMAND_TIMEOUT: the feed was lost and reloaded), this form 70 ms (bench/bench_postgres.py).
_BY_RUIDS = "ruid IN (SELECT unnest($1::text[]))"
RECONNECT_INTERVAL = 0.5  # seconds between attempts to connect again after a fault
CONNECT_TIMEOUT = 5.0
# A server that stops answering (stopped, a full disk it waits on) fails the write after this:
# the REGISTERs in it get 500, not an answer never.
COMMAND_TIMEOUT = 10.0


CHANNEL = "sipconsole_contacts"
# NOTIFY payloads must stay under 8,000 bytes: a commit's ruids go in as many as needed.
MAX_PAYLOAD = 7_000
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', p) FROM unnest($1::text[]) WITH ORDINALITY AS n(p, i) ORDER BY i"


# The rows go in as one array per column (unnest): one statement text for every batch size,
# which asyncpg prepares once and PostgreSQL plans once. A VALUES list is a statement per row
# count, and beyond ~125 rows longer than asyncpg caches (15 KiB): prepared again at every commit.
_TYPES = ("text", "text", "text", "text", "text", "float8", "float8", "text", "int8", "text", "text", "text",
          "text", "text", "int8", "int8", "text", "int8", "float8", "text")


def _upsert_sql(notify: bool) -> str:
    """The upsert of a batch; with ``notify`` its NOTIFYs ride in the same statement (one round
    trip): a data-modifying WITH runs whether or not the SELECT reads it."""
    first = 2 if notify else 1
    arrays = ", ".join(f"${first + i}::{kind}[]" for i, kind in enumerate(_TYPES))
    upsert = f"INSERT INTO contacts ({_COLUMNS}) SELECT * FROM unnest({arrays}){_UPSERT_SET}"
    if not notify:
        return upsert
    return (f"WITH up AS ({upsert}) SELECT pg_notify('{CHANNEL}', p), (SELECT array_agg(ruid) FROM up) "
            "FROM unnest($1::text[]) WITH ORDINALITY AS n(p, i) ORDER BY i")


_UPSERT = _upsert_sql(False)
_UPSERT_NOTIFY = _upsert_sql(True)


def _payloads(node: str, puts: list[str], deletes: list[tuple[str, str, str]],
              policies: list[tuple[str, str, str, str | None]],
              subscribers: list[tuple[str, str]] = []) -> list[str]:  # noqa: B006 (never mutated)
    """The NOTIFY payloads telling the other registrars about one commit: written ruids ("p"),
    deleted (table, aor, ruid) ("d"), policy values ("o"), (username, domain) of subscribers
    added, changed or removed ("s": the HA1s stay in the table, not in every listener's feed)."""
    out = []
    kinds: tuple[tuple[str, list], ...] = (("p", puts), ("d", deletes), ("o", policies), ("s", subscribers))
    for kind, items in kinds:
        chunk: list[object] = []
        size = 0
        for item in items:
            text = json.dumps(item)
            if chunk and size + len(text) > MAX_PAYLOAD:
                out.append(json.dumps({"n": node, kind: chunk}))
                chunk, size = [], 0
            chunk.append(item)
            size += len(text) + 1
        if chunk:
            out.append(json.dumps({"n": node, kind: chunk}))
    return out


def _contacts(rows: list[asyncpg.Record]) -> list[tuple[str, Contact]]:
    return [(r[1], Contact(
        ruid=r[0], aor=r[2], addr=r[3], params=r[4], expires=r[5], q=r[6], callid=r[7], cseq=r[8],
        path=tuple(json.loads(r[9])) if r[9] != "[]" else (), received=r[10], socket=r[11],
        user_agent=r[12], methods=r[13], flags=r[14], cflags=r[15], instance=r[16], regid=r[17],
        modified=r[18], node=r[19])) for r in rows]


_SUBSCRIBERS_FROM = "SELECT username, domain, ha1_md5, ha1_sha256, ha1_sha512_256 FROM subscribers"
_SUBSCRIBERS = f'{_SUBSCRIBERS_FROM} ORDER BY domain COLLATE "C", username COLLATE "C"'


def _subscribers(rows: list[asyncpg.Record]) -> list[tuple[str, str, tuple[str, str, str]]]:
    return [(r[0], r[1], (r[2], r[3], r[4])) for r in rows]


def _values(puts: list[tuple[str, Contact]]) -> list[list[object]]:
    """The batch as one list per column, in _COLUMN_NAMES order (the upsert's arrays)."""
    return [list(column) for column in zip(*((
        c.ruid, table, c.aor, c.addr, c.params, c.expires, c.q, c.callid, c.cseq,
        json.dumps(c.path) if c.path else "[]", c.received, c.socket, c.user_agent, c.methods, c.flags,
        c.cflags, c.instance, c.regid, c.modified, c.node) for table, c in puts))]


def _bad_data(exc: BaseException) -> bool:
    """Did the write fail because of what was written (a value out of range, a NUL in text)?"""
    return isinstance(exc, (asyncpg.DataError, asyncpg.exceptions._base.DataError,  # server / client side
                            OverflowError, UnicodeError, TypeError))


def without_password(dsn: str) -> str:
    """The DSN for a log line: the password (in the address or as a parameter) left out."""
    parts = urllib.parse.urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = userinfo.split(":", 1)[0] + "@" + host
    query = urllib.parse.urlencode([(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
                                    if k != "password"], safe="/")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class PostgresStore:
    """The location table in PostgreSQL (the :class:`~.store.Store` of one or more registrars)."""

    def __init__(self, dsn: str, *, reconnect_interval: float = RECONNECT_INTERVAL) -> None:
        self.dsn = dsn
        self.reconnect_interval = reconnect_interval
        self.reconnects = 0  # successful connections again after a fault
        self._conn: asyncpg.Connection | None = None
        self._opened = False
        self._fault = ""  # why the connection was dropped
        self._reconnect_error = ""
        self._next_reconnect = 0.0
        self._busy = asyncio.Lock()  # one connection: one operation at a time
        # Who we are in NOTIFY payloads: our own commits are in memory already.
        self.node = uuid.uuid4().hex[:12]
        self._feed: Feed | None = None
        self._listener: asyncpg.Connection | None = None
        self._heard: asyncio.Queue[str | None] = asyncio.Queue()  # payloads; None: the listener died
        self._loaded = asyncio.Event()  # what is heard is told only once load() has returned
        self._follower: asyncio.Task[None] | None = None
        self.reloads = 0  # full reloads after the listener was lost
        self._feed_down = False  # the listener is lost and not yet back (logged once)
        self._sweeping: asyncpg.Connection | None = None  # the connection holding the sweeper lock

    def describe(self) -> str:
        return f"PostgreSQL {without_password(self.dsn)}"

    async def _connect(self, role: str = "sipconsole") -> asyncpg.Connection:
        """A connection; ``role`` names it in pg_stat_activity (the feed's is "sipconsole-feed")."""
        try:
            return await asyncpg.connect(
                self.dsn, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT,
                server_settings={"synchronous_commit": "on", "application_name": role})
        except Exception as exc:
            raise StorageError(f"cannot connect to {self.describe()}: {exc or type(exc).__name__}") from exc

    async def open(self) -> None:
        conn = await self._connect()
        try:
            await self._migrate(conn)
        except BaseException:
            await _close(conn)
            raise
        self._conn = conn
        self._opened = True

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await conn.execute("CREATE TABLE IF NOT EXISTS sipconsole_schema (version INTEGER NOT NULL)")
                version = await conn.fetchval("SELECT version FROM sipconsole_schema")
                if version is not None and version > SCHEMA_VERSION:
                    raise StorageError(f"{self.describe()} has schema {version}, newer than this release "
                                       f"({SCHEMA_VERSION})")
                if version is None or version < SCHEMA_VERSION:
                    await conn.execute(_SCHEMA)
                    await conn.execute(_MIGRATE_FROM_1)
                    await conn.execute("DELETE FROM sipconsole_schema")
                    await conn.execute("INSERT INTO sipconsole_schema VALUES ($1)", SCHEMA_VERSION)
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"cannot use {self.describe()}: {exc or type(exc).__name__}") from exc

    def _fault_message(self) -> str:
        if self._reconnect_error:
            return f"{self._fault} (cannot connect again: {self._reconnect_error})"
        return self._fault

    def _require(self) -> asyncpg.Connection:
        if self._conn is None:
            raise StorageError(self._fault_message() or "database is not open")
        return self._conn

    async def _writable(self) -> asyncpg.Connection:
        """The connection for a write, made again first (rate-limited) if a fault had dropped it.

        The schema is not created again: tables that vanished must fail writes, not be
        replaced by empty ones under bindings that memory says are stored.
        """
        if self._conn is None and self._opened and self._fault:
            now = time.monotonic()
            if now < self._next_reconnect:
                raise StorageError(self._fault_message())
            self._next_reconnect = now + self.reconnect_interval
            try:
                conn = await self._connect()
                try:
                    await self._touch(conn)
                except Exception as exc:
                    await _close(conn)
                    raise StorageError(str(exc) or type(exc).__name__) from exc
            except StorageError as exc:
                log.debug("%s still unusable: %s", self.describe(), exc)
                self._reconnect_error = str(exc)
                raise StorageError(self._fault_message()) from exc
            self._conn = conn
            self.reconnects += 1
            log.info("%s connected again after: %s", self.describe(), self._fault)
            self._fault = self._reconnect_error = ""
        return self._require()

    async def _failed(self, exc: BaseException) -> StorageError:
        """Turn a failed operation into a StorageError; anything but bad data drops the connection
        (it may be dead, or inside a transaction it cannot finish): the next write connects anew."""
        message = str(exc) or type(exc).__name__
        if not _bad_data(exc):
            self._fault, self._reconnect_error = message, ""
            self._next_reconnect = time.monotonic() + self.reconnect_interval
            log.warning("dropping the connection to %s after: %s (will connect again)", self.describe(), message)
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await _close(conn)
        return StorageError(message, bad_data=_bad_data(exc))

    async def load(self, now: float | None = None) -> list[tuple[str, Contact]]:
        """Drop expired rows, then return every stored binding."""
        now = time.time() if now is None else now
        async with self._busy:
            conn = self._require()
            try:
                async with conn.transaction():
                    await conn.execute("DELETE FROM contacts WHERE expires <= $1", now)
                    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM contacts ORDER BY modified")
            except Exception as exc:
                raise await self._failed(exc) from exc
        # The caller puts the rows in memory before its next await: then the feed may speak.
        self._loaded.set()
        return _contacts(rows)

    async def load_policies(self) -> list[tuple[str, str, str, str]]:
        return [(r[0], r[1], r[2], r[3]) for r in await self._fetch("SELECT tbl, aor, name, value FROM policies")]

    async def load_subscribers(self) -> list[tuple[str, str, tuple[str, str, str]]]:
        return _subscribers(await self._fetch(_SUBSCRIBERS))

    async def _fetch(self, sql: str) -> list[asyncpg.Record]:
        async with self._busy:
            conn = self._require()
            try:
                return await conn.fetch(sql)
            except Exception as exc:
                raise await self._failed(exc) from exc

    async def write(self, batch: Batch) -> None:
        """Apply one batch in one transaction; all or nothing."""
        async with self._busy:
            conn = await self._writable()
            try:
                puts = batch.puts
                if puts and not (batch.deletes or batch.policies or batch.subscribers):
                    # The usual group commit: one statement, its own transaction, one round trip.
                    notify = _payloads(self.node, [c.ruid for _, c in puts], [], [])
                    rows = await conn.fetch(_UPSERT_NOTIFY, notify, *_values(puts))
                    written = set(rows[0][1] or ())
                else:
                    written = await self._write_transaction(conn, batch)
                lost = [c.ruid for _, c in puts if c.ruid not in written]
                if lost:
                    await self._tell_lost(conn, lost)
            except Exception as exc:
                raise await self._failed(exc) from exc

    async def _tell_lost(self, conn: asyncpg.Connection, ruids: list[str]) -> None:
        """Bindings this write left alone (another node stored a newer CSeq of them first): the
        stored rows go to the feed right after the caller has applied its own copy, which they
        replace in memory."""
        log.info("%d binding(s) not written: another registrar stored a newer CSeq first", len(ruids))
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM contacts WHERE {_BY_RUIDS}", ruids)
        if self._feed is not None:
            asyncio.get_running_loop().call_soon(self._feed.changed, _contacts(rows), [], [])

    async def _write_transaction(self, conn: asyncpg.Connection, batch: Batch) -> set[str]:
        """The batch in one transaction; the ruids written."""
        written: set[str] = set()
        async with conn.transaction():
            deleted: list[tuple[str, str, str]] = []
            if batch.deletes:
                rows = await conn.fetch(f"DELETE FROM contacts WHERE {_BY_RUIDS} RETURNING tbl, aor, ruid",
                                        batch.deletes)
                deleted = [(r[0], r[1], r[2]) for r in rows]
            puts = batch.puts
            notify = _payloads(self.node, [c.ruid for _, c in puts], deleted, batch.policies,
                               [(username, domain) for username, domain, _ in batch.subscribers])
            if notify:
                await conn.execute(_NOTIFY, notify)
            if puts:
                written.update(r[0] for r in await conn.fetch(_UPSERT, *_values(puts)))
            for tbl, aor, name, value in batch.policies:
                if value is None:
                    await conn.execute("DELETE FROM policies WHERE tbl=$1 AND aor=$2 AND name=$3", tbl, aor, name)
                else:
                    await conn.execute("INSERT INTO policies VALUES ($1,$2,$3,$4) ON CONFLICT (tbl, aor, name) "
                                       "DO UPDATE SET value = excluded.value", tbl, aor, name, value)
            for username, domain, ha1s in batch.subscribers:
                if ha1s is None:
                    await conn.execute("DELETE FROM subscribers WHERE username=$1 AND domain=$2", username, domain)
                else:
                    await conn.execute(
                        "INSERT INTO subscribers VALUES ($1,$2,$3,$4,$5) ON CONFLICT (username, domain) DO UPDATE "
                        "SET ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256, "
                        "ha1_sha512_256 = excluded.ha1_sha512_256", username, domain, *ha1s)
        return written

    async def sweeps(self) -> bool:
        async with self._busy:
            conn = self._conn
            if conn is None:
                return False
            if self._sweeping is conn:
                return True
            try:
                taken = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _SWEEPER_LOCK))
            except Exception as exc:
                raise await self._failed(exc) from exc
        if taken:
            self._sweeping = conn
            log.info("this registrar now deletes expired bindings from %s for every registrar on it",
                     self.describe())
        return taken

    # -- the change feed ------------------------------------------------------------
    async def follow(self, feed: Feed) -> None:
        """LISTEN now (before the load), tell ``feed`` from when the load has returned."""
        self._feed = feed
        await self._listen()
        self._follower = asyncio.create_task(self._follow(), name="postgres-feed")

    async def _listen(self) -> None:
        conn = await self._connect("sipconsole-feed")
        try:
            await conn.add_listener(CHANNEL, self._heard_payload)
        except Exception as exc:
            await _close(conn)
            raise StorageError(f"cannot LISTEN on {self.describe()}: {exc or type(exc).__name__}") from exc
        conn.add_termination_listener(lambda _conn: self._heard.put_nowait(None))
        self._listener = conn

    def _heard_payload(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._heard.put_nowait(payload)

    async def _drop_listener(self) -> None:
        """Close the listening connection and forget what it heard: a reload follows."""
        if self._listener is not None:
            conn, self._listener = self._listener, None
            await _close(conn)
        while not self._heard.empty():
            self._heard.get_nowait()

    async def _follow(self) -> None:
        """Tell the feed what others commit; after a lost listener, listen again and reload."""
        await self._loaded.wait()
        assert self._feed is not None
        while True:
            try:
                if self._listener is None or self._listener.is_closed():
                    await self._drop_listener()
                    await self._listen()
                    rows = await self._listener.fetch(f"SELECT {_COLUMNS} FROM contacts")  # type: ignore[union-attr]
                    self.reloads += 1
                    log.warning("change feed from %s was lost: table reloaded (%d bindings)",
                                self.describe(), len(rows))
                    subscribers = await self._listener.fetch(_SUBSCRIBERS)  # type: ignore[union-attr]
                    self._feed_down = False
                    self._feed.reloaded(_contacts(rows))
                    self._feed.subscribers_changed(_subscribers(subscribers), complete=True)
                await self._tell(await self._next_payloads())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Once per outage in the log (retries go on every reconnect_interval).
                (log.debug if self._feed_down else log.warning)(
                    "change feed from %s lost: %s (listening again)", self.describe(), str(exc) or type(exc).__name__)
                self._feed_down = True
                await self._drop_listener()
                await asyncio.sleep(self.reconnect_interval)

    async def _next_payloads(self) -> list[str]:
        """Every payload heard so far (waiting for one); raises when the listener died."""
        payloads = [await self._heard.get()]
        while not self._heard.empty():
            payloads.append(self._heard.get_nowait())
        if None in payloads:
            raise StorageError("the listening connection was closed")
        return payloads  # type: ignore[return-value]

    async def _tell(self, payloads: list[str]) -> None:
        """Others' commits in order: the last word on each ruid wins; written rows fetched by ruid."""
        last: dict[str, tuple[str, str] | None] = {}  # ruid -> (table, aor) deleted, or None: written
        policies: list[tuple[str, str, str, str | None]] = []
        subscribers: dict[tuple[str, str], None] = {}
        for payload in payloads:
            change = json.loads(payload)
            if change.get("n") == self.node:
                continue
            for ruid in change.get("p", ()):
                last[ruid] = None
            for table, aor, ruid in change.get("d", ()):
                last[ruid] = (table, aor)
            policies += [(table, aor, name, value) for table, aor, name, value in change.get("o", ())]
            subscribers.update(((username, domain), None) for username, domain in change.get("s", ()))
        if subscribers:
            await self._tell_subscribers(list(subscribers))
        if not (last or policies):
            return
        written = [ruid for ruid, where in last.items() if where is None]
        rows = await self._listener.fetch(  # type: ignore[union-attr]
            f"SELECT {_COLUMNS} FROM contacts WHERE {_BY_RUIDS} ORDER BY modified", written) if written else []
        deletes = [(where[0], where[1], ruid) for ruid, where in last.items() if where is not None]
        assert self._feed is not None
        self._feed.changed(_contacts(rows), deletes, policies)

    async def _tell_subscribers(self, keys: list[tuple[str, str]]) -> None:
        """Subscribers others changed, as they are now: a key with no row was removed."""
        rows = await self._listener.fetch(  # type: ignore[union-attr]
            f"{_SUBSCRIBERS_FROM} WHERE (username, domain) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [k[0] for k in keys], [k[1] for k in keys])
        now = {(username, domain): ha1s for username, domain, ha1s in _subscribers(rows)}
        assert self._feed is not None
        self._feed.subscribers_changed([(username, domain, now.get((username, domain))) for username, domain in keys])

    async def probe(self) -> None:
        """One real write that changes nothing (a row version, a synchronous commit): usable?"""
        async with self._busy:
            conn = await self._writable()
            try:
                await self._touch(conn)
            except Exception as exc:
                raise await self._failed(exc) from exc

    @staticmethod
    async def _touch(conn: asyncpg.Connection) -> None:
        await conn.execute("UPDATE sipconsole_schema SET version = version")

    async def close(self) -> None:
        self._opened = False
        self._fault = self._reconnect_error = ""
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            self._follower = None
        await self._drop_listener()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await _close(conn)


async def _close(conn: asyncpg.Connection) -> None:
    """Close gracefully if the server answers, else just drop the socket."""
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except Exception:
        conn.terminate()

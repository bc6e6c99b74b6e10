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
import collections
import json
import logging
import time
import urllib.parse
import uuid

import asyncpg

from ..journal import JOURNAL_COLUMNS, JournalRow
from .contact import Contact
from .nodes import CONNECTION_TRANSPORTS, NodeIdentity, NodeState
from .service import REMOVED_NODE_GONE
from .store import POLICY_AND_SUBSCRIBER_TABLES, Batch, Feed, StorageError, Written

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: contacts.node; 3: journal, nodes
# Taken while the schema is created or checked: nodes starting together on an empty database.
_SCHEMA_LOCK = 0x5C0_5C4E
# Held (a session lock) by the one registrar that deletes expired rows for all; released
# by PostgreSQL when its connection ends, so the next one to try takes over.
_SWEEPER_LOCK = 0x5C0_5EE9
# Each running node holds the session lock (_NODE_LOCKS, hashtext(its name)) on its liveness
# connection: PostgreSQL lets go of it when that connection ends (the process died), which
# no heartbeat can tell from a node merely slow. Two-key locks never meet the one-key ones above.
_NODE_LOCKS = 0x5C0
# Held (per transaction) on (_AOR_LOCKS, hashtext(table aor)) by a write that adds a binding
# to an AOR under a limit: two nodes adding to one AOR at once take turns, and the second
# sees the first's row when it counts.
_AOR_LOCKS = 0x5C1
HEARTBEAT_INTERVAL = 1.0  # seconds between a node's heartbeats (its row in nodes)
# A node whose heartbeat is this old and whose lock the sweeper can take is gone: its
# connection-bound contacts are removed (README "Scaling out": within 10 s of its death).
GONE_AFTER = 3.0
# A restarted node waits this long for its predecessor's session (and lock) to end.
NODE_LOCK_WAIT = 10.0
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
# Version 3: the registrars sharing the database (node liveness, the console's header).
_NODES_TABLE = """
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    addresses TEXT NOT NULL,
    started TIMESTAMPTZ NOT NULL,
    heartbeat TIMESTAMPTZ NOT NULL,
    registers BIGINT NOT NULL DEFAULT 0,
    rate DOUBLE PRECISION NOT NULL DEFAULT 0,
    gone BOOLEAN NOT NULL DEFAULT false
)"""
_NODE_JOIN = ("INSERT INTO nodes VALUES ($1, $2, to_timestamp($3), now(), $4, 0, false) ON CONFLICT (node) DO UPDATE "
              "SET addresses = excluded.addresses, started = excluded.started, heartbeat = now(), gone = false")
_NODE_BEAT = "UPDATE nodes SET heartbeat = now(), registers = $2, rate = $3, gone = false WHERE node = $1"
_NODES_STALE = ("SELECT node FROM nodes WHERE NOT gone AND node <> $1 "
                "AND heartbeat < now() - make_interval(secs => $2) ORDER BY node")
_NODES = ("SELECT node, addresses, extract(epoch FROM started), extract(epoch FROM now() - heartbeat), registers, "
          "rate, gone FROM nodes ORDER BY node")
# The AOR's bindings beyond the limit, oldest expiry first, but never one this batch wrote.
# Journaled in the same statement ($5: the reason), as every removal is (journal.py).
_EVICT = ("WITH d AS (DELETE FROM contacts WHERE ruid IN (SELECT ruid FROM contacts WHERE tbl = $1 AND aor = $2 "
          "AND ruid <> ALL($3::text[]) ORDER BY expires "
          "LIMIT greatest(0, (SELECT count(*) FROM contacts WHERE tbl = $1 AND aor = $2) - $4)) "
          "RETURNING tbl, aor, ruid, addr, received, modified), "
          f"j AS (INSERT INTO journal ({JOURNAL_COLUMNS}) SELECT extract(epoch FROM now()), tbl, aor, ruid, $5, "
          "addr, received, modified, 'in the database: another registrar had added to the AOR' FROM d) "
          "SELECT tbl, aor, ruid FROM d")
# A node's contacts reachable only through its connections (the transport is the socket's prefix).
# Journaled in the same statement ($3: the journal's detail).
_DELETE_FLOWS = ("WITH d AS (DELETE FROM contacts WHERE node = $1 AND split_part(socket, ':', 1) = ANY($2::text[]) "
                 "RETURNING tbl, aor, ruid, addr, received, modified), "
                 f"j AS (INSERT INTO journal ({JOURNAL_COLUMNS}) SELECT extract(epoch FROM now()), tbl, aor, ruid, "
                 f"'{REMOVED_NODE_GONE}', addr, received, modified, $3 FROM d) SELECT tbl, aor, ruid FROM d")
# Version 1 had no node column (rows made then: node unknown, "").
_MIGRATE_FROM_1 = "ALTER TABLE contacts ADD COLUMN IF NOT EXISTS node TEXT NOT NULL DEFAULT ''"
# Version 3: the contact journal (registrar_core/journal.py); from 2 (or 1) it is just created.
_JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id BIGSERIAL PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    tbl TEXT NOT NULL,
    aor TEXT NOT NULL,
    ruid TEXT NOT NULL,
    event TEXT NOT NULL,
    addr TEXT NOT NULL,
    received TEXT NOT NULL,
    last_register DOUBLE PRECISION NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_aor ON journal (tbl, aor, ts);
"""
_JOURNAL_TYPES = ("float8", "text", "text", "text", "text", "text", "text", "float8", "text")


def _journal_insert(first: int) -> str:
    """A commit's journal rows in one statement, whatever their number: one array per column,
    the parameters from ``$first`` on."""
    arrays = ", ".join(f"${first + i}::{kind}[]" for i, kind in enumerate(_JOURNAL_TYPES))
    return f"INSERT INTO journal ({JOURNAL_COLUMNS}) SELECT * FROM unnest({arrays})"


_JOURNAL_EXPIRED = (f"INSERT INTO journal ({JOURNAL_COLUMNS}) SELECT $1, tbl, aor, ruid, 'expired', addr, received, "
                    "modified, 'found expired at start' FROM contacts WHERE expires <= $1")
# As the SQLite store's: the oldest rows up to the first to keep, by age, row cap and chunk.
_JOURNAL_PRUNE = """DELETE FROM journal WHERE id < LEAST(GREATEST(
    coalesce((SELECT id FROM journal WHERE ts >= $1 ORDER BY id LIMIT 1), (SELECT max(id) + 1 FROM journal)),
    (SELECT max(id) FROM journal) - $2 + 1),
    (SELECT min(id) FROM journal) + $3)"""


def _journal_columns(rows: list[JournalRow]) -> list[list[object]]:
    """The journal rows as one list per column (the parameters of _JOURNAL_INSERT)."""
    return [list(column) for column in zip(*rows)]
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
# A refresh is an UPDATE, never an insert: a binding another node deleted (unregistered,
# replaced, evicted) is not brought back by a node that has not heard of the delete yet. An
# UPDATE that meets a row being deleted waits for that commit, then skips it: the delete wins.
_REFRESH = ("UPDATE contacts SET " + ", ".join(f"{c} = v.{c}" for c in _COLUMN_NAMES[3:]) +
            " FROM v WHERE v.refresh AND contacts.ruid = v.ruid"
            " AND (contacts.callid <> v.callid OR v.cseq > contacts.cseq) RETURNING contacts.ruid")
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
# The last column says whether the row refreshes a binding (an UPDATE, see _REFRESH) or is new.
_TYPES = ("text", "text", "text", "text", "text", "float8", "float8", "text", "int8", "text", "text", "text",
          "text", "text", "int8", "int8", "text", "int8", "float8", "text", "bool")


def _upsert_sql(notify: bool, journal: bool = False) -> str:
    """The write of a batch, one statement: new bindings upserted, refreshes updated only where
    their row still is (_REFRESH); the ruids written come back (a refresh of a deleted binding
    among those not written, see write()). With ``notify`` its NOTIFYs, and with ``journal``
    the commit's journal rows (after the contacts' arrays), ride in the same statement (one
    round trip): a data-modifying WITH runs whether or not the SELECT reads it."""
    first = 2 if notify else 1
    arrays = ", ".join(f"${first + i}::{kind}[]" for i, kind in enumerate(_TYPES))
    written = (f"WITH v ({_COLUMNS}, refresh) AS (SELECT * FROM unnest({arrays})), "
               f"ins AS (INSERT INTO contacts ({_COLUMNS}) SELECT {_COLUMNS} FROM v WHERE NOT v.refresh{_UPSERT_SET}), "
               f"upd AS ({_REFRESH}), up AS (SELECT ruid FROM ins UNION ALL SELECT ruid FROM upd)")
    if not notify:
        return written + " SELECT ruid FROM up"
    journaled = f", j AS ({_journal_insert(first + len(_TYPES))})" if journal else ""
    return (written + journaled + f" SELECT pg_notify('{CHANNEL}', p), (SELECT array_agg(ruid) FROM up) "
            "FROM unnest($1::text[]) WITH ORDINALITY AS n(p, i) ORDER BY i")


_WRITE = _upsert_sql(False)
_WRITE_NOTIFY = _upsert_sql(True)
_WRITE_NOTIFY_JOURNAL = _upsert_sql(True, True)


def _payloads(node: str, puts: list[str], deletes: list[tuple[str, str, str]],
              policies: list[tuple[str, str, str, str | None]],
              subscribers: list[tuple[str, str]] = [],  # noqa: B006 (never mutated)
              reason: str | None = None) -> list[str]:
    """The NOTIFY payloads telling the other registrars about one commit: written ruids ("p"),
    deleted (table, aor, ruid) ("d"), policy values ("o"), (username, domain) of subscribers
    added, changed or removed ("s": the HA1s stay in the table, not in every listener's feed);
    "r": why the deletes were made, when not on a registrar's request (node-gone)."""
    out = []
    kinds: tuple[tuple[str, list], ...] = (("p", puts), ("d", deletes), ("o", policies), ("s", subscribers))
    for kind, items in kinds:
        chunk: list[object] = []
        size = 0
        for item in items:
            text = json.dumps(item)
            if chunk and size + len(text) > MAX_PAYLOAD:
                out.append(_payload(node, kind, chunk, reason))
                chunk, size = [], 0
            chunk.append(item)
            size += len(text) + 1
        if chunk:
            out.append(_payload(node, kind, chunk, reason))
    return out


def _payload(node: str, kind: str, chunk: list[object], reason: str | None) -> str:
    return json.dumps({"n": node, kind: chunk, "r": reason} if reason else {"n": node, kind: chunk})


def _contacts(rows: list[asyncpg.Record]) -> list[tuple[str, Contact]]:
    return [(r[1], Contact(
        ruid=r[0], aor=r[2], addr=r[3], params=r[4], expires=r[5], q=r[6], callid=r[7], cseq=r[8],
        path=tuple(json.loads(r[9])) if r[9] != "[]" else (), received=r[10], socket=r[11],
        user_agent=r[12], methods=r[13], flags=r[14], cflags=r[15], instance=r[16], regid=r[17],
        modified=r[18], node=r[19])) for r in rows]


_SUBSCRIBERS_FROM = "SELECT username, domain, ha1_md5, ha1_sha256, ha1_sha512_256 FROM subscribers"
_SUBSCRIBERS = f'{_SUBSCRIBERS_FROM} ORDER BY domain COLLATE "C", username COLLATE "C"'


def _nodes(rows: list[asyncpg.Record]) -> list[NodeState]:
    return [NodeState(name=r[0], addresses=tuple(json.loads(r[1])), started=float(r[2]),
                      heartbeat_age=max(0.0, float(r[3])), registers=r[4], rate=r[5],
                      up=not r[6] and float(r[3]) < GONE_AFTER) for r in rows]


def _subscribers(rows: list[asyncpg.Record]) -> list[tuple[str, str, tuple[str, str, str]]]:
    return [(r[0], r[1], (r[2], r[3], r[4])) for r in rows]


def _values(puts: list[tuple[str, Contact]], refreshes: set[str]) -> list[list[object]]:
    """The batch as one list per column, in _TYPES order (the write's arrays)."""
    return [list(column) for column in zip(*((
        c.ruid, table, c.aor, c.addr, c.params, c.expires, c.q, c.callid, c.cseq,
        json.dumps(c.path) if c.path else "[]", c.received, c.socket, c.user_agent, c.methods, c.flags,
        c.cflags, c.instance, c.regid, c.modified, c.node, c.ruid in refreshes) for table, c in puts))]


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

    def __init__(self, dsn: str, *, reconnect_interval: float = RECONNECT_INTERVAL,
                 identity: NodeIdentity | None = None) -> None:
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
        # A registrar (not `sipconsole user`) is a node: its liveness connection holds its lock
        # and beats its heartbeat; the sweeper's also finds the nodes that are gone.
        self.identity = identity
        self._live: asyncpg.Connection | None = None
        self._live_since = 0.0  # monotonic time the liveness connection (re)took the node's lock
        self._beating: asyncio.Task[None] | None = None
        self._started = time.time()
        self._nodes: list[NodeState] = []  # as the last heartbeat read them (consoles ask every second)
        # write_then()'s batches, written in order by one task while there are any (_write_queued).
        self._queued: collections.deque[tuple[Batch, Written]] = collections.deque()
        self._writing: asyncio.Task[None] | None = None

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
        if self.identity is not None:
            try:
                await self._join(self.identity)
            except BaseException:
                await self.close()
                raise

    # -- node liveness ------------------------------------------------------------------
    async def _join(self, identity: NodeIdentity) -> None:
        """Take this node's lock, and (a node that had died) remove the contacts of the
        connections it held before: none of them is open in this new process."""
        self._live = await self._live_connection(identity)
        if identity.prune_flows:
            try:
                pruned = await self._remove_flows(self._live, identity.name, f"node {identity.name} restarted")
            except Exception as exc:
                raise StorageError(f"cannot prune the dead flows of node {identity.name!r} in {self.describe()}: "
                                   f"{exc or type(exc).__name__}") from exc
            if pruned:
                log.info("removed %d contact(s) of connections this node (%s) held before it restarted",
                         len(pruned), identity.name)
        self._beating = asyncio.create_task(self._beat(identity), name="postgres-heartbeat")

    async def _live_connection(self, identity: NodeIdentity) -> asyncpg.Connection:
        """A connection holding this node's lock (a predecessor's session may take a moment
        to end), its row in nodes written."""
        conn = await self._connect("sipconsole-node")
        try:
            deadline = time.monotonic() + NODE_LOCK_WAIT
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", _NODE_LOCKS, identity.name):
                if time.monotonic() > deadline:
                    raise StorageError(f"node name {identity.name!r} is held by another running registrar on "
                                       f"{self.describe()}: give each node its own --node-name")
                await asyncio.sleep(0.2)
            await conn.execute(_NODE_JOIN, identity.name, json.dumps(identity.addresses), self._started,
                               identity.registers())
        except StorageError:
            await _close(conn)
            raise
        except Exception as exc:
            await _close(conn)
            raise StorageError(f"cannot join {self.describe()}: {exc or type(exc).__name__}") from exc
        self._live_since = time.monotonic()
        return conn

    async def _remove_flows(self, conn: asyncpg.Connection, node: str, why: str) -> list[tuple[str, str, str]]:
        """Delete the connection-bound contacts of ``node`` (told to every node: node-gone)
        in one transaction; the (table, aor, ruid) deleted."""
        async with conn.transaction():
            rows = await conn.fetch(_DELETE_FLOWS, node, list(CONNECTION_TRANSPORTS), why)
            deleted = [(r[0], r[1], r[2]) for r in rows]
            notify = _payloads(self.node, [], deleted, [], reason=REMOVED_NODE_GONE)
            if notify:
                await conn.execute(_NOTIFY, notify)
        return deleted

    async def _beat(self, identity: NodeIdentity) -> None:
        """Every HEARTBEAT_INTERVAL: this node's heartbeat and REGISTER rate; on the sweeper,
        the nodes gone since. A lost liveness connection is made again (the lock retaken)."""
        last_count, last_time = identity.registers(), time.monotonic()
        down = False
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                if self._live is None or self._live.is_closed():
                    await self._drop_live()
                    self._live = await self._live_connection(identity)
                    log.info("node %s is in %s again", identity.name, self.describe())
                count, now = identity.registers(), time.monotonic()
                await self._live.execute(_NODE_BEAT, identity.name, count, (count - last_count) / (now - last_time))
                last_count, last_time, down = count, now, False
                self._nodes = _nodes(await self._live.fetch(_NODES))
                # Only after GONE_AFTER on a live connection: when the database itself was
                # down, the other nodes need as long as we did to beat again.
                if time.monotonic() - self._live_since >= GONE_AFTER and await self._sweeper():
                    await self._remove_gone(self._live, identity)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                (log.debug if down else log.warning)("heartbeat of node %s in %s failed: %s (trying again)",
                                                     identity.name, self.describe(), str(exc) or type(exc).__name__)
                down = True
                await self._drop_live()

    async def _sweeper(self) -> bool:
        """:meth:`sweeps`, with a fault of the main connection (dropped: the next write
        connects again) no reason to drop the liveness one."""
        try:
            return await self.sweeps()
        except StorageError:
            return False

    async def _remove_gone(self, conn: asyncpg.Connection, identity: NodeIdentity) -> None:
        """Nodes whose heartbeat stopped and whose lock is free (their session ended: the
        process died) lose their connection-bound contacts, on every node; a node that is
        only slow still holds its lock and keeps them."""
        for (node,) in await conn.fetch(_NODES_STALE, identity.name, GONE_AFTER):
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", _NODE_LOCKS, node):
                continue
            try:
                deleted = await self._remove_flows(conn, node, f"node {node} stopped beating") if identity.prune_flows else []
                await conn.execute("UPDATE nodes SET gone = true WHERE node = $1", node)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", _NODE_LOCKS, node)
            log.warning("node %s is gone (no heartbeat for %.0f s, its session ended): removed its %d "
                        "connection-bound contact(s)", node, GONE_AFTER, len(deleted))
            if deleted and self._feed is not None:
                self._feed.changed([], deleted, [], REMOVED_NODE_GONE)

    async def _drop_live(self) -> None:
        if self._live is not None:
            conn, self._live = self._live, None
            await _close(conn)

    async def nodes(self) -> list[NodeState]:
        """As the last heartbeat read them (at most HEARTBEAT_INTERVAL old), without a query
        each time a console asks; read now before the first heartbeat or without one."""
        return self._nodes if self._beating is not None and self._nodes else _nodes(await self._fetch(_NODES))

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
                    await conn.execute(_JOURNAL_SCHEMA)
                    await conn.execute(_NODES_TABLE)
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
                    await conn.execute(_JOURNAL_EXPIRED, now)
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
                if puts and not (batch.deletes or batch.policies or batch.subscribers or batch.limits):
                    # The usual group commit: one statement, its own transaction, one round trip
                    # (new bindings' journal rows included).
                    notify = _payloads(self.node, [c.ruid for _, c in puts], [], [])
                    if batch.journal:
                        rows = await conn.fetch(_WRITE_NOTIFY_JOURNAL, notify, *_values(puts, batch.refreshes),
                                                *_journal_columns(batch.journal))
                    else:
                        rows = await conn.fetch(_WRITE_NOTIFY, notify, *_values(puts, batch.refreshes))
                    written = set(rows[0][1] or ())
                else:
                    written = await self._write_transaction(conn, batch)
                lost = [(table, c) for table, c in puts if c.ruid not in written]
                if lost:
                    await self._tell_lost(conn, lost)
            except Exception as exc:
                raise await self._failed(exc) from exc

    def write_then(self, batch: Batch, done: Written) -> None:
        """asyncpg is loop-native: the outcome is told right after the awaited write."""
        self._queued.append((batch, done))
        if self._writing is None:
            self._writing = asyncio.get_running_loop().create_task(self._write_queued())

    async def _write_queued(self) -> None:
        """Write the queued batches in order. One task for a run of them, not one each: a batch
        queued by a ``done`` (the next group commit, handed over as the last one comes back) is
        sent in the same step, where a new task would start only a loop turn later."""
        try:
            while self._queued:
                batch, done = self._queued.popleft()
                try:
                    await self.write(batch)
                except StorageError as exc:
                    outcome: StorageError | None = exc
                else:
                    outcome = None
                try:
                    done(outcome)
                except Exception:
                    log.exception("error handling the outcome of a write")
        finally:
            self._writing = None

    async def _tell_lost(self, conn: asyncpg.Connection, puts: list[tuple[str, Contact]]) -> None:
        """Bindings this write left alone (another node stored a newer CSeq of them first, or
        deleted a refreshed one first): the stored rows go to the feed right after the caller
        has applied its own copy, which they replace in memory, or remove it (gone)."""
        ruids = [c.ruid for _, c in puts]
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM contacts WHERE {_BY_RUIDS}", ruids)
        stored = _contacts(rows)
        found = {c.ruid for _, c in stored}
        gone = [(table, c.aor, c.ruid) for table, c in puts if c.ruid not in found]
        log.info("%d binding(s) not written: another registrar stored a newer CSeq first (%d) or deleted "
                 "them first (%d)", len(ruids), len(found), len(gone))
        if self._feed is not None:
            asyncio.get_running_loop().call_soon(self._feed.changed, stored, gone, [])

    async def _write_transaction(self, conn: asyncpg.Connection, batch: Batch) -> set[str]:
        """The batch in one transaction; the ruids written."""
        written: set[str] = set()
        evicted: dict[str, list[tuple[str, str, str]]] = {}
        async with conn.transaction():
            for tbl, aor in sorted(batch.limits):  # in one order on every node: no deadlock
                await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2 || ' ' || $3))", _AOR_LOCKS, tbl, aor)
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
                written.update(r[0] for r in await conn.fetch(_WRITE, *_values(puts, batch.refreshes)))
            if batch.journal:
                await conn.execute(_journal_insert(1), *_journal_columns(batch.journal))
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
            if batch.limits:
                evicted = await self._keep_limits(conn, batch)
        if self._feed is not None:  # before the caller applies the batch: its 200 lists what is left
            for reason, gone in evicted.items():
                self._feed.changed([], gone, [], reason)
        return written

    async def history(self, table: str, aor: str, since: float, limit: int) -> list[JournalRow]:
        async with self._busy:
            conn = self._require()
            try:
                rows = await conn.fetch(f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE tbl = $1 AND aor = $2 "
                                        "AND ts >= $3 ORDER BY ts DESC, id DESC LIMIT $4", table, aor, since, limit)
            except Exception as exc:
                raise await self._failed(exc) from exc
        return [tuple(r) for r in reversed(rows)]  # type: ignore[misc]

    async def prune_journal(self, before: float, max_rows: int, chunk: int) -> int:
        async with self._busy:
            conn = await self._writable()
            try:
                status = await conn.execute(_JOURNAL_PRUNE, before, max_rows, chunk)
            except Exception as exc:
                raise await self._failed(exc) from exc
        return int(status.rpartition(" ")[2] or 0)

    async def _keep_limits(self, conn: asyncpg.Connection,
                           batch: Batch) -> dict[str, list[tuple[str, str, str]]]:
        """With the AORs' locks held: remove each limited AOR's bindings beyond its limit
        (another node may have added some this node has not heard of yet), told to all."""
        ours: dict[tuple[str, str], list[str]] = {}
        for table, contact in batch.puts:
            ours.setdefault((table, contact.aor), []).append(contact.ruid)
        evicted: dict[str, list[tuple[str, str, str]]] = {}
        for (tbl, aor), (limit, reason) in sorted(batch.limits.items()):
            rows = await conn.fetch(_EVICT, tbl, aor, ours.get((tbl, aor), []), limit, reason)
            evicted.setdefault(reason, []).extend((r[0], r[1], r[2]) for r in rows)
        for reason, gone in evicted.items():
            if gone:
                log.info("%d binding(s) %s in the database: another registrar had added to the AOR meanwhile",
                         len(gone), reason)
                await conn.execute(_NOTIFY, _payloads(self.node, [], gone, [], reason=reason))
        return {reason: gone for reason, gone in evicted.items() if gone}

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
        last: dict[str, tuple[str, str, str | None] | None] = {}  # ruid -> (table, aor, reason) deleted, or None
        policies: list[tuple[str, str, str, str | None]] = []
        subscribers: dict[tuple[str, str], None] = {}
        for payload in payloads:
            change = json.loads(payload)
            if change.get("n") == self.node:
                continue
            for ruid in change.get("p", ()):
                last[ruid] = None
            for table, aor, ruid in change.get("d", ()):
                last[ruid] = (table, aor, change.get("r"))
            policies += [(table, aor, name, value) for table, aor, name, value in change.get("o", ())]
            subscribers.update(((username, domain), None) for username, domain in change.get("s", ()))
        if subscribers:
            await self._tell_subscribers(list(subscribers))
        if not (last or policies):
            return
        written = [ruid for ruid, where in last.items() if where is None]
        rows = await self._listener.fetch(  # type: ignore[union-attr]
            f"SELECT {_COLUMNS} FROM contacts WHERE {_BY_RUIDS} ORDER BY modified", written) if written else []
        by_reason: dict[str | None, list[tuple[str, str, str]]] = {}
        for ruid, where in last.items():
            if where is not None:
                by_reason.setdefault(where[2], []).append((where[0], where[1], ruid))
        assert self._feed is not None
        self._feed.changed(_contacts(rows), by_reason.pop(None, []), policies)
        for reason, deletes in by_reason.items():
            self._feed.changed([], deletes, [], reason)

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
        if self._writing is not None:  # write_then()'s: told their outcome before the connection goes
            await asyncio.wait({self._writing})
        self._opened = False
        self._fault = self._reconnect_error = ""
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
            self._beating = None
        await self._drop_live()
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

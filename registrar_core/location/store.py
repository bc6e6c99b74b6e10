"""What the location service needs of durable storage: the :class:`Store` protocol.

The service keeps the whole table in memory and asks a store only to make changes
durable (one :class:`Batch` per group commit) and to give everything back at start. So
a store is small: open, load, write a batch, probe, close. The SQLite file
(:mod:`.sqlite_store`) is one; a database shared by several registrars is another
implementation of the same promises, which ``tests/test_store_contract.py`` states once
for every store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
from typing import Protocol

from ..journal import JournalRow
from .contact import Contact
from .nodes import NodeState


# The policy and subscriber tables, the same SQL in every store (contacts differ by column types).
POLICY_AND_SUBSCRIBER_TABLES = """
CREATE TABLE IF NOT EXISTS policies (
    tbl TEXT NOT NULL,
    aor TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tbl, aor, name)
);
CREATE TABLE IF NOT EXISTS subscribers (
    username TEXT NOT NULL,
    domain TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    ha1_sha512_256 TEXT NOT NULL,
    PRIMARY KEY (username, domain)
);
"""


class StorageError(Exception):
    """The database refused a write (read-only, full, locked, corrupt...).

    ``bad_data`` is True when the storage is fine but this batch cannot be stored
    (an integer SQLite cannot hold, text that is not UTF-8...): only the request
    that brought it should fail, not the others committed with it.
    """

    def __init__(self, message: str, *, bad_data: bool = False) -> None:
        super().__init__(message)
        self.bad_data = bad_data


# Told the outcome of a write_then(): None once the batch is durable, or why it failed.
Written = Callable[[StorageError | None], None]

# (username, domain, (ha1_md5, ha1_sha256, ha1_sha512_256) or None: deleted)
SubscriberChange = tuple[str, str, tuple[str, str, str] | None]


@dataclass
class Batch:
    """Changes committed together: contacts to write, contacts to delete, policy values, and
    the journal rows saying why (written in the same transaction: no round trip of their own).
    ``limits``: (table, aor) -> (most bindings, reason): a store several registrars write
    removes the AOR's oldest bindings beyond that (others' too), with that reason.
    ``refreshes``: ruids of puts that refresh a binding: such a store writes them only if the
    binding is still stored (another registrar's delete committed first wins). ``renewed``: those
    of them that change only expires, callid, cseq and modified (a phone's re-REGISTER): a store
    may write just those columns (SQLite: 5 values a row instead of 19)."""

    puts: list[tuple[str, Contact]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    policies: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    subscribers: list[SubscriberChange] = field(default_factory=list)
    journal: list[JournalRow] = field(default_factory=list)
    limits: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    refreshes: set[str] = field(default_factory=set)
    renewed: set[str] = field(default_factory=set)


class Feed(Protocol):
    """Who is told what other registrars changed in a shared store: the location service."""

    def changed(self, puts: list[tuple[str, Contact]], deletes: list[tuple[str, str, str]],
                policies: list[tuple[str, str, str, str | None]], reason: str | None = None) -> None:
        """Bindings another registrar wrote (table, contact) or deleted (table, aor, ruid), and
        policy values it set (None: deleted). ``reason``: why the deletes were made when no
        registrar asked for them (a dead node's flows: node-gone)."""

    def reloaded(self, rows: list[tuple[str, Contact]]) -> None:
        """The whole table again, after the feed was lost: what memory holds may be stale."""

    def subscribers_changed(self, changes: Sequence[SubscriberChange], *, complete: bool = False) -> None:
        """Subscribers another registrar added or changed (username, domain, HA1s) or removed
        (None). ``complete``: every subscriber, after the feed was lost (any other is gone)."""


class Store(Protocol):
    """Durable storage of the location table, its policies and the subscribers.

    Every method that fails raises :class:`StorageError`, nothing else. A store recovers
    from a storage fault by itself: after one, :meth:`write` and :meth:`probe` try to open
    the database again (rate-limited), so that the registrar never needs a restart.
    """

    async def open(self) -> None:
        """Connect, and create or migrate the schema (versioned) on first use."""

    async def follow(self, feed: Feed) -> None:
        """Tell ``feed`` from now on what other registrars commit (a store several share).

        Called before :meth:`load`: what is committed meanwhile is told after the load.
        """

    async def sweeps(self) -> bool:
        """Should this registrar delete expired bindings from the store? Of registrars that
        share one, a single one at a time (taken over when it dies); the others drop them
        from memory only."""

    async def nodes(self) -> list[NodeState]:
        """The registrars sharing this store, alive or gone (``ctl nodes``); [] for a store
        only one registrar uses."""

    async def load(self, now: float) -> list[tuple[str, Contact]]:
        """Every stored (table, binding) not expired at ``now``, oldest ``modified`` first.

        Expired rows are deleted. A binding's ``conid`` (its TCP connection) is not kept.
        """

    async def load_policies(self) -> list[tuple[str, str, str, str]]:
        """Every stored (table, aor, name, value) policy override."""

    async def load_subscribers(self) -> list[tuple[str, str, tuple[str, str, str]]]:
        """Every (username, domain, HA1s), sorted by domain then username.

        Separate from :meth:`load`: ``sipconsole user`` needs the subscribers only.
        """

    async def write(self, batch: Batch) -> None:
        """Apply ``batch`` in one transaction, all or nothing; durable once it returns.

        Deletes come before puts; a put replaces the binding with the same ruid. A value
        the database cannot hold fails with ``bad_data=True`` and leaves the store usable.
        """

    def write_then(self, batch: Batch, done: Written) -> None:
        """:meth:`write` for the group commit: returns at once; ``done`` is called later, on the
        event loop, with None once the batch is durable or with the :class:`StorageError`.

        Why not an awaited write: a future set from the database's thread wakes its task one
        turn of the loop later, and a turn under load reads up to 256 datagrams per socket;
        a store calls ``done`` in the first turn (SQLite: from its thread's own hand-off), so
        the committed group is answered, and the next one handed over, a turn sooner.
        """

    async def history(self, table: str, aor: str, since: float, limit: int) -> list[JournalRow]:
        """The journal rows of ``aor`` from ``since`` on, oldest first (at most the newest
        ``limit``). Off the request path: the control socket and the console ask."""

    async def prune_journal(self, before: float, max_rows: int, chunk: int) -> int:
        """Delete journal rows older than ``before`` or beyond the newest ``max_rows``, at
        most ``chunk`` in one statement (the oldest first); how many went."""

    async def probe(self) -> None:
        """One real write that changes nothing: raises while storage is unusable.

        The service calls it about once a second while storage is failing, so that
        recovery is seen even when no REGISTER comes to try.
        """

    async def close(self) -> None:
        """Let go of the database; a later call other than :meth:`open` raises."""

    def describe(self) -> str:
        """Where the table is kept, for the log (a path, a DSN without password)."""

"""The location service: named tables of bindings in memory, made durable by group commit.

Every change goes through :meth:`LocationService.submit` (or its awaitable twin
:meth:`~LocationService.apply`): it is committed to the store first (unless memory-only),
then applied in memory and published as events, so a binding visible to anyone has
been made durable. The hot path is callbacks, not a task per request: the writer
commits a group, then applies each change and calls its ``done``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from .. import events as ev
from .. import journal
from ..awaitable import awaited
from ..events import EventBus
from ..metrics import COMMIT_SECONDS_BUCKETS, COMMIT_SIZE_BUCKETS, Histogram
from .contact import SAVE_MEMORY_ONLY, Contact
from .store import Batch, StorageError, Store, SubscriberChange

log = logging.getLogger(__name__)

# Final: folded into the compiled code that reads them (see contact.py, SAVE_MEMORY_ONLY).
DEFAULT_TABLE: Final = "location"
REMOVED_UNREGISTERED: Final = "unregistered"
REMOVED_REPLACED: Final = "replaced"
REMOVED_ADMIN: Final = "admin"
REMOVED_EXPIRED: Final = "expired"
REMOVED_EVICTED: Final = "evicted"  # max-contacts-mode evict-oldest made room for a new binding
REMOVED_REMOTE: Final = "remote"  # by another registrar sharing the store
REMOVED_NODE_GONE: Final = "node-gone"  # its connection's node died (the sweeper) or restarted (itself)
# An AOR's bindings are a tuple, not a dict by ruid: an AOR has one or a few, and a 1-tuple takes
# 48 bytes where a dict takes 184 (bench_memory: 1,727 -> 1,5xx bytes per contact at 100k). The
# one binding of most AORs is held alone, without its 1-tuple (48 bytes less): a tuple has two or more.
Bindings = Contact | tuple[Contact, ...]
# A read-only stand-in for a table that has nothing: no dict made per lookup.
_NO_AORS: Final[dict[str, Bindings]] = {}

Done = Callable[[StorageError | None], None]  # told the outcome of a change: None, or why it failed


@dataclass(slots=True, init=False, eq=False)
class _Pending:
    """A change waiting for the next group commit. One per request: ``__init__`` written
    out to be compiled (setup.py), the fields declared once, here."""

    table: str
    puts: list[tuple[Contact, bool]]
    removes: list[tuple[Contact, str]]
    batch: Batch | None  # policy and subscriber changes committed with it
    done: Done
    note: str  # the journal's detail of its removals (who: an operator's unregister)
    limit: tuple[int, str] | None  # the AOR's most bindings in a shared store, and why others go

    def __init__(self, table: str, puts: list[tuple[Contact, bool]], removes: list[tuple[Contact, str]],
                 batch: Batch | None, done: Done, note: str = "", limit: tuple[int, str] | None = None) -> None:
        self.table = table
        self.puts = puts
        self.removes = removes
        self.batch = batch
        self.done = done
        self.note = note
        self.limit = limit


class KeyedLock:
    """Serialises work per key (one AOR) without a lock object per key.

    :meth:`run` calls its function at once when the key is free, or when the holders
    before it released the key; whoever holds the key must :meth:`release` it, however
    the work ends. :meth:`acquire` is the same for coroutines.
    """

    def __init__(self) -> None:
        # A held key's waiters; None while there are none: no deque made for a key nobody waits
        # for (an AOR's REGISTERs seldom overlap), one allocation less per REGISTER.
        self._waiters: dict[Hashable, deque[Callable[[], None]] | None] = {}

    def run(self, key: Hashable, holder: Callable[[], None]) -> None:
        # One probe of the dict for a free key (the usual case), the dict's size telling whether
        # it was there: a key is a tuple, whose hash is computed again at every probe.
        waiters = self._waiters
        size = len(waiters)
        queue = waiters.setdefault(key, None)
        if len(waiters) != size:
            holder()
            return
        if queue is None:
            queue = waiters[key] = deque()
        queue.append(holder)

    async def acquire(self, key: Hashable) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def granted() -> None:
            if fut.done():  # the waiter was cancelled meanwhile: pass the key on
                self.release(key)
            else:
                fut.set_result(None)

        self.run(key, granted)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(key)  # we were handed the key while being cancelled
            raise

    def release(self, key: Hashable) -> None:
        waiters = self._waiters
        queue = waiters.pop(key)  # one probe when nobody waits (the usual case)
        if queue:  # neither None nor empty
            waiters[key] = queue  # still held: by the next holder
            # The next holder runs from the loop, not from here: a chain of holders that
            # finish at once must not recurse.
            asyncio.get_running_loop().call_soon(queue.popleft())


class LocationService:
    def __init__(
        self,
        store: Store | None,
        events: EventBus,
        *,
        clock: Callable[[], float] = time.time,
        expiry_interval: float = 1.0,
        probe_interval: float = 1.0,
        journal_retention: float = journal.DEFAULT_RETENTION,
        journal_max_rows: int = journal.DEFAULT_MAX_ROWS,
    ) -> None:
        self.store = store
        self.events = events
        self.clock = clock
        self.locks = KeyedLock()
        self.expired_total = 0
        self.storage_error: str | None = None
        self.storage_errors = 0  # writes the store refused or failed (metrics)
        # Per group commit, not per request: cheap enough to stay on (metrics.py).
        self.commit_size = Histogram(COMMIT_SIZE_BUCKETS)
        self.commit_seconds = Histogram(COMMIT_SECONDS_BUCKETS)
        self._tables: dict[str, dict[str, Bindings]] = {DEFAULT_TABLE: {}}
        self._policies: dict[tuple[str, str, str], str] = {}
        # Expiry: the bindings due in each whole second, per table, as [aor, ruid, aor, ruid, ...]
        # (16 bytes a binding; a heap of (expires, table, aor, ruid) tuples took 104 compiled),
        # and a heap of those seconds (a few thousand at most: expiries are an hour or so ahead).
        self._due: dict[tuple[int, str], list[str]] = {}
        self._seconds: list[tuple[int, str]] = []
        self._pending: list[_Pending] = []
        # A group is with the store (or, refused, being retried): the next starts when it is back.
        self._writing = False
        self._retry: list[_Pending] | None = None  # a group refused for one change's data: one by one
        self._wake = asyncio.Event()
        self._expiry_interval = expiry_interval
        # While storage is failing, a test write this often, so the fault is seen to
        # clear (log, event, console) even when no REGISTER comes to try.
        self.probe_interval = probe_interval
        self._error_logged = 0.0  # monotonic time of the last "still failing" log line
        self._tasks: list[asyncio.Task[None]] = []
        # The contact journal's bounds, kept by the sweeper every prune_interval (journal.py).
        self.journal_retention = journal_retention
        self.journal_max_rows = journal_max_rows
        self.prune_interval = journal.PRUNE_INTERVAL
        self.prune_chunk = journal.PRUNE_CHUNK
        self._next_prune = 0.0
        self._prune_due = False
        # Subscriber changes another registrar committed, handed on (the Registrar API sets it:
        # subscribers are kept by auth.Subscribers, not here).
        self.on_subscribers: Callable[[Sequence[SubscriberChange], bool], None] | None = None
        # Told of each contact change before it is applied, while someone watches an AOR's
        # reg events (reg_notifier.py); None the rest of the time: a REGISTER pays one test.
        self.watch: Callable[[str, list[tuple[Contact, bool]], list[tuple[Contact, str]]], None] | None = None
        # Other registrars write the store too (PostgreSQL): an AOR's limit is kept there as well.
        self.shared = False

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        if self.store is not None:
            await self.store.open()
            await self.store.follow(self)  # before the load: nothing committed meanwhile is missed
            # The collector is off meanwhile: everything made here lives on, so its passes over
            # the young bindings find nothing (restart with 100k: 0.75 -> 0.xx s of CPU).
            collecting = gc.isenabled()
            gc.disable()
            try:
                for table, contact in await self.store.load(self.clock()):
                    aors = self._tables.setdefault(table, {})
                    aors[contact.aor] = _joined(aors.get(contact.aor), contact)
                    self._due_at(table, contact.aor, contact.ruid, contact.expires)
            finally:
                if collecting:
                    gc.enable()
            for tbl, aor, name, value in await self.store.load_policies():
                self._policies[(tbl, aor, name)] = value
            log.info("location table in %s: %d bindings loaded", self.store.describe(), self.counts()[1])
        self._tasks = [
            asyncio.create_task(self._writer(), name="location-writer"),
            asyncio.create_task(self._expirer(), name="location-expiry"),
        ]

    async def stop(self) -> None:
        while (self._pending or self._writing) and self._tasks and not self._tasks[0].done():
            self._wake.set()
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.store is not None:
            await self.store.close()
        pending, self._pending = self._pending, []  # submitted while the writer was stopping
        for change in pending:
            self._finish(change, StorageError("registrar is shutting down"))

    # -- reading ---------------------------------------------------------------------
    def tables(self) -> list[str]:
        return list(self._tables)

    def aors(self, table: str = DEFAULT_TABLE) -> Iterator[str]:
        return iter(list(self._tables.get(table, _NO_AORS)))

    def aor_count(self, table: str = DEFAULT_TABLE) -> int:
        return len(self._tables.get(table, _NO_AORS))

    def contacts(self, table: str, aor: str, now: float | None = None) -> list[Contact]:
        """Live bindings of ``aor`` (expired ones not yet purged are left out)."""
        bindings = self._tables.get(table, _NO_AORS).get(aor)
        if bindings is None:
            return []
        now = self.clock() if now is None else now
        if isinstance(bindings, Contact):
            return [bindings] if bindings.expires > now else []
        return [c for c in bindings if c.expires > now]

    def counts(self) -> tuple[int, int]:
        """(AORs, contacts) across all tables."""
        aors = sum(len(t) for t in self._tables.values())
        contacts = sum(1 if isinstance(b, Contact) else len(b) for t in self._tables.values() for b in t.values())
        return aors, contacts

    def contacts_by_transport(self, now: float) -> dict[str, int]:
        """Live bindings per transport they registered over, for a metrics scrape: one pass over
        the dicts (a list per AOR through :meth:`contacts` takes five times as long)."""
        counts: dict[str, int] = {}
        for aors in self._tables.values():
            for bindings in aors.values():
                for contact in _each(bindings):
                    if contact.expires > now:
                        transport = contact.socket.partition(":")[0]
                        counts[transport] = counts.get(transport, 0) + 1
        return counts

    # -- the feed of a shared store (Feed) ----------------------------------------------
    def changed(self, puts: list[tuple[str, Contact]], deletes: list[tuple[str, str, str]],
                policies: list[tuple[str, str, str, str | None]], reason: str | None = None) -> None:
        """What another registrar committed: into memory and published, as if done here."""
        why = REMOVED_REMOTE if reason is None else reason
        for table, aor, name, value in policies:
            self._set_policy(table, aor, name, value)
        for table, aor, ruid in deletes:
            contact = self._binding(table, aor, ruid)
            if contact is not None:
                self._apply(table, [], [(contact, why)])
        for table, contact in puts:
            is_new = self._binding(table, contact.aor, contact.ruid) is None
            self._apply(table, [(contact, is_new)], [])

    def reloaded(self, rows: list[tuple[str, Contact]]) -> None:
        """The whole table after the feed was lost: memory made equal to it, and readers told
        (events.lost) that what they hold may be stale."""
        stored: dict[str, tuple[str, Contact]] = {contact.ruid: (table, contact) for table, contact in rows}
        for table, aors in list(self._tables.items()):
            for bindings in list(aors.values()):
                for contact in _each(bindings):
                    if contact.ruid not in stored:
                        self._apply(table, [], [(contact, REMOVED_REMOTE)])
        for table, contact in stored.values():
            old = self._binding(table, contact.aor, contact.ruid)
            if old is None or old.updated(conid=None) != contact:  # our own TCP flows stay known
                self._apply(table, [(contact, old is None)], [])
        self.events.publish(ev.EVENTS_LOST, reason="change feed of the shared database lost: reloaded")

    def subscribers_changed(self, changes: Sequence[SubscriberChange], *, complete: bool = False) -> None:
        if self.on_subscribers is not None:
            self.on_subscribers(changes, complete)

    # -- policies --------------------------------------------------------------------
    def policy(self, table: str, aor: str, name: str) -> str | None:
        policies = self._policies
        return policies.get((table, aor, name)) if policies else None  # none set: no key made (4 a REGISTER)

    def policies(self, name: str) -> dict[tuple[str, str], str]:
        return {(t, a): v for (t, a, n), v in self._policies.items() if n == name}

    async def set_policy(self, table: str, aor: str, name: str, value: str | None) -> None:
        """Persist one policy value (None deletes it), then apply it."""
        await self.commit(Batch(policies=[(table, aor, name, value)]))
        self._set_policy(table, aor, name, value)

    def _set_policy(self, table: str, aor: str, name: str, value: str | None) -> None:
        if value is None:
            self._policies.pop((table, aor, name), None)
        else:
            self._policies[(table, aor, name)] = value
        self.events.publish(ev.POLICY_CHANGED, table=table, aor=aor, name=name, value=value)

    # -- writing ---------------------------------------------------------------------
    def submit(
        self,
        table: str,
        puts: list[tuple[Contact, bool]],
        removes: list[tuple[Contact, str]],
        done: Done,
        *,
        memory_only: bool = False,
        note: str = "",
        limit: tuple[int, str] | None = None,
    ) -> None:
        """Commit, then apply: ``puts`` are (contact, is_new), ``removes`` (contact, reason);
        ``note`` goes into the journal rows of the removals (who removed them). ``limit``: (most
        bindings, reason) the store keeps the AOR to (shared stores).

        With a store, the change goes into the next group commit; once that is durable
        the change is applied in memory, published, and ``done(None)`` is called. When the
        commit fails, nothing changes and ``done(error)`` gets the StorageError. Without a
        store (or ``memory_only``) all of this happens before submit() returns.
        """
        if self.store is None or memory_only or not (puts or removes):
            self._apply(table, puts, removes)
            done(None)
            return
        self._pending.append(_Pending(table, puts, removes, None, done, note, limit))
        if not self._writing:  # else the group with the store takes it when it comes back
            self._wake.set()

    async def apply(
        self,
        table: str,
        puts: list[tuple[Contact, bool]],
        removes: list[tuple[Contact, str]],
        *,
        memory_only: bool = False,
        note: str = "",
    ) -> None:
        """:meth:`submit` for coroutines; raises StorageError when the commit fails."""
        await self._settle(lambda done: self.submit(table, puts, removes, done, memory_only=memory_only, note=note))

    def _apply(self, table: str, puts: list[tuple[Contact, bool]], removes: list[tuple[Contact, str]]) -> None:
        watch = self.watch
        if watch is not None:
            watch(table, puts, removes)
        events = self.events
        listened = events.active
        for contact, reason in removes:
            self._drop(table, contact)
            if listened:
                kind = ev.CONTACT_EXPIRED if reason == REMOVED_EXPIRED else ev.CONTACT_REMOVED
                events.publish(kind, table=table, aor=contact.aor,
                               ruid=contact.ruid, reason=reason, contact=contact)
        for contact, is_new in puts:
            self._put(table, contact)
            if listened:
                events.changed(table, contact, is_new)

    def _put(self, table: str, contact: Contact) -> None:
        aors = self._tables.get(table)
        if aors is None:
            aors = self._tables[table] = {}
        bindings = aors.get(contact.aor)
        old = None
        if isinstance(bindings, Contact):
            if bindings.ruid == contact.ruid:
                old = bindings
                aors[contact.aor] = contact
        elif bindings is not None:
            for i, binding in enumerate(bindings):
                if binding.ruid == contact.ruid:
                    old = binding
                    aors[contact.aor] = bindings[:i] + (contact,) + bindings[i + 1:]
                    break
        if old is None:  # a new ruid
            aors[contact.aor] = _joined(bindings, contact)
        # One expiry entry per binding, not one per refresh: when a refresh moves the time
        # later, the entry stays and expire_now() moves it on when it comes due.
        if old is None or contact.expires < old.expires:
            self._due_at(table, contact.aor, contact.ruid, contact.expires)

    def _due_at(self, table: str, aor: str, ruid: str, expires: float) -> None:
        """Make binding ``ruid`` of ``aor`` due for expire_now() in the second ``expires`` falls in."""
        key = (math.floor(expires), table)
        due = self._due.get(key)
        if due is None:
            self._due[key] = [aor, ruid]
            heapq.heappush(self._seconds, key)
        else:
            due.append(aor)
            due.append(ruid)

    def _drop(self, table: str, contact: Contact) -> None:
        aors = self._tables.get(table, _NO_AORS)
        bindings = aors.get(contact.aor)
        if bindings is None:
            return
        if isinstance(bindings, Contact):
            if bindings.ruid == contact.ruid:
                del aors[contact.aor]
            return
        kept = tuple([b for b in bindings if b.ruid != contact.ruid])
        if len(kept) > 1:
            aors[contact.aor] = kept
        elif kept:
            aors[contact.aor] = kept[0]  # a tuple holds two or more
        else:
            del aors[contact.aor]

    def _binding(self, table: str, aor: str, ruid: str) -> Contact | None:
        """The binding ``ruid`` of ``aor`` in ``table``, if there is one."""
        bindings = self._tables.get(table, _NO_AORS).get(aor)
        if isinstance(bindings, Contact):
            return bindings if bindings.ruid == ruid else None
        for binding in bindings or ():
            if binding.ruid == ruid:
                return binding
        return None

    async def commit(self, batch: Batch) -> None:
        """Make policy and subscriber changes durable with the next group commit (no-op
        without a store). Contact changes go through :meth:`submit`, which also applies them."""
        if batch.puts or batch.deletes:
            raise ValueError("contact changes go through submit() or apply()")
        if self.store is None:
            return

        def queue(done: Done) -> None:
            self._pending.append(_Pending("", [], [], batch, done))
            if not self._writing:
                self._wake.set()

        await self._settle(queue)

    async def _settle(self, start: Callable[[Done], None]) -> None:
        """Start a change with a ``done`` callback and wait for its outcome.

        Once queued, a change is committed and applied whatever happens to the caller, so
        a caller cancelled meanwhile (its TCP connection closed, a timeout) still waits for
        the outcome (an AOR it holds stays locked until memory has the change), and the
        cancellation is delivered again at its next await.
        """
        error = await awaited(start, settle=True)
        if error is not None:
            raise error

    async def _writer(self) -> None:
        """Start a group commit when changes wait and no group is with the store; prune the
        journal and probe a failing store between groups. While commits follow each other,
        :meth:`_written` starts the next group itself and this task sleeps."""
        assert self.store is not None or not self._pending
        while True:
            if self.storage_error and self.store is not None and not self._pending and not self._writing:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.probe_interval)
                except asyncio.TimeoutError:
                    await self._probe()
                    continue
            else:
                await self._wake.wait()
            self._wake.clear()
            retry, self._retry = self._retry, None
            if retry is not None:
                await self._write_each(retry)
                self._writing = False
            if self._writing:
                continue
            if self._prune_due:  # here, so that it never runs inside a commit
                self._prune_due = False
                await self.prune_journal()
            pending, self._pending = self._pending, []
            if pending and self.store is not None:
                self._start(pending)

    def _start(self, pending: list[_Pending]) -> None:
        """Hand a group to the store; :meth:`_written` goes on when it is durable or refused."""
        assert self.store is not None
        self._writing = True
        began = time.perf_counter()
        self.store.write_then(_merge(pending, self._binding, self.clock()),
                              functools.partial(self._written, pending, began))

    def _written(self, pending: list[_Pending], began: float, error: StorageError | None) -> None:
        """A group's outcome, in the loop turn the store hands it back: the committed changes
        go into memory and are answered, and the changes that came meanwhile go to the store
        at once (a task woken from here would step only in the turn after)."""
        if error is None:
            self.commit_seconds.observe(time.perf_counter() - began)
            self.commit_size.observe(len(pending))
            self._storage_state(None)
            # One at a time off the list: each request's objects are freed right after its
            # reply, while still in cache, not all at once when the batch goes (10% of CPU).
            pending.reverse()
            while pending:
                self._finish(pending.pop(), None)
        elif error.bad_data and len(pending) > 1:
            # One request brought something unstorable: the writer commits the others without it.
            self._retry = pending
            self._wake.set()
            return
        else:
            self.storage_errors += 1
            if not error.bad_data:
                self._storage_state(str(error))
            for change in pending:
                self._finish(change, StorageError(str(error), bad_data=error.bad_data))
        if self._pending and not self._prune_due and error is None:
            pending, self._pending = self._pending, []
            self._start(pending)
            return
        self._writing = False
        if self._pending or self._prune_due or error is not None:  # the writer probes a failing store
            self._wake.set()

    def _finish(self, change: _Pending, error: StorageError | None) -> None:
        """A committed change goes into memory; then its caller hears the outcome."""
        try:
            if error is None:
                self._apply(change.table, change.puts, change.removes)
            change.done(error)
        except Exception:
            log.exception("error finishing a committed change")

    async def _write_each(self, pending: list[_Pending]) -> None:
        """Commit the changes one by one, in order; only the unstorable ones fail."""
        assert self.store is not None
        for index, change in enumerate(pending):
            try:
                await self.store.write(_merge([change], self._binding, self.clock()))
            except StorageError as exc:
                self.storage_errors += 1
                if exc.bad_data:
                    log.warning("a change could not be stored and was refused: %s", exc)
                    self._finish(change, exc)
                    continue
                self._storage_state(str(exc))
                for rest in pending[index:]:
                    self._finish(rest, StorageError(str(exc)))
                return
            except asyncio.CancelledError:
                for rest in pending[index:]:
                    self._finish(rest, StorageError("registrar is shutting down"))
                raise
            self._storage_state(None)
            self._finish(change, None)

    async def _probe(self) -> None:
        assert self.store is not None
        try:
            await self.store.probe()
        except StorageError as exc:
            self._storage_state(str(exc))
        else:
            self._storage_state(None)

    def _storage_state(self, error: str | None) -> None:
        if error == self.storage_error:
            return
        now = time.monotonic()
        if error and self.storage_error is None:
            log.error("storage failure: %s (REGISTERs get 500 until it clears)", error)
            self._error_logged = now
        elif error:
            # The reason changed while still failing (a reopen attempt, a new error):
            # the console gets every change, the log at most one line a minute.
            if now - self._error_logged >= 60.0:
                log.error("storage still failing: %s", error)
                self._error_logged = now
        else:
            log.warning("storage recovered")
        self.storage_error = error
        self.events.publish(ev.STORAGE_STATE, ok=error is None, error=error)

    async def _expirer(self) -> None:
        while True:
            await asyncio.sleep(self._expiry_interval)
            await self.expire_now()
            now = time.monotonic()
            if self.store is not None and now >= self._next_prune:
                self._next_prune = now + self.prune_interval
                self._prune_due = True
                self._wake.set()

    # -- the contact journal (journal.py) -----------------------------------------------
    async def history(self, table: str, aor: str, since: float = 0.0,
                      limit: int = journal.HISTORY_LIMIT) -> list[journal.JournalRow]:
        """The journal rows of ``aor`` from ``since`` on, oldest first (none without a store)."""
        if self.store is None:
            return []
        return await self.store.history(table, aor, since, limit)

    async def prune_journal(self) -> int:
        """Keep the journal within its retention window and row cap: the sweeper's job (one
        registrar of those sharing a store), a few bounded deletes per pass. Rows deleted."""
        store = self.store
        removed = 0
        try:
            if store is None or not await store.sweeps():
                return 0
            before = self.clock() - self.journal_retention
            for _ in range(10):  # at most this many chunks a pass: the next pass goes on
                count = await store.prune_journal(before, self.journal_max_rows, self.prune_chunk)
                removed += count
                if count < self.prune_chunk:
                    break
        except StorageError as exc:
            log.debug("journal not pruned: %s", exc)  # the next commit or probe reports storage faults
        return removed

    async def expire_now(self) -> int:
        """Remove every binding whose time is up; returns how many went."""
        now = self.clock()
        due: dict[str, dict[str, Contact]] = {}
        seconds = self._seconds
        ripe: list[tuple[str, list[str]]] = []
        while seconds and seconds[0][0] <= now:  # all taken first: a binding due later this second goes back
            key = heapq.heappop(seconds)
            ripe.append((key[1], self._due.pop(key)))
        for table, entries in ripe:
            for i in range(0, len(entries), 2):
                aor, ruid = entries[i], entries[i + 1]
                contact = self._binding(table, aor, ruid)
                if contact is None:
                    continue
                if contact.expires <= now:
                    due.setdefault(table, {})[ruid] = contact
                else:  # refreshed since, or later in this second: due again at its time
                    self._due_at(table, aor, ruid, contact.expires)
        count = 0
        sweeps = False
        if due and self.store is not None:
            try:
                sweeps = await self.store.sweeps()
            except StorageError:
                pass  # memory follows the clock all the same
        for table, contacts in due.items():
            removes = [(c, REMOVED_EXPIRED) for c in contacts.values()]
            try:
                await self.apply(table, [], removes, memory_only=not sweeps)
            except StorageError:
                # Expired is expired: a reload drops them anyway, so memory follows the clock.
                await self.apply(table, [], removes, memory_only=True)
            count += len(removes)
        self.expired_total += count
        return count


def _each(bindings: Bindings) -> tuple[Contact, ...]:
    """An AOR's bindings as a tuple, for the readers that are not per request."""
    return bindings if isinstance(bindings, tuple) else (bindings,)


def _joined(bindings: Bindings | None, contact: Contact) -> Bindings:
    """An AOR's bindings with ``contact`` added (a new ruid)."""
    if bindings is None:
        return contact
    return bindings + (contact,) if isinstance(bindings, tuple) else (bindings, contact)


def _journal_row(now: float, table: str, contact: Contact, event: str, detail: str) -> journal.JournalRow:
    return (now, table, contact.aor, contact.ruid, event, contact.addr, contact.received, contact.modified, detail)


def _renews(old: Contact, new: Contact) -> bool:
    """Does ``new`` change only what a re-REGISTER changes (expires, callid, cseq, modified) of
    ``old``, a binding the store holds (not a memory-only one)?"""
    return (not old.flags & SAVE_MEMORY_ONLY and old.params == new.params and old.q == new.q
            and old.methods == new.methods and old.flags == new.flags and old.cflags == new.cflags
            and old.instance == new.instance and old.regid == new.regid and old.node == new.node)


def _merge(changes: list[_Pending], binding: Callable[[str, str, str], Contact | None], now: float) -> Batch:
    """Collapse changes in order into one batch: the last change to each ruid wins. Each change
    is journaled: a removal with its reason, a new binding, a refresh only when it changed
    something beside its expiry and CSeq (``binding``: memory before the batch). The refreshes
    that change nothing a re-REGISTER does not are ``renewed`` (the store may write less)."""
    final: dict[str, tuple[str, Contact] | None] = {}
    born: set[str] = set()  # new bindings in this batch: may be inserted
    refreshed: set[str] = set()
    merged = Batch()
    renewed = merged.renewed
    rows = merged.journal
    for change in changes:
        table = change.table
        for contact, reason in change.removes:
            final[contact.ruid] = None
            renewed.discard(contact.ruid)
            note = change.note
            if not note and change.puts and (reason == REMOVED_REPLACED or reason == REMOVED_EVICTED):
                note = "for " + change.puts[0][0].addr  # the binding that took its place
            rows.append(_journal_row(now, table, contact, reason, note))
        for contact, is_new in change.puts:
            ruid = contact.ruid
            final[ruid] = (table, contact)
            renews = False
            if is_new:
                born.add(ruid)
                rows.append(_journal_row(now, table, contact, journal.REGISTERED,
                                         f"expires in {contact.expires - now:.0f} s"))
            else:
                refreshed.add(ruid)
                old = binding(table, contact.aor, ruid)
                # Compared here (compiled), not in journal.changed: this runs for every refresh.
                if old is not None and (old.addr != contact.addr or old.received != contact.received
                                        or old.socket != contact.socket or old.path != contact.path
                                        or old.user_agent != contact.user_agent):
                    rows.append(_journal_row(now, table, contact, journal.REFRESHED, journal.changed(old, contact)))
                elif old is not None:
                    renews = _renews(old, contact)
            if renews:
                renewed.add(ruid)
            else:
                renewed.discard(ruid)
        if change.limit is not None and change.puts:
            merged.limits[(table, change.puts[0][0].aor)] = change.limit
        if change.batch is not None:  # policies and subscribers only (see commit())
            merged.policies += change.batch.policies
            merged.subscribers += change.batch.subscribers
    for ruid, value in final.items():
        if value is None:
            merged.deletes.append(ruid)
        else:
            merged.puts.append(value)
    merged.refreshes = refreshed - born
    return merged

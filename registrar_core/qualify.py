"""Contact reachability: periodic OPTIONS to every registered contact (qualify), as Asterisk's
qualify, Kamailio's usrloc keepalives and OpenSIPS's pinging. This service keeps the schedule
(each contact every ``interval`` ± ``jitter``, at most ``max_inflight`` probes outstanding; with
100k contacts one task and one heap of due times, no task per probe), the reachability state
(:mod:`registrar_core.reachability`), its ``contact.reachability`` events and remove-after.
One probe is :mod:`registrar_core.qualify_probe`, sent as a client transaction of the core
(:mod:`registrar_core.client_transactions`); which contacts exist comes from
:mod:`registrar_core.qualify_contacts`. Off by default (``interval=0``: nothing is sent until
:meth:`QualifyService.qualify_now` asks).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import events as ev
from .aor import NotFound
from .client_transactions import ClientTransaction
from .location import Contact
from .metrics import RTT_SECONDS_BUCKETS, Histogram
from .qualify_contacts import contact_by_ruid, every_contact, find_contacts, follow, remove_contact, wanted
from .qualify_probe import Prober
from .reachability import REACHABLE, UNKNOWN, UNREACHABLE, Reachability, order
from .resolver import Resolver

if TYPE_CHECKING:
    from .api import RegistrarCore

log = logging.getLogger(__name__)

REMOVED_UNREACHABLE = "unreachable"  # contact.removed reason when remove_after strikes
BURST = 64  # probes launched before yielding to the event loop
TICK = 0.01  # the scheduler sleeps at least this long: probes go out in small batches
_PENDING = object()  # an entry's probe while the prober starts it


class _Entry(Reachability):
    """One contact: its reachability, and where it stands in the schedule."""

    __slots__ = ("table", "aor", "ruid", "due", "probe", "waiters", "started")

    def __init__(self, table: str, aor: str, ruid: str) -> None:
        super().__init__()
        self.table, self.aor, self.ruid = table, aor, ruid
        self.due: float | None = None
        self.probe: ClientTransaction | asyncio.Task[None] | object | None = None  # in flight
        self.waiters: list[asyncio.Future[None]] | None = None
        self.started = 0.0  # loop time of the last probe: the next is due an interval later


class QualifyService:
    """``interval``: seconds between probes of one contact, 0 = only on demand (default).
    ``timeout``: seconds to wait for a final response (Timer F). ``jitter``: each period is
    ``interval ± jitter`` (default interval/10). ``remove_after``: remove a contact after that
    many consecutive failures (None/0: never). ``tables``: which location tables (None: all).
    ``flap_changes`` state changes within ``flap_window`` seconds make a contact flapping.
    The probe's options (``use_received``...) are :class:`~registrar_core.qualify_probe.Prober`'s."""

    def __init__(self, core: RegistrarCore, *, interval: float = 0.0, timeout: float = 3.0,
                 jitter: float | None = None, remove_after: int | None = None,
                 resolver: Resolver | None = None, max_inflight: int = 2000, retransmit: bool = True,
                 require_2xx: bool = False, use_received: str = "auto", tables: Iterable[str] | None = None,
                 from_user: str = "qualify", rng: random.Random | None = None, flap_changes: int = 4,
                 flap_window: float = 600.0) -> None:
        if interval < 0 or timeout <= 0:
            raise ValueError("qualify interval must be >= 0 and timeout > 0")
        self.core = core
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.jitter = self.interval / 10 if jitter is None else float(jitter)
        self.remove_after = remove_after or None
        self.resolver = resolver or Resolver()
        self.max_inflight = max(1, max_inflight)
        self.tables = None if tables is None else set(tables)
        self.flap_changes, self.flap_window = flap_changes, flap_window
        self.rng = rng or random.Random()
        self.counters: Counter[str] = Counter()  # sent, retransmitted, answered, timeouts, failed, removed
        self.rtt = Histogram(RTT_SECONDS_BUCKETS)  # answered probes (metrics.py)
        self._prober = Prober(core.client_transactions, self.resolver, self._reported, self.counters,
                              timeout=self.timeout, retransmit=retransmit, require_2xx=require_2xx,
                              use_received=use_received, from_user=from_user)
        self._entries: dict[str, _Entry] = {}
        self._states: Counter[str] = Counter()
        self._due: list[tuple[float, int, str]] = []
        self.inflight = 0  # probes outstanding (at most max_inflight)
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # the scheduler, the event follower, removals
        self._sub: ev.Subscription | None = None
        self._running = False
        # Of registrars sharing a database, only the one holding a contact's flow probes it.
        self.node = core.registrar.node

    @classmethod
    def from_config(cls, core: RegistrarCore, config: Any, **overrides: Any) -> QualifyService:
        """The service as the registrar's options say: qualify_interval, qualify_timeout,
        qualify_remove_after (0 = never), qualify_flap_changes and qualify_flap_window, and
        dns_server (none = /etc/resolv.conf)."""
        return cls(core, **{
            "interval": getattr(config, "qualify_interval", 0.0),
            "timeout": getattr(config, "qualify_timeout", 3.0),
            "remove_after": getattr(config, "qualify_remove_after", 0) or None,
            "flap_changes": getattr(config, "qualify_flap_changes", 4),
            "flap_window": getattr(config, "qualify_flap_window", 600.0),
            "resolver": Resolver(nameservers=getattr(config, "dns_server", ()) or None),
            **overrides})

    # -- lifecycle ------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Periodic probing is on (interval > 0)."""
        return self.interval > 0

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        if self.enabled:
            # Subscribe before the first scan, so that nothing registered in between is missed.
            self._sub = self.core.events.subscribe(maxsize=100_000)
            self._resync(spread=True)
            following = follow(self._sub, self._added, self._forget, lambda: self._resync(spread=False))
            self._tasks.add(asyncio.create_task(following, name="qualify-events"))
        self._tasks.add(asyncio.create_task(self._run(), name="qualify"))

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, self._prober.close(), return_exceptions=True)
        self._tasks.clear()
        for entry in self._entries.values():
            self._settle(entry)  # its outcome would come to a stopped service

    # -- reading ---------------------------------------------------------------------
    def status(self, ruid: str) -> dict[str, Any]:
        """{"state", "rtt_ms", "last_checked", "failures", "reason", "flapping"} of one contact."""
        return self._status(self._entries.get(ruid) or Reachability())

    def _status(self, entry: Reachability) -> dict[str, Any]:
        return {**entry.status(), "flapping": self._flapping(entry)}

    def _flapping(self, entry: Reachability) -> bool:
        return entry.flapping(self.core.location.clock(), self.flap_changes, self.flap_window)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """{ruid: status} of every known contact; contacts missing from it are "unknown"."""
        return {ruid: self._status(e) for ruid, e in self._entries.items()}

    def history(self, ruid: str) -> dict[str, Any]:
        """The contact's last RTTs and state changes, whether it is flapping
        (:meth:`registrar_core.reachability.Reachability.history`) and by which rule."""
        entry = self._entries.get(ruid) or Reachability()
        return {**entry.history(self.core.location.clock(), self.flap_changes, self.flap_window),
                "flap_changes": self.flap_changes, "flap_window": self.flap_window}

    def annotate(self, contact: dict[str, Any]) -> dict[str, Any]:
        """Add "state", "rtt_ms", "last_checked", "failures" and "flapping" to a contact dict (by its ruid)."""
        status = self.status(str(contact.get("ruid")))
        contact.update((key, status[key]) for key in ("state", "rtt_ms", "last_checked", "failures", "flapping"))
        return contact

    def stats(self) -> dict[str, Any]:
        return {
            "qualify_interval": self.interval, "qualify_inflight": self.inflight,
            "qualify_tracked": len(self._entries), "qualify_reachable": self._states[REACHABLE],
            "qualify_unreachable": self._states[UNREACHABLE], "qualify_unknown": self._states[UNKNOWN],
            "qualify_sent": self.counters["sent"], "qualify_timeouts": self.counters["timeouts"],
            "qualify_removed": self.counters["removed"], "dns_cache_entries": self.resolver.cache_entries(),
        }

    def order(self, contacts: Iterable[Contact], *, by_latency: bool = False,
              max_latency_ms: float | None = None) -> list[Contact]:
        """Reachable first, then unknown, then unreachable: :func:`registrar_core.reachability.order`."""
        return order(contacts, self._entries, by_latency=by_latency, max_latency_ms=max_latency_ms)

    # -- on demand --------------------------------------------------------------------
    async def qualify_now(self, ruid: str | None = None, *, aor: str | None = None,
                          table: str | None = None, wait: bool = True,
                          timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Probe one contact (by ruid), one AOR's contacts (``aor`` canonical, also narrows
        the search for ``ruid``), or every contact, now. With ``wait`` returns once the probes
        are answered or timed out, with each resulting status; otherwise at once (the
        console's key). Raises :class:`registrar_core.api.NotFound` for no such contact."""
        if not self._running:
            raise RuntimeError("the qualify service is not started")
        if ruid is None and aor is None:
            self._resync(spread=False)
            entries = list(self._entries.values())
        else:
            entry = self._entries.get(ruid) if ruid else None
            contact = self._contact(entry) if entry is not None else None
            found = [(entry.table, contact)] if entry is not None and contact is not None else (
                find_contacts(self.core.location, self.tables, ruid, aor, table))
            if not found:
                raise NotFound(f"contact {ruid} is not registered" if ruid else f"{aor} has no registered contact")
            entries = [self._track(t, c.aor, c.ruid, None) for t, c in found]
        loop = asyncio.get_running_loop()
        futures = []
        for entry in entries:
            if entry.probe is None:
                self._schedule(entry, loop.time())
            if wait:
                futures.append(fut := loop.create_future())
                entry.waiters = [*(entry.waiters or ()), fut]
        self._wake.set()
        if futures:
            rounds = 1 + len(futures) // self.max_inflight
            limit = timeout if timeout is not None else (self.timeout + self.resolver.timeout) * rounds + 1
            await asyncio.wait(futures, timeout=limit)
        return {e.ruid: self._status(e) for e in entries}

    # -- tracking contacts ------------------------------------------------------------
    def _resync(self, spread: bool) -> None:
        """Match the entries with the location table: add new contacts, forget gone ones."""
        now = asyncio.get_running_loop().time()
        seen: set[str] = set()
        for table, contact in every_contact(self.core.location, self.tables):
            if not self._ours(contact):
                continue
            seen.add(contact.ruid)
            if contact.ruid not in self._entries:
                due = now + self.rng.uniform(0, self.interval) if spread else now
                self._track(table, contact.aor, contact.ruid, due if self.enabled else None)
        for ruid in [r for r in self._entries if r not in seen]:
            self._forget(ruid)
        self._wake.set()

    def _ours(self, contact: Contact) -> bool:
        """Is the contact's flow held here (or its node unknown: made before nodes were recorded)?"""
        return not contact.node or contact.node == self.node

    def _added(self, table: str, aor: str, ruid: str) -> None:
        """A contact registered (or refreshed): first probe within the jitter. One refreshed
        through another registrar is that one's to probe from now on."""
        contact = contact_by_ruid(self.core.location, table, aor, ruid)
        if contact is not None and not self._ours(contact):
            self._forget(ruid)
        elif ruid not in self._entries and wanted(self.tables, table):
            first = self.rng.uniform(0, self.jitter) if self.jitter else 0.0
            self._track(table, aor, ruid, asyncio.get_running_loop().time() + first)
            self._wake.set()

    def _track(self, table: str, aor: str, ruid: str, due: float | None) -> _Entry:
        entry = self._entries.get(ruid)
        if entry is None:
            entry = self._entries[ruid] = _Entry(table, aor, ruid)
            self._states[UNKNOWN] += 1
            if due is not None:
                self._schedule(entry, due)
        return entry

    def _forget(self, ruid: str) -> None:
        entry = self._entries.pop(ruid, None)
        if entry is not None:
            self._states[entry.state] -= 1
            entry.due = None
            self._settle(entry)

    def _settle(self, entry: _Entry, cancel: bool = True) -> None:
        """Cancel the entry's probe (unless ``cancel`` is False), release its qualify_now waiters."""
        if cancel and entry.probe is not None:
            if isinstance(entry.probe, (ClientTransaction, asyncio.Task)):
                self._prober.cancel(entry.probe)
            entry.probe = None
            self.inflight -= 1
            self._wake.set()
        for fut in entry.waiters or ():
            if not fut.done():
                fut.set_result(None)
        entry.waiters = None

    def _schedule(self, entry: _Entry, due: float) -> None:
        entry.due = due
        heapq.heappush(self._due, (due, next(self._seq), entry.ruid))

    def _contact(self, entry: _Entry) -> Contact | None:
        return contact_by_ruid(self.core.location, entry.table, entry.aor, entry.ruid)

    # -- the scheduler ----------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now, launched, due = loop.time(), 0, self._due
            while due and due[0][0] <= now and self.inflight < self.max_inflight and launched < BURST:
                when, _, ruid = heapq.heappop(due)
                entry = self._entries.get(ruid)
                if entry is None or entry.due != when or entry.probe is not None:
                    continue  # stale heap item, or in flight: rescheduled when it ends
                entry.due = None
                launched += 1
                try:
                    self._start(entry, now)
                except Exception:  # one odd contact must never stop qualifying
                    log.exception("cannot qualify contact %s of %s", entry.ruid, entry.aor)
                    self._settle(entry)
                    self._done(entry, None, "internal error")
            if launched >= BURST:
                await asyncio.sleep(0)
                continue
            delay = min(due[0][0] - now, 5.0) if due and self.inflight < self.max_inflight else 5.0
            self._wake.clear()
            handle = loop.call_later(max(delay, TICK), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                handle.cancel()

    def _start(self, entry: _Entry, now: float) -> None:
        contact = self._contact(entry)
        if contact is None:
            self._forget(entry.ruid)
            return
        entry.started, entry.probe = now, _PENDING
        self.inflight += 1
        handle = self._prober.probe(contact, entry)
        if entry.probe is _PENDING:  # not reported at once
            entry.probe = handle

    def _reported(self, entry: _Entry, rtt_ms: float | None, reason: str, target: str) -> None:
        """The prober's report on one probe of ``entry`` (rtt_ms None: failed)."""
        if entry.probe is None:
            return  # forgotten meanwhile
        entry.probe = None
        self.inflight -= 1
        self._wake.set()
        entry.target = target or entry.target
        self._done(entry, rtt_ms, reason)

    def _done(self, entry: _Entry, rtt_ms: float | None, reason: str) -> None:
        """Record one probe's outcome (rtt_ms None = failed) and schedule the next."""
        previous = entry.state
        if rtt_ms is not None:
            self.rtt.observe(rtt_ms / 1000.0)
        if entry.observe(rtt_ms, reason, self.core.location.clock()):
            self.core.events.publish(
                ev.CONTACT_REACHABILITY, table=entry.table, aor=entry.aor, ruid=entry.ruid,
                state=entry.state, rtt_ms=entry.rtt_ms, reason=reason, previous=previous,
                failures=entry.failures, target=entry.target, flapping=self._flapping(entry))
        if previous != entry.state:
            self._states[previous] -= 1
            self._states[entry.state] += 1
            log.info("contact %s of %s is %s (%s)", entry.ruid, entry.aor, entry.state, reason)
        self._settle(entry, cancel=False)
        if self.remove_after and entry.failures >= self.remove_after:
            self._remove(entry)
        elif self.enabled and entry.due is None and self._entries.get(entry.ruid) is entry:
            period = self.interval + (self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
            self._schedule(entry, max(entry.started + max(period, 0.0), asyncio.get_running_loop().time()))
            self._wake.set()

    # -- remove-after -----------------------------------------------------------------
    def _remove(self, entry: _Entry) -> None:
        """Asterisk's remove_unavailable: drop the binding (contact.removed, reason "unreachable")."""
        contact = self._contact(entry)
        self._forget(entry.ruid)
        if contact is None:
            return
        self.counters["removed"] += 1
        log.warning("removing contact %s of %s: no answer to %d probes in a row",
                    entry.ruid, entry.aor, entry.failures)
        task = asyncio.ensure_future(self._unbind(entry.table, contact))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unbind(self, table: str, contact: Contact) -> None:
        if not await remove_contact(self.core.location, table, contact, REMOVED_UNREACHABLE) and self._running:
            due = asyncio.get_running_loop().time() + (self.interval or 0.0)  # keep probing it:
            self._track(table, contact.aor, contact.ruid, due if self.enabled else None)  # try again


__all__ = ["REACHABLE", "REMOVED_UNREACHABLE", "UNKNOWN", "UNREACHABLE", "QualifyService"]

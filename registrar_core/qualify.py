"""Contact reachability: periodic OPTIONS to every registered contact (qualify).

Asterisk's qualify, Kamailio's usrloc keepalives (ka_mode, KA-Roundtrip) and
OpenSIPS's pinging, in one asyncio service:

* Every ``interval`` seconds (± ``jitter``) each contact gets an OPTIONS, sent from
  the socket it registered on (``Contact.socket``), or on its TCP connection
  (``Contact.conid``) so NAT pinholes and flows stay open. With a stored Path the
  request goes to the first Path URI with the Path as Route set (RFC 3327); without
  one, an IP-literal contact is probed at its ``received`` address (where a NAT'd
  device really is, as Kamailio's fix_nated_register), and a host-name contact is
  located by RFC 3263 DNS (:mod:`registrar_core.resolver`).
* Any final response except 408 means *reachable* (Asterisk's default; set
  ``require_2xx`` for qualify_2xx_only), with the round-trip time in ms; no answer
  within ``timeout`` (UDP retransmits at T1=500 ms doubling), a send failure (TCP
  connection gone) or a DNS failure means *unreachable*. Until the first answer a
  contact is *unknown*.
* A ``contact.reachability`` event goes out when the state changes (and when the
  RTT of a reachable contact moves by more than 25 % and at least 1 ms); with
  ``remove_after=N`` a contact that failed N probes in a row is removed (Asterisk's
  remove_unavailable; the contact.removed event says reason "unreachable").

Off by default (Asterisk's qualify_frequency=0): with ``interval=0`` nothing is sent
until :meth:`QualifyService.qualify_now` asks. Cost with 100k contacts: one task, one
heap of due times (spread at random over the first interval, so probes are spread
evenly), at most ``max_inflight`` probes outstanding, one timer heap for timeouts and
retransmissions, no task per probe (only a host name not in the DNS cache gets a
short-lived resolving task, within the same in-flight bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import itertools
import logging
import random
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import events as ev
from .location import Contact, StorageError
from .resolver import Resolution, Resolver
from .sip import Headers, Request, Response, SipError, SipURI, parse_name_addr, parse_uri
from .source import Source

if TYPE_CHECKING:
    from .api import RegistrarCore

log = logging.getLogger(__name__)

CONTACT_REACHABILITY = "contact.reachability"
UNKNOWN = "unknown"
REACHABLE = "reachable"
UNREACHABLE = "unreachable"
REMOVED_UNREACHABLE = "unreachable"  # contact.removed reason when remove_after strikes

T1 = 0.5  # RFC 3261 timer values for non-INVITE retransmissions over UDP
T2 = 4.0
BURST = 64  # probes launched before yielding to the event loop
TICK = 0.01  # the scheduler sleeps at least this long: probes go out in small batches
_RANK = {REACHABLE: 0, UNKNOWN: 1, UNREACHABLE: 2}


class _Entry:
    """What the service knows about one contact."""

    __slots__ = ("table", "aor", "ruid", "state", "rtt_ms", "last_checked", "failures", "reason",
                 "due", "probe", "waiters", "target", "probes")

    def __init__(self, table: str, aor: str, ruid: str) -> None:
        self.table = table
        self.aor = aor
        self.ruid = ruid
        self.state = UNKNOWN
        self.rtt_ms: float | None = None
        self.last_checked: float | None = None
        self.failures = 0
        self.reason = ""
        self.due: float | None = None
        self.probe: _Probe | _Resolving | None = None
        self.waiters: list[asyncio.Future[None]] | None = None
        self.target = ""
        self.probes = 0

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "rtt_ms": self.rtt_ms, "last_checked": self.last_checked,
                "failures": self.failures, "reason": self.reason}


class _Resolving:
    """Placeholder probe while a host name is being resolved."""

    __slots__ = ()


_RESOLVING = _Resolving()


class _Probe:
    __slots__ = ("entry", "call_id", "branch", "data", "local", "conid", "addr", "sent", "deadline", "gap")

    def __init__(self, entry: _Entry, call_id: str, branch: str, data: bytes, local: str,
                 conid: int | None, addr: tuple[str, int], sent: float, deadline: float) -> None:
        self.entry = entry
        self.call_id = call_id
        self.branch = branch
        self.data = data
        self.local = local
        self.conid = conid
        self.addr = addr
        self.sent = sent
        self.deadline = deadline
        self.gap = T1


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where and how one probe goes; ``hop`` is a URI to resolve, else ``addr`` is final."""

    local: str
    conid: int | None
    transport: str
    request_uri: str
    routes: tuple[str, ...]
    hop: str | None
    addr: tuple[str, int] | None


def split_address(text: str) -> tuple[str, str, int]:
    """``udp:127.0.0.1:5060`` / ``tcp:[::1]:5060`` -> (proto, host, port)."""
    proto, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    return proto.lower(), host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class QualifyService:
    """Periodic OPTIONS to every contact of the location service; see the module docstring.

    ``interval``: seconds between probes of one contact, 0 = only on demand (default).
    ``timeout``: seconds to wait for a final response. ``jitter``: each period is
    ``interval ± jitter`` (default interval/10). ``remove_after``: remove a contact
    after that many consecutive failures (None/0: never). ``use_received``: "auto"
    (IP-literal contacts without Path go to their received address), "always" or
    "never". ``tables``: which location tables to qualify (None: all).
    """

    def __init__(
        self,
        core: RegistrarCore,
        *,
        interval: float = 0.0,
        timeout: float = 3.0,
        jitter: float | None = None,
        remove_after: int | None = None,
        resolver: Resolver | None = None,
        max_inflight: int = 2000,
        retransmit: bool = True,
        require_2xx: bool = False,
        use_received: str = "auto",
        tables: Iterable[str] | None = None,
        from_user: str = "qualify",
        rng: random.Random | None = None,
    ) -> None:
        if interval < 0 or timeout <= 0:
            raise ValueError("qualify interval must be >= 0 and timeout > 0")
        if use_received not in ("auto", "always", "never"):
            raise ValueError("use_received must be 'auto', 'always' or 'never'")
        self.core = core
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.jitter = self.interval / 10 if jitter is None else float(jitter)
        self.remove_after = remove_after or None
        self.resolver = resolver or Resolver()
        self.max_inflight = max(1, max_inflight)
        self.retransmit = retransmit
        self.require_2xx = require_2xx
        self.use_received = use_received
        self.tables = None if tables is None else set(tables)
        self.from_user = from_user
        self.rng = rng or random.Random()
        self.counters: Counter[str] = Counter()  # sent, retransmitted, answered, timeouts, failed, removed
        self._entries: dict[str, _Entry] = {}
        self._states: Counter[str] = Counter()
        self._due: list[tuple[float, int, str]] = []
        self._timers: list[tuple[float, int, str, bool]] = []  # (when, seq, call_id, is_timeout)
        self._probes: dict[str, _Probe] = {}
        self._inflight = 0
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._side: set[asyncio.Task[Any]] = set()
        self._sub: ev.Subscription | None = None
        self._dropped = 0
        self._running = False

    @classmethod
    def from_config(cls, core: RegistrarCore, config: Any, **overrides: Any) -> QualifyService:
        """The service as the registrar's options say: qualify_interval, qualify_timeout,
        qualify_remove_after (0 = never) and dns_server (none = /etc/resolv.conf)."""
        settings: dict[str, Any] = {
            "interval": getattr(config, "qualify_interval", 0.0),
            "timeout": getattr(config, "qualify_timeout", 3.0),
            "remove_after": getattr(config, "qualify_remove_after", 0) or None,
            "resolver": Resolver(nameservers=getattr(config, "dns_server", ()) or None),
        }
        settings.update(overrides)
        return cls(core, **settings)

    # -- lifecycle ------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Periodic probing is on (interval > 0)."""
        return self.interval > 0

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self.core.response_sinks.append(self._on_response)
        if self.enabled:
            # Subscribe before the first scan, so that nothing registered in between is missed.
            self._sub = self.core.events.subscribe(maxsize=100_000)
            self._resync(spread=True)
            self._tasks.append(asyncio.create_task(self._follow(), name="qualify-events"))
        self._tasks.append(asyncio.create_task(self._run(), name="qualify"))

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        with contextlib.suppress(ValueError):
            self.core.response_sinks.remove(self._on_response)
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        for task in [*self._tasks, *self._side]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._side, return_exceptions=True)
        self._tasks.clear()
        self._side.clear()
        for entry in self._entries.values():
            self._release_waiters(entry)

    # -- reading ---------------------------------------------------------------------
    def status(self, ruid: str) -> dict[str, Any]:
        """{"state", "rtt_ms", "last_checked", "failures", "reason"} of one contact."""
        entry = self._entries.get(ruid)
        if entry is None:
            return {"state": UNKNOWN, "rtt_ms": None, "last_checked": None, "failures": 0, "reason": ""}
        return entry.status()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """{ruid: {"state", "rtt_ms", "last_checked", "failures", "reason"}} of every known contact.

        Contacts missing from it are "unknown" (never probed).
        """
        return {ruid: e.status() for ruid, e in self._entries.items()}

    def annotate(self, contact: dict[str, Any]) -> dict[str, Any]:
        """Add "state", "rtt_ms", "last_checked" and "failures" to a contact dict (by its ruid)."""
        status = self.status(str(contact.get("ruid")))
        contact["state"] = status["state"]
        contact["rtt_ms"] = status["rtt_ms"]
        contact["last_checked"] = status["last_checked"]
        contact["failures"] = status["failures"]
        return contact

    def stats(self) -> dict[str, Any]:
        return {
            "qualify_interval": self.interval,
            "qualify_inflight": self._inflight,
            "qualify_tracked": len(self._entries),
            "qualify_reachable": self._states[REACHABLE],
            "qualify_unreachable": self._states[UNREACHABLE],
            "qualify_unknown": self._states[UNKNOWN],
            "qualify_sent": self.counters["sent"],
            "qualify_timeouts": self.counters["timeouts"],
            "qualify_removed": self.counters["removed"],
            "dns_cache_entries": self.resolver.cache_entries(),
        }

    @property
    def inflight(self) -> int:
        return self._inflight

    def order(self, contacts: Iterable[Contact], *, by_latency: bool = False,
              max_latency_ms: float | None = None) -> list[Contact]:
        """Reachable contacts first, then unknown, then unreachable (a stable sort:
        the caller's q / newest order holds within each group).

        ``by_latency`` sorts the reachable ones by RTT, lowest first (OpenSIPS
        sort-by-latency); ``max_latency_ms`` drops reachable contacts slower than
        that (OpenSIPS max-ping-latency).
        """
        entries = self._entries

        def key(c: Contact) -> tuple[int, float]:
            e = entries.get(c.ruid)
            if e is None:
                return _RANK[UNKNOWN], 0.0
            rank = _RANK[e.state]
            return rank, (e.rtt_ms or 0.0) if by_latency and rank == 0 else 0.0

        out = list(contacts)
        if max_latency_ms is not None:
            out = [c for c in out if not ((e := entries.get(c.ruid)) and e.state == REACHABLE
                                           and e.rtt_ms is not None and e.rtt_ms > max_latency_ms)]
        out.sort(key=key)
        return out

    # -- on demand --------------------------------------------------------------------
    async def qualify_now(self, ruid: str | None = None, *, aor: str | None = None,
                          table: str | None = None, wait: bool = True,
                          timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Probe one contact (by ruid), one AOR's contacts, or every contact, now.

        ``aor`` (canonical, ``alice@example.com``) narrows the search for ``ruid``, or
        picks the AOR's contacts. With ``wait`` (default) returns once the probes are
        answered or timed out, with the resulting status of each; otherwise returns
        at once (the console's key). Raises :class:`registrar_core.api.NotFound` when
        there is no such contact.
        """
        if not self._running:
            raise RuntimeError("the qualify service is not started")
        if ruid is None and aor is None:
            self._resync(spread=False)
            entries = list(self._entries.values())
        else:
            found = self._find(ruid, aor, table)
            if not found:
                from .aor import NotFound

                raise NotFound(f"contact {ruid} is not registered" if ruid else f"{aor} has no registered contact")
            entries = [self._track(t, c.aor, c.ruid, None) for t, c in found]
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = []
        for entry in entries:
            if entry.probe is None:
                self._schedule(entry, now)
            if wait:
                fut = loop.create_future()
                if entry.waiters is None:
                    entry.waiters = []
                entry.waiters.append(fut)
                futures.append(fut)
        self._wake.set()
        if futures:
            rounds = 1 + len(futures) // self.max_inflight
            limit = timeout if timeout is not None else (self.timeout + self.resolver.timeout) * rounds + 1
            await asyncio.wait(futures, timeout=limit)
        return {e.ruid: e.status() for e in entries}

    # -- tracking contacts ------------------------------------------------------------
    def _wanted(self, table: str) -> bool:
        return self.tables is None or table in self.tables

    def _resync(self, spread: bool) -> None:
        """Match the entries with the location table: add new contacts, forget gone ones."""
        location = self.core.location
        now = asyncio.get_running_loop().time()
        seen: set[str] = set()
        for table in location.tables():
            if not self._wanted(table):
                continue
            for aor in location.aors(table):
                for contact in location.contacts(table, aor):
                    seen.add(contact.ruid)
                    if contact.ruid not in self._entries:
                        due = now + self.rng.uniform(0, self.interval) if spread else now
                        self._track(table, aor, contact.ruid, due if self.enabled else None)
        for ruid in [r for r in self._entries if r not in seen]:
            self._forget(ruid)
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
        if entry is None:
            return
        self._states[entry.state] -= 1
        probe = entry.probe
        if probe is _RESOLVING or (isinstance(probe, _Probe) and self._probes.pop(probe.call_id, None) is not None):
            self._inflight -= 1
            self._wake.set()
        entry.probe = None
        entry.due = None
        self._release_waiters(entry)

    def _release_waiters(self, entry: _Entry) -> None:
        if entry.waiters:
            for fut in entry.waiters:
                if not fut.done():
                    fut.set_result(None)
        entry.waiters = None

    def _schedule(self, entry: _Entry, due: float) -> None:
        entry.due = due
        heapq.heappush(self._due, (due, next(self._seq), entry.ruid))

    def _find(self, ruid: str | None, aor: str | None, table: str | None) -> list[tuple[str, Contact]]:
        """Live contacts by ruid and/or AOR, without tracking the rest of the table."""
        location = self.core.location
        entry = self._entries.get(ruid) if ruid else None
        if entry is not None:
            contact = self._contact(entry)
            if contact is not None:
                return [(entry.table, contact)]
        tables = [table] if table else [t for t in location.tables() if self._wanted(t)]
        found = []
        for t in tables:
            for a in [aor] if aor else location.aors(t):
                for contact in location.contacts(t, a):
                    if ruid is None or contact.ruid == ruid:
                        found.append((t, contact))
                        if ruid is not None:
                            return found
        return found

    def _contact(self, entry: _Entry) -> Contact | None:
        for contact in self.core.location.contacts(entry.table, entry.aor):
            if contact.ruid == entry.ruid:
                return contact
        return None

    async def _follow(self) -> None:
        """Track contacts through the core's events (a resync when the queue overflowed)."""
        assert self._sub is not None
        sub = self._sub
        loop = asyncio.get_running_loop()
        while True:
            batch = [await sub.get(), *sub.drain()]
            if sub.dropped != self._dropped:
                self._dropped = sub.dropped
                self._resync(spread=False)
                continue
            now = loop.time()
            try:
                self._apply_events(batch, now)
            except Exception:  # pragma: no cover
                log.exception("qualify: cannot follow contact events")

    def _apply_events(self, batch: list[ev.Event], now: float) -> None:
        for event in batch:
            kind = event.kind
            if kind == ev.CONTACT_ADDED or kind == ev.CONTACT_REFRESHED:
                data = event.data
                if data["ruid"] not in self._entries and self._wanted(data["table"]):
                    first = now + (self.rng.uniform(0, self.jitter) if self.jitter else 0.0)
                    self._track(data["table"], data["aor"], data["ruid"], first)
                    self._wake.set()
            elif kind == ev.CONTACT_REMOVED or kind == ev.CONTACT_EXPIRED:
                self._forget(event.data["ruid"])

    # -- the scheduler ----------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            try:
                self._fire_timers(now)
                launched = self._launch_due(now)
            except Exception:  # pragma: no cover - keep qualifying whatever happens
                log.exception("qualify scheduler error")
                launched = 0
            if launched >= BURST:
                await asyncio.sleep(0)
                continue
            delay = 5.0
            if self._timers:
                delay = min(delay, self._timers[0][0] - now)
            if self._due and self._inflight < self.max_inflight:
                delay = min(delay, self._due[0][0] - now)
            self._wake.clear()
            if delay > 0:
                handle = loop.call_later(max(delay, TICK), self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    handle.cancel()
            else:
                await asyncio.sleep(0)

    def _launch_due(self, now: float) -> int:
        launched = 0
        due = self._due
        while due and due[0][0] <= now and self._inflight < self.max_inflight and launched < BURST:
            when, _, ruid = heapq.heappop(due)
            entry = self._entries.get(ruid)
            if entry is None or entry.due != when:
                continue  # stale heap item
            entry.due = None
            if entry.probe is not None:
                continue  # in flight: rescheduled when it ends
            try:
                self._start(entry, now)
            except Exception:  # one odd contact must never stop qualifying
                log.exception("cannot qualify contact %s of %s", entry.ruid, entry.aor)
                self._done(entry, None, "internal error", now)
            launched += 1
        return launched

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, call_id, is_timeout = heapq.heappop(timers)
            probe = self._probes.get(call_id)
            if probe is None:
                continue
            if is_timeout:
                self.counters["timeouts"] += 1
                self._finish(probe, None, f"no answer within {self.timeout:g} s", now)
                continue
            if not self.core.sender or not self.core.sender(probe.local, None, probe.addr, probe.data):
                continue  # the timeout will tell
            self.counters["retransmitted"] += 1
            probe.gap = min(probe.gap * 2, T2)
            if now + probe.gap < probe.deadline:
                heapq.heappush(timers, (now + probe.gap, next(self._seq), call_id, False))

    # -- one probe --------------------------------------------------------------------
    def _start(self, entry: _Entry, now: float) -> None:
        contact = self._contact(entry)
        if contact is None:
            self._forget(entry.ruid)
            return
        plan = self._plan(contact)
        if isinstance(plan, str):
            self._done(entry, None, plan, now)
            return
        if plan.hop is None:
            assert plan.addr is not None
            self._send(entry, contact, plan, plan.addr, now)
            return
        family = 6 if ":" in split_address(plan.local)[1] else 4
        resolution = self.resolver.cached(plan.hop, transports=(plan.transport,))
        if resolution is not None:
            self._send_resolved(entry, contact, plan, resolution, family, now)
            return
        # A host name not in the cache: resolve in a task (counted as in flight).
        entry.probe = _RESOLVING
        self._inflight += 1
        task = asyncio.ensure_future(self._resolve_and_send(entry, contact, plan, family))
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def _resolve_and_send(self, entry: _Entry, contact: Contact, plan: _Plan, family: int) -> None:
        try:
            resolution = await self.resolver.resolve(plan.hop or "", transports=(plan.transport,))
        finally:
            if entry.probe is _RESOLVING:
                entry.probe = None
                self._inflight -= 1
                self._wake.set()
        if self._entries.get(entry.ruid) is not entry:
            return  # removed meanwhile
        self._send_resolved(entry, contact, plan, resolution, family, asyncio.get_running_loop().time())

    def _send_resolved(self, entry: _Entry, contact: Contact, plan: _Plan, resolution: Resolution,
                       family: int, now: float) -> None:
        if not resolution.ok:
            self._done(entry, None, f"dns {resolution.state}: {resolution.reason}", now)
            return
        target = resolution.first(family)
        if target is None:
            self._done(entry, None, f"dns: no IPv{family} address for {plan.hop}", now)
            return
        self._send(entry, contact, plan, target.addr, now)

    def _plan(self, contact: Contact) -> _Plan | str:
        """Where the probe goes, or why it cannot be sent."""
        if not contact.socket:
            return "registered without a socket"
        try:
            proto, _host, _port = split_address(contact.socket)
        except ValueError:
            return f"bad socket {contact.socket!r}"
        routes = tuple(contact.path)
        if contact.conid is not None:
            # Over the device's own connection (its flow): no DNS, no new connection.
            return _Plan(contact.socket, contact.conid, proto, contact.addr, routes, None,
                         _address(contact.received) or ("0.0.0.0", 0))
        if proto != "udp":
            return "its TCP connection is closed"
        if routes:
            try:
                hop_uri = parse_name_addr(routes[0]).uri
            except SipError:
                return f"bad Path {routes[0]!r}"
            return _Plan(contact.socket, None, "udp", contact.addr, routes, str(hop_uri.raw or hop_uri), None)
        received = _address(contact.received) if self.use_received != "never" else None
        if received is not None and (self.use_received == "always" or _literal_contact(contact.addr)):
            return _Plan(contact.socket, None, "udp", contact.addr, (), None, received)
        return _Plan(contact.socket, None, "udp", contact.addr, (), contact.addr, None)

    def _send(self, entry: _Entry, contact: Contact, plan: _Plan, addr: tuple[str, int], now: float) -> None:
        token = f"{next(self._ids):x}{secrets.token_hex(6)}"  # unguessable: a forged 200 cannot match
        call_id = f"q{self._prefix}-{token}"
        branch = f"z9hG4bKq{token}"
        try:
            data = self._options(plan, call_id, branch)
        except SipError as exc:
            self._done(entry, None, f"bad contact URI ({exc.reason})", now)
            return
        sender = self.core.sender
        entry.target = f"{plan.transport}:{addr[0]}:{addr[1]}" if plan.conid is None else f"conn {plan.conid}"
        if sender is None or not sender(plan.local, plan.conid, addr, data):
            self.counters["failed"] += 1
            why = "its TCP connection is closed" if plan.conid is not None else f"cannot send from {plan.local}"
            self._done(entry, None, why, now)
            return
        self.counters["sent"] += 1
        entry.probes += 1
        probe = _Probe(entry, call_id, branch, data, plan.local, plan.conid, addr, now, now + self.timeout)
        self._probes[call_id] = probe
        entry.probe = probe
        self._inflight += 1
        heapq.heappush(self._timers, (probe.deadline, next(self._seq), call_id, True))
        if self.retransmit and plan.conid is None and T1 < self.timeout:
            heapq.heappush(self._timers, (now + T1, next(self._seq), call_id, False))

    def _options(self, plan: _Plan, call_id: str, branch: str) -> bytes:
        _, host, port = split_address(plan.local)
        host = f"[{host}]" if ":" in host else host
        uri = parse_uri(plan.request_uri)
        if not isinstance(uri, SipURI) or uri.scheme not in ("sip", "sips"):
            raise SipError(400, "not a sip URI")
        fields = [("Via", f"SIP/2.0/{plan.transport.upper()} {host}:{port};branch={branch};rport")]
        fields += [("Route", r) for r in plan.routes]
        fields += [
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.from_user}@{host}:{port}>;tag={branch[-12:]}"),
            ("To", f"<{plan.request_uri}>"),
            ("Call-ID", call_id),
            ("CSeq", "1 OPTIONS"),
            ("Accept", "application/sdp"),
            ("User-Agent", "sipconsole qualify"),
            ("Content-Length", "0"),
        ]
        return bytes(Request(Headers(fields), b"", method="OPTIONS", uri=uri))

    def _on_response(self, response: Response, source: Source) -> None:
        """A response sink of the core: match our probes by Call-ID and branch."""
        probe = self._probes.get(response.call_id)
        if probe is None or response.cseq[1] != "OPTIONS":
            return
        if response.vias and response.vias[0].branch != probe.branch:
            return
        if response.status < 200:
            return  # provisional: keep waiting for the final answer
        now = asyncio.get_running_loop().time()
        self.counters["answered"] += 1
        rtt_ms = (now - probe.sent) * 1000.0
        ok = response.status != 408 and (not self.require_2xx or response.status < 300)
        reason = f"{response.status} {response.reason}".strip()
        self._finish(probe, rtt_ms if ok else None, reason, now)

    def _finish(self, probe: _Probe, rtt_ms: float | None, reason: str, now: float) -> None:
        if self._probes.pop(probe.call_id, None) is None:
            return
        self._inflight -= 1
        entry = probe.entry
        entry.probe = None
        self._wake.set()
        if self._entries.get(entry.ruid) is not entry:
            return
        self._done(entry, rtt_ms, reason, probe.sent)

    def _done(self, entry: _Entry, rtt_ms: float | None, reason: str, started: float) -> None:
        """Record one probe's outcome (rtt_ms None = failed) and schedule the next."""
        entry.last_checked = self.core.location.clock()
        previous, previous_rtt = entry.state, entry.rtt_ms
        if rtt_ms is not None:
            entry.failures = 0
            entry.state = REACHABLE
            entry.rtt_ms = round(rtt_ms, 3)
        else:
            entry.failures += 1
            entry.state = UNREACHABLE
            entry.rtt_ms = None
        entry.reason = reason
        if previous != entry.state:
            self._states[previous] -= 1
            self._states[entry.state] += 1
        if previous != entry.state or (
            rtt_ms is not None and previous_rtt is not None
            and abs(rtt_ms - previous_rtt) >= max(1.0, 0.25 * previous_rtt)
        ):
            self.core.events.publish(
                CONTACT_REACHABILITY, table=entry.table, aor=entry.aor, ruid=entry.ruid,
                state=entry.state, rtt_ms=entry.rtt_ms, reason=reason, previous=previous,
                failures=entry.failures, target=entry.target,
            )
            if previous != entry.state:
                log.info("contact %s of %s is %s (%s)", entry.ruid, entry.aor, entry.state, reason)
        self._release_waiters(entry)
        if self.remove_after and entry.failures >= self.remove_after:
            self._remove(entry)
            return
        if self.enabled and entry.due is None:
            period = self.interval + (self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
            loop_now = asyncio.get_running_loop().time()
            self._schedule(entry, max(started + max(period, 0.0), loop_now))
            self._wake.set()

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
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def _unbind(self, table: str, contact: Contact) -> None:
        location = self.core.location
        key = (table, contact.aor)
        await location.locks.acquire(key)
        try:
            current = [c for c in location.contacts(table, contact.aor) if c.ruid == contact.ruid]
            if current:
                await location.apply(table, [], [(current[0], REMOVED_UNREACHABLE)])
        except StorageError as exc:
            log.error("cannot remove unreachable contact %s: %s", contact.ruid, exc)
            if self._running:  # keep probing it; the next failure tries again
                due = asyncio.get_running_loop().time() + (self.interval or 0.0)
                self._track(table, contact.aor, contact.ruid, due if self.enabled else None)
        finally:
            location.locks.release(key)


def _address(received: str) -> tuple[str, int] | None:
    """``udp:1.2.3.4:5060`` -> ("1.2.3.4", 5060); None when absent or unusable."""
    if not received:
        return None
    try:
        _, host, port = split_address(received)
    except ValueError:
        return None
    return host, port


def _literal_contact(addr: str) -> bool:
    """Is the contact URI's host an IP address (not a name to resolve)?"""
    try:
        uri = parse_uri(addr)
    except SipError:
        return True  # not resolvable anyway: the received address is the best bet
    return not isinstance(uri, SipURI) or _is_ip(uri.host)


__all__ = ["CONTACT_REACHABILITY", "REACHABLE", "REMOVED_UNREACHABLE", "UNKNOWN", "UNREACHABLE",
           "QualifyService", "split_address"]

"""The core's event stream: contact changes and handled requests, fanned out to subscribers."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from .location.contact import Contact

# Event kinds (Final where a frame reads them per record: compiled, not a globals lookup).
CONTACT_ADDED: Final = "contact.added"
CONTACT_REFRESHED: Final = "contact.refreshed"
CONTACT_REMOVED: Final = "contact.removed"
CONTACT_EXPIRED: Final = "contact.expired"
REQUEST_HANDLED: Final = "request.handled"
POLICY_CHANGED = "policy.changed"
STORAGE_STATE = "storage.state"
SECURITY = "security"  # ban, unban, auth-failed, user-banned, wrong-aor, scanner
SUBSCRIBER_CHANGED = "subscriber.changed"  # user, action: added, password, removed
EVENTS_LOST = "events.lost"  # a subscriber fell behind: what it holds is stale, reload
CONTACT_REACHABILITY = "contact.reachability"  # qualify: state, rtt_ms, reason, previous, failures, target, flapping
# An operator changed something (audit trail): actor (console, ctl, api), uid, pid, action, target, result.
OPERATOR_ACTION = "operator.action"
_GONE: Final = (CONTACT_REMOVED, CONTACT_EXPIRED)

#: request.handled events a compact subscriber (a console) gets per frame, the first since the
#: last frame: its traffic pane shows the last few thousand anyway, and the others are never made.
TRAFFIC_PER_FRAME: Final = 250


class Handled(Protocol):
    """The request side of a request.handled event (the pipeline's note), read only when the
    event is made: a console reads it for the few requests per frame it shows."""

    @property
    def aor(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def user_agent(self) -> str: ...


@dataclass(slots=True)
class Event:
    """One event. A value with a ``to_dict()`` (a Contact) stays an object until delivered:
    publishing costs nothing a subscriber does not read. Not frozen: one is made per change
    and per request while someone listens, and a frozen one costs twice as much to make."""

    kind: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "time": self.time}
        for key, value in self.data.items():
            out[key] = value.to_dict() if hasattr(value, "to_dict") else value
        return out


class _Reader:
    """What both kinds of subscription share: a bound, one waiting reader (a future, not an
    asyncio.Queue: something is queued for every request and every change while someone
    listens, and the Queue's bookkeeping cost four times as much) and the wire form."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self.maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0

    def _lost(self, queued: int, when: float) -> Event:
        """The reader let ``queued`` things wait (and loses one more): the event that says so."""
        self.dropped += queued + 1
        self._bus.dropped += queued + 1
        return Event(EVENTS_LOST, {"dropped": self.dropped}, when)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def pending(self) -> bool:
        raise NotImplementedError

    async def wait(self) -> None:
        """Until something is queued (one reader per subscription); then :meth:`records`
        (or a Subscription's :meth:`~Subscription.drain`) takes the batch: a reader that
        writes them out does one write per batch."""
        while not self.pending():
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def records(self) -> list[Any]:
        """What is queued now, as the wire carries it (JSON-ready), without waiting."""
        raise NotImplementedError

    def close(self) -> None:
        self._bus.unsubscribe(self)


class Subscription(_Reader):
    """A bounded queue of events, every one as published. A reader that lets it fill loses
    what is queued and gets one EVENTS_LOST event instead, telling it to reload its view."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        super().__init__(bus, maxsize)
        self._events: deque[Event] = deque()

    def put(self, event: Event) -> None:
        events = self._events
        if len(events) >= self.maxsize:
            event = self._lost(len(events), event.time)
            events.clear()
        events.append(event)
        self._wake()

    def pending(self) -> bool:
        return bool(self._events)

    async def get(self) -> Event:
        await self.wait()
        return self._events.popleft()

    def drain(self) -> list[Event]:
        """Every event queued now, without waiting."""
        out = list(self._events)
        self._events.clear()
        return out

    def records(self) -> list[Any]:
        return [e.to_dict() for e in self.drain()]


class CompactSubscription(_Reader):
    """What a console reads, built when it reads (once a frame), not per request or change:

    - of the requests handled, the first TRAFFIC_PER_FRAME since the last frame, kept as
      tuples (time, method, note, status, reason) and made into request.handled records only
      then; the rest are only counted. Not the newest: a ring of the newest made a tuple for
      every request and kept it (and its note) for TRAFFIC_PER_FRAME requests more; above
      TRAFFIC_PER_FRAME requests a frame the pane shows a sample either way;
    - an added or refreshed contact marks its ruid in its table's marks: one record per
      contact per frame (repeated refreshes coalesce), its latest state, with only what the
      AOR table shows (aor, ruid, expires_at, modified, user_agent: a third of the bytes to
      encode); marks are per table so that no (table, ruid) key is made per REGISTER;
    - every other event (removals with their reason and whole contact, security, policy...)
      as published, in order, merged with the requests by time. A removal takes back its
      contact's mark: the console keeps the latest event per contact, and the removal is it.

    The bound counts what waits besides the requests (marked contacts and other events): at
    ``maxsize`` everything queued is dropped for one EVENTS_LOST, as a Subscription does."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        super().__init__(bus, maxsize)
        self._events: list[Event] = []
        self._traffic: list[tuple[float, str, Handled, int, str]] = []  # the first of the frame's requests
        self._requests = 0  # requests handled since the last frame (_traffic holds the first)
        self._added: dict[str, dict[str, Contact]] = {}  # table -> ruid -> its latest state
        self._refreshed: dict[str, dict[str, Contact]] = {}
        self._marked = 0  # contacts marked in both, for the bound

    def _overflow(self, queued: int, when: float) -> None:
        """``queued`` (events and marks) and the requests are lost, and one more."""
        lost = self._lost(queued + min(self._requests, TRAFFIC_PER_FRAME), when)
        self._unmark()
        self._clear_traffic()
        self._events = [lost]

    def _unmark(self) -> None:
        self._added = {}
        self._refreshed = {}
        self._marked = 0

    def _clear_traffic(self) -> None:
        self._traffic = []
        self._requests = 0

    def put(self, event: Event) -> None:
        if event.kind in _GONE:
            table, ruid = str(event.data.get("table", "")), str(event.data.get("ruid", ""))
            for marks in (self._added.get(table), self._refreshed.get(table)):
                if marks is not None and marks.pop(ruid, None) is not None:
                    self._marked -= 1
        queued = len(self._events) + self._marked
        if queued >= self.maxsize:
            self._overflow(queued, event.time)
        else:
            self._events.append(event)
        if self._waiter is not None:
            self._wake()

    def handled(self, when: float, method: str, note: Handled, status: int, reason: str) -> None:
        count = self._requests
        if count < TRAFFIC_PER_FRAME:
            self._traffic.append((when, method, note, status, reason))
        self._requests = count + 1
        if self._waiter is not None:
            self._wake()

    def changed(self, table: str, contact: Contact, is_new: bool) -> None:
        ruid = contact.ruid
        added = self._added.get(table)
        marks: dict[str, Contact] | None
        if is_new or (added is not None and ruid in added):  # added, then refreshed: added
            marks = added
            if marks is None:
                marks = self._added[table] = {}
        else:
            marks = self._refreshed.get(table)
            if marks is None:
                marks = self._refreshed[table] = {}
        size = len(marks)
        marks[ruid] = contact
        if len(marks) != size:  # a contact not yet marked: one more queued, or the one too many
            queued = len(self._events) + self._marked
            if queued >= self.maxsize:
                self._overflow(queued, self._bus.clock())
            else:
                self._marked += 1
        if self._waiter is not None:
            self._wake()

    def pending(self) -> bool:
        return bool(self._events or self._requests or self._marked)

    def records(self) -> list[Any]:
        """Dicts for the events as published, arrays for requests and contacts (see expanded())."""
        out: list[Any] = []
        traffic = self._traffic
        self._clear_traffic()
        taken = 0
        for event in self._events:  # both in time order: merged
            while taken < len(traffic) and traffic[taken][0] <= event.time:
                out.append(_handled_record(traffic[taken]))
                taken += 1
            out.append(event.to_dict())
        for request in traffic[taken:]:
            out.append(_handled_record(request))
        self._events = []
        for table, marks in self._added.items():
            for contact in marks.values():
                out.append(_contact_record(CONTACT_ADDED, table, contact))
        for table, marks in self._refreshed.items():
            for contact in marks.values():
                out.append(_contact_record(CONTACT_REFRESHED, table, contact))
        self._unmark()
        return out


# A compact record is a JSON array, not an object: a frame holds one per REGISTER, and an
# array is half the bytes (a contact: 118 instead of 251) and half the registrar's time of an
# object to build and encode.
# expanded() gives the client the dict a full subscriber gets (its fields as named here).
_HANDLED_FIELDS = ("kind", "time", "method", "aor", "source", "status", "reason", "user_agent")
_CONTACT_FIELDS = ("aor", "ruid", "expires_at", "modified", "user_agent")
# Where a contact record [kind, table, aor, ruid, expires_at, modified, user_agent] keeps its table,
# AOR and ruid: for a reader that takes the records apart itself (the console, not expanded()).
RECORD_TABLE, RECORD_AOR, RECORD_RUID = 1, 2, 3


def _handled_record(request: tuple[float, str, Handled, int, str]) -> tuple[Any, ...]:
    when, method, note, status, reason = request
    return REQUEST_HANDLED, when, method, note.aor, note.source, status, reason, note.user_agent


def _contact_record(kind: str, table: str, contact: Contact) -> tuple[Any, ...]:
    return kind, table, contact.aor, contact.ruid, contact.expires, contact.modified, contact.user_agent


def expanded(record: dict[str, Any] | Sequence[Any]) -> dict[str, Any]:
    """A record of :meth:`CompactSubscription.records` (after a JSON round trip) as the dict a
    console reads: request.handled as a full subscriber gets it; an added or refreshed contact
    as {"kind", "table", "aor", "ruid", "contact": {aor, ruid, expires_at, modified, user_agent}}."""
    if isinstance(record, dict):
        return record
    if record[0] == REQUEST_HANDLED:
        return dict(zip(_HANDLED_FIELDS, record))
    kind, table, *fields = record
    return {"kind": kind, "table": table, "aor": fields[0], "ruid": fields[1],
            "contact": dict(zip(_CONTACT_FIELDS, fields))}


class EventBus:
    """Fans events out to subscribers: every event to a Subscription; to a CompactSubscription
    (a console) the requests and contact changes as marks it turns into records per frame."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._subscribers: list[Subscription] = []
        self._compact: list[CompactSubscription] = []
        self.active = False  # anyone listening: the hot path tests this before it makes anything
        self.dropped = 0  # events every subscriber lost, closed ones included (metrics)

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscribers.append(sub)
        self.active = True
        return sub

    def subscribe_compact(self, maxsize: int = 10_000) -> CompactSubscription:
        sub = CompactSubscription(self, maxsize)
        self._compact.append(sub)
        self.active = True
        return sub

    def unsubscribe(self, sub: _Reader) -> None:
        if isinstance(sub, Subscription) and sub in self._subscribers:
            self._subscribers.remove(sub)
        elif isinstance(sub, CompactSubscription) and sub in self._compact:
            self._compact.remove(sub)
        self.active = bool(self._subscribers or self._compact)

    def publish(self, kind: str, **data: Any) -> None:
        if not self.active:
            return
        event = Event(kind, data, self.clock())
        for sub in self._subscribers:
            sub.put(event)
        for compact in self._compact:
            compact.put(event)

    def handled(self, method: str, note: Handled, status: int, reason: str) -> None:
        """A request answered (request.handled); only while :attr:`active`."""
        now = self.clock()
        if self._subscribers:
            event = Event(REQUEST_HANDLED, {"method": method, "aor": note.aor, "source": note.source,
                                            "status": status, "reason": reason, "user_agent": note.user_agent}, now)
            for sub in self._subscribers:
                sub.put(event)
        for compact in self._compact:
            compact.handled(now, method, note, status, reason)

    def changed(self, table: str, contact: Contact, is_new: bool) -> None:
        """A contact added or refreshed (contact.added, contact.refreshed); only while :attr:`active`."""
        if self._subscribers:
            event = Event(CONTACT_ADDED if is_new else CONTACT_REFRESHED,
                          {"table": table, "aor": contact.aor, "ruid": contact.ruid, "contact": contact}, self.clock())
            for sub in self._subscribers:
                sub.put(event)
        for compact in self._compact:
            compact.changed(table, contact, is_new)

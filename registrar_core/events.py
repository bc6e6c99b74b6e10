"""The core's event stream: contact changes and handled requests, fanned out to subscribers."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Event kinds.
CONTACT_ADDED = "contact.added"
CONTACT_REFRESHED = "contact.refreshed"
CONTACT_REMOVED = "contact.removed"
CONTACT_EXPIRED = "contact.expired"
REQUEST_HANDLED = "request.handled"
POLICY_CHANGED = "policy.changed"
STORAGE_STATE = "storage.state"
SECURITY = "security"  # ban, unban, auth-failed, user-banned, wrong-aor, scanner
SUBSCRIBER_CHANGED = "subscriber.changed"  # user, action: added, password, removed
EVENTS_LOST = "events.lost"  # a subscriber fell behind: what it holds is stale, reload
CONTACT_REACHABILITY = "contact.reachability"  # qualify: state, rtt_ms, reason, previous, failures, target, flapping
# An operator changed something (audit trail): actor (console, ctl, api), uid, pid, action, target, result.
OPERATOR_ACTION = "operator.action"


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


class Subscription:
    """A bounded queue of events. A reader that lets it fill loses what is queued and
    gets one EVENTS_LOST event instead, telling it to reload its view.

    A deque and one waiting future, not an asyncio.Queue: a put is made for every request
    and every change while someone listens, and the Queue's bookkeeping cost four times as much."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self.maxsize = maxsize
        self._events: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0

    def put(self, event: Event) -> None:
        events = self._events
        if len(events) >= self.maxsize:
            lost = len(events) + 1
            self.dropped += lost
            self._bus.dropped += lost
            events.clear()
            event = Event(EVENTS_LOST, {"dropped": self.dropped}, event.time)
        events.append(event)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Until at least one event is queued (one reader per subscription); then :meth:`drain`
        takes the batch (a reader that writes them out does one write per batch)."""
        while not self._events:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def get(self) -> Event:
        await self.wait()
        return self._events.popleft()

    def drain(self) -> list[Event]:
        """Every event queued now, without waiting."""
        out = list(self._events)
        self._events.clear()
        return out

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._subscribers: list[Subscription] = []
        self.dropped = 0  # events every subscriber lost, closed ones included (metrics)

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    @property
    def active(self) -> bool:
        return bool(self._subscribers)

    def publish(self, kind: str, **data: Any) -> None:
        if not self._subscribers:
            return
        event = Event(kind, data, self.clock())
        for sub in self._subscribers:
            sub.put(event)

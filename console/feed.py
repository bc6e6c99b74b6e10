"""Events between two screen updates, coalesced so that a pause never grows memory without bound."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from registrar_core import events as ev

Event = dict[str, Any]
#: A compact record as the console reads it (``events(compact=True, expand=False)``, see
#: events.expanded): request.handled [kind, time, method, aor, source, status, reason, user_agent];
#: contact added or refreshed [kind, table, aor, ruid, expires_at, modified, user_agent]. Taken apart
#: where it is used: expanding each into two dicts was a third of the console's event path (parse, buffer,
#: apply: 4.6 -> 2.6 us per REGISTER without it).
Record = Sequence[Any]
TRAFFIC = (ev.REQUEST_HANDLED, ev.SECURITY, ev.OPERATOR_ACTION)  # shown in the traffic pane, in arrival order
GONE = (ev.CONTACT_REMOVED, ev.CONTACT_EXPIRED)  # change the table, and show in the traffic pane why


class EventBuffer:
    """Keeps the latest event per contact and per policy, and the newest requests.

    Applying the latest event of each contact gives the same table as applying them
    all, so while the view is paused the buffer holds at most one event per contact.
    """

    def __init__(self, traffic_limit: int) -> None:
        self.contacts: dict[str, Event | Record] = {}
        self.reachability: dict[str, Event] = {}  # apart: it must not replace a contact.added
        self.state: dict[tuple[str, ...], Event] = {}
        self.traffic: deque[Event | Record] = deque(maxlen=traffic_limit)  # requests, security events, removals
        self.received = 0
        # A contact or reachability event came whole (a dict, not a compact record) since the last
        # take: the contacts pane reads every change then; else only when its AOR's row changed.
        self.whole = False
        self.lost = False  # the core dropped events: what the console holds is stale, reload

    def add(self, batch: list[Event | Record]) -> None:
        self.received += len(batch)
        for event in batch:
            if not isinstance(event, dict):  # a compact record: a request, or a contact added or refreshed
                if event[0] == ev.REQUEST_HANDLED:
                    self.traffic.append(event)
                else:
                    self.contacts[event[ev.RECORD_RUID]] = event
                continue
            kind = event["kind"]
            if kind in TRAFFIC:
                self.traffic.append(event)
            elif kind == ev.EVENTS_LOST:
                # What came before is incomplete: only a reload (and what follows) is right.
                self.contacts, self.state, self.reachability = {}, {}, {}
                self.lost = True
            elif kind == ev.CONTACT_REACHABILITY:
                self.reachability[event["ruid"]] = event
                self.whole = True
            elif kind.startswith("contact."):
                self.contacts[event["ruid"]] = event
                self.whole = True
                if kind in GONE:  # only removals: adds and refreshes would flood the pane
                    self.traffic.append(event)
            elif kind == ev.POLICY_CHANGED:
                self.state[(kind, event["table"], event["aor"], event["name"])] = event
            else:
                self.state[(kind,)] = event

    def __len__(self) -> int:
        return len(self.contacts) + len(self.reachability) + len(self.state) + len(self.traffic)

    def take(self) -> tuple[list[Event | Record], list[Event | Record]]:
        """(contact and state events, request and security events), emptying the buffer."""
        changes = [*self.state.values(), *self.contacts.values(), *self.reachability.values()]
        self.contacts, self.state, self.reachability = {}, {}, {}
        self.whole = False
        return changes, self.take_traffic()

    def take_traffic(self) -> list[Event | Record]:
        """Only the request and security events (during a load the changes wait for the table)."""
        traffic = list(self.traffic)
        self.traffic.clear()
        return traffic

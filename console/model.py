"""The console's mirror of the location table: one ``dump``, then the event stream.

It keeps only what the AOR table shows (per contact: expiry, last change, user
agent), so 100,000 contacts cost a few tens of megabytes; the contacts pane asks
the core for the full records of the one AOR it shows. Sorting and filtering are
incremental: an event moves one key in a sorted list instead of re-sorting it, and the
order of a column shown before is kept, so choosing it again moves only the AORs changed
meanwhile (about 10 MB per column kept at 100,000 AORs).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Set, Sized
from dataclasses import dataclass
from itertools import compress, repeat
from operator import contains, itemgetter
from typing import Any

from sortedcontainers import SortedList

from registrar_core import events as ev

from . import memory
from .feed import Record

TABLE = "location"
ADDED = (ev.CONTACT_ADDED, ev.CONTACT_REFRESHED)
REMOVED = (ev.CONTACT_REMOVED, ev.CONTACT_EXPIRED)

Event = dict[str, Any]


def own(text: str) -> str:
    """A copy of ``text``: keeping it must not keep the whole reply it came from in memory."""
    return text[:1] + text[1:]


@dataclass(slots=True)
class Binding:
    """What the AOR table needs of one contact."""

    expires_at: float
    modified: float
    user_agent: str


class AorRow:
    """One AOR: its bindings by ruid, and the summary the table shows."""

    __slots__ = ("aor", "bindings", "soonest", "newest", "agent")

    def __init__(self, aor: str) -> None:
        self.aor = aor
        self.bindings: dict[str, Binding] = {}
        self.soonest = 0.0
        self.newest = 0.0
        self.agent = ""

    @property
    def count(self) -> int:
        return len(self.bindings)

    def summarise(self) -> None:
        """The soonest expiry, and the newest binding's time and agent (the first of equals).
        One plain loop: min() and max(key=...) over a generator cost five times as much for
        the one or two bindings most AORs have, and a flush summarises thousands of rows."""
        values = iter(self.bindings.values())
        latest = next(values)
        soonest = latest.expires_at
        for b in values:
            if b.expires_at < soonest:
                soonest = b.expires_at
            if b.modified > latest.modified:
                latest = b
        self.soonest, self.newest, self.agent = soonest, latest.modified, latest.user_agent


SortKey = Callable[[AorRow], tuple[Any, ...]]

#: Sortable columns of the AOR table, each ascending in the value its column shows (▲; reversed ▼):
#: Updated shows an age, so ascending is the newest first. Every key ends with the AOR: keys are unique.
SORTS: dict[str, SortKey] = {
    "aor": lambda r: (r.aor,),
    "contacts": lambda r: (r.count, r.aor),
    "agent": lambda r: (r.agent.lower(), r.aor),
    "expires": lambda r: (r.soonest, r.aor),
    "updated": lambda r: (-r.newest, r.aor),
}


class SortedAors:
    """AORs in sort-key order, with O(log n) lookup of an AOR's position.

    A SortedList (sorted blocks with a positional index), not one flat list: moving an AOR is
    a few microseconds at 100,000 rows instead of two memmoves of the whole list, and a flush
    moves hundreds. A filtered view shares its whole table's ``key_of`` (the keys are the
    same): filtering builds no dict, and :meth:`index` checks that the key found is there.
    """

    def __init__(self, keys: Iterable[tuple[Any, ...]], key_of: dict[str, tuple[Any, ...]] | None = None) -> None:
        self.keys = SortedList(keys)
        self.key_of = dict(zip(map(itemgetter(-1), self.keys), self.keys)) if key_of is None else key_of

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> str:
        return self.keys[index][-1]

    def index(self, aor: str) -> int | None:
        key = self.key_of.get(aor)
        if key is None:
            return None
        index: int = self.keys.bisect_left(key)
        return index if index < len(self.keys) and self.keys[index] == key else None

    def move(self, aor: str, key: tuple[Any, ...] | None, view: SortedAors | None = None) -> None:
        """Put ``aor`` at ``key`` (None: take it out), here and in ``view``: a filtered view of
        this order that shows ``aor`` (it shares ``key_of``, so both move at once)."""
        old = self.key_of.get(aor)
        if old == key:
            return
        if old is not None:
            self.keys.remove(old)
            if view is not None:
                view.keys.remove(old)
        if key is None:
            del self.key_of[aor]
            return
        self.keys.add(key)
        self.key_of[aor] = key
        if view is not None:
            view.keys.add(key)

    def filtered(self, text: str) -> SortedAors:
        """The AORs containing ``text`` (lower case), in this order, sharing this ``key_of``."""
        keys = self.keys
        return SortedAors(compress(keys, map(contains, map(str.lower, map(itemgetter(-1), keys)), repeat(text))),
                          self.key_of)


class Registry:
    """AOR rows, policy state and the sorted, filtered view the AOR table draws."""

    def __init__(self) -> None:
        self.rows: dict[str, AorRow] = {}
        self.contacts = 0
        self.single_contact = False
        self.overrides: dict[str, bool] = {}
        self.caller_check = False
        self.storage_error: str | None = None
        self.sort = "aor"
        self.reverse = False
        self.filter = ""
        self._all = SortedAors([])
        self._view = self._all
        # The orders of the other columns shown before, each with the AORs changed since (the
        # next time its column is chosen, only those move): switching back costs no full sort.
        self._kept: dict[str, tuple[SortedAors, set[str]]] = {}
        # AORs whose rows were made since the orders were last brought up to date: sorted by AOR,
        # only these and the rows gone move (a row's key by AOR never changes while it exists).
        self._born: list[str] = []

    # -- loading and events ------------------------------------------------------------
    def load(self, dump: dict[str, Any], policy: dict[str, Any]) -> None:
        """Start from a ``dump`` and a ``policy.get`` reply."""
        self.rows.clear()
        self.contacts = 0
        self.add_entries(dump["aors"])
        self.finish_load(policy)

    def add_entries(self, entries: Iterable[dict[str, Any]]) -> None:
        """Take one page of a ``dump`` (an AOR read twice keeps its newest bindings)."""
        for entry in entries:
            for contact in entry["contacts"]:
                self._put_contact(contact)

    def finish_load(self, policy: dict[str, Any], *, index: bool = True) -> None:
        """The pages are in: summarise the rows and take the policy; ``index=False`` leaves the
        sorting to :meth:`adopt` (one sort of a large table instead of two)."""
        for row in self.rows.values():
            row.summarise()
        self.set_policy(policy)
        if index:
            self._kept.clear()
            self._rebuild()

    def adopt(self, other: Registry) -> None:
        """Take the rows and policy of a freshly loaded ``other``; keep this view's sort and filter."""
        self.rows, self.contacts = other.rows, other.contacts
        self.single_contact, self.overrides, self.caller_check = (
            other.single_contact, other.overrides, other.caller_check)
        self._kept.clear()
        self._rebuild()

    def set_policy(self, policy: dict[str, Any]) -> None:
        """Take a ``policy.get`` (or ``policy.set``) reply."""
        self.single_contact = policy["single_contact"]
        self.overrides = dict(policy["single_contact_overrides"])
        self.caller_check = policy["caller_check"]

    def apply(self, events: Iterable[Event | Record]) -> Set[str]:
        """Apply contact, policy and storage events; returns the AORs whose rows changed."""
        # AOR -> its row now (None: gone): each row is looked up once in a table of 100,000, and
        # every later step (summarise, move) takes it from here.
        dirty: dict[str, AorRow | None] = {}
        put, rows = self._put, self.rows
        for event in events:
            if not isinstance(event, dict):  # a compact record of a contact added or refreshed (feed.Record)
                _, table, aor, ruid, expires_at, modified, agent = event  # no slice, no call with *args
                if table == TABLE and (row := put(aor, ruid, expires_at, modified, agent)) is not None:
                    dirty[row.aor] = row
                continue
            kind = event["kind"]
            if event.get("table", TABLE) != TABLE:
                continue
            if kind in ADDED:
                if (row := self._put_contact(event["contact"])) is not None:
                    dirty[row.aor] = row
            elif kind in REMOVED:
                if self._drop(event["aor"], event["ruid"]):
                    dirty[event["aor"]] = rows.get(event["aor"])
            elif kind == ev.POLICY_CHANGED:
                self._policy_event(event)
                if event["aor"]:
                    dirty[event["aor"]] = rows.get(event["aor"])
            elif kind == ev.STORAGE_STATE:
                self.storage_error = event["error"]
        return self._changed(dirty)

    def forget(self, contacts: Iterable[dict[str, Any]]) -> Set[str]:
        """Drop contacts the console itself just unregistered (their events follow later)."""
        return self._changed({c["aor"]: self.rows.get(c["aor"]) for c in contacts if self._drop(c["aor"], c["ruid"])})

    def _changed(self, dirty: dict[str, AorRow | None]) -> Set[str]:
        """Summarise the rows of ``dirty`` and move them in the orders; its AORs. A row of one
        binding (most) was summarised as it changed, by :meth:`_put` or :meth:`_drop`."""
        for row in dirty.values():
            if row is not None and len(row.bindings) > 1:
                row.summarise()
        self._reindex(dirty)
        return dirty.keys()

    def _put_contact(self, contact: dict[str, Any]) -> AorRow | None:
        return self._put(contact["aor"], contact["ruid"], contact["expires_at"], contact["modified"],
                         contact["user_agent"])

    def _put(self, aor: str, ruid: str, expires_at: float, modified: float, agent: str) -> AorRow | None:
        """Keep what the table needs of a contact, as values of our own (see :func:`own`); its
        row, None when the event is older than what the row holds."""
        row = self.rows.get(aor)
        if row is None:
            key = own(aor)
            row = self.rows[key] = AorRow(key)
            self._born.append(key)
        old = row.bindings.get(ruid)
        if old is not None and old.modified > modified:
            return None  # an event older than what the dump already showed
        expires_at, modified = expires_at + 0.0, modified + 0.0
        if old is None:
            self.contacts += 1
            old = row.bindings[own(ruid)] = Binding(expires_at, modified, sys.intern(agent))
        else:  # a refresh, the usual event: the binding changes in place
            old.expires_at, old.modified = expires_at, modified
            if agent != old.user_agent:
                old.user_agent = sys.intern(agent)
        if len(row.bindings) == 1:  # the row's summary is this binding: no second pass over the row
            row.soonest, row.newest, row.agent = expires_at, modified, old.user_agent
        return row

    def _drop(self, aor: str, ruid: str) -> bool:
        row = self.rows.get(aor)
        if row is None or row.bindings.pop(ruid, None) is None:
            return False
        self.contacts -= 1
        if not row.bindings:
            del self.rows[aor]
        elif len(row.bindings) == 1:  # as in _put: a row of one binding here, of more in _changed
            row.summarise()
        return True

    def _policy_event(self, event: Event) -> None:
        on = event["value"] == "on"
        if event["name"] == "caller_check":
            self.caller_check = on
        elif event["name"] == "single_contact":
            if not event["aor"]:
                self.single_contact = on
            elif event["value"] is None:
                self.overrides.pop(event["aor"], None)
            else:
                self.overrides[event["aor"]] = on

    # -- policy queries ------------------------------------------------------------------
    def single_contact_for(self, aor: str) -> bool:
        """The single-contact policy in force for ``aor``."""
        return self.overrides.get(aor, self.single_contact)

    # -- the view: sort and filter ---------------------------------------------------------
    def set_sort(self, sort: str, reverse: bool) -> None:
        if (sort, reverse) == (self.sort, self.reverse):
            return
        changed = sort != self.sort
        if changed:
            self._kept[self.sort] = (self._all, set())
        self.sort, self.reverse = sort, reverse
        if not changed:
            return
        kept = self._kept.pop(sort, None)
        if kept is None or self._too_many(kept[1]):
            self._rebuild()
            return
        self._all, stale = kept
        self._view = self._all  # the filter is applied once, below
        self._move(stale, self.rows, filtered=False)
        self._view = self._filtered(self._all)

    def set_filter(self, text: str) -> None:
        """Show only AORs containing ``text`` (case-insensitive); empty shows all."""
        text = text.strip().lower()
        if text == self.filter:
            return
        narrower = bool(self.filter) and self.filter in text
        source = self._view if narrower else self._all
        self.filter = text
        self._view = self._filtered(source)

    def matches(self, aor: str) -> bool:
        return not self.filter or self.filter in aor.lower()

    def __len__(self) -> int:
        return len(self._view)

    def aor_at(self, index: int) -> str:
        return self._view[len(self._view) - 1 - index if self.reverse else index]

    def row_at(self, index: int) -> AorRow:
        return self.rows[self.aor_at(index)]

    def position(self, aor: str) -> int | None:
        """Where ``aor`` is in the view (None: not shown)."""
        index = self._view.index(aor)
        if index is None:
            return None
        return len(self._view) - 1 - index if self.reverse else index

    def _filtered(self, source: SortedAors) -> SortedAors:
        return source.filtered(self.filter) if self.filter else source

    def _rebuild(self) -> None:
        # The new keys are a table's worth of young objects: left on, the collector would scan
        # them (and every other tracked object) several times over; none of them forms a cycle.
        self._born.clear()
        with memory.collector_paused():
            key = SORTS[self.sort]
            self._all = SortedAors(key(r) for r in self.rows.values())
            self._view = self._filtered(self._all)
            memory.keep()

    def _too_many(self, dirty: Sized) -> bool:
        """Whether sorting everything again is quicker than moving each of ``dirty``."""
        return len(dirty) > max(64, len(self.rows) // 4)

    def _reindex(self, dirty: dict[str, AorRow | None]) -> None:
        for name, (_, stale) in list(self._kept.items()):
            stale.update(dirty)
            if self._too_many(stale):
                del self._kept[name]  # sorted again when shown: no point keeping it up
        if self._too_many(dirty):
            self._rebuild()
        elif self.sort == "aor":  # most events refresh a row in place: finding each unmoved cost more than the rest
            self._move([*self._born, *(aor for aor, row in dirty.items() if row is None)], self.rows,
                       filtered=self._view is not self._all)
            self._born.clear()
        else:
            self._born.clear()
            self._move(dirty, dirty, filtered=self._view is not self._all)

    def _move(self, aors: Iterable[str], rows: Mapping[str, AorRow | None], *, filtered: bool) -> None:
        """Put each of ``aors`` where its row (in ``rows``) now belongs (or out, gone)."""
        key, order, view = SORTS[self.sort], self._all, self._view
        for aor in aors:
            row = rows.get(aor)
            order.move(aor, None if row is None else key(row), view if filtered and self.matches(aor) else None)


#: AORs per ``dump`` call of the initial load (about 30 ms of the registrar's time each), and
#: how far back each page starts again.
PAGE = 1000
OVERLAP = 32
ANCHORS = 256


async def read_table(call: Callable[..., Awaitable[Any]], *, table: str = TABLE, page: int = PAGE,
                     overlap: int = OVERLAP) -> AsyncIterator[tuple[list[dict[str, Any]], int, int]]:
    """Read the location table in pages: yields (AOR entries, position reached, total).

    The core pages by position in its table, which shifts when AORs before the position
    go away between two calls: a plain ``offset += limit`` would skip the AORs that slid
    back across the page boundary. So each page starts ``overlap`` positions back and is
    checked against the AORs already read (the order of surviving AORs never changes, and
    new ones are appended): everything after the latest of them in the reply is new. When
    none of them is in the reply, the table shifted further than the overlap: read again
    from further back (at worst from the start). AORs read twice are harmless, so the
    pages together hold every AOR the table held from the first call to the last, and
    the events received meanwhile (subscribe first!) bring the rest up to date.
    """
    offset, margin, total = 0, overlap, 0
    anchors: deque[str] = deque(maxlen=ANCHORS)  # the last AORs read, in table order
    while True:
        start = max(0, offset - margin) if anchors else offset
        reply = await call("dump", table=table, offset=start, limit=page + offset - start)
        entries: list[dict[str, Any]] = reply["aors"]
        total = reply.get("total", len(entries))
        if anchors and start > 0:
            where = {e["aor"]: i for i, e in enumerate(entries)}
            found = next((where[a] for a in reversed(anchors) if a in where), None)
            if found is None:
                margin *= 4  # shifted past the overlap: go further back and read again
                continue
        margin = overlap
        anchors.extend(e["aor"] for e in entries)
        nxt = reply.get("next")
        yield entries, total if nxt is None else nxt, total
        if nxt is None:
            return
        offset = nxt

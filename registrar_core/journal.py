"""The contact journal: why each binding came, changed and went ("why did my phone vanish?").

The location service adds one row per binding change to the group commit that makes the
change durable (:attr:`~.location.store.Batch.journal`), so a row costs no round trip of its
own and exists exactly when the change does. Its ``event`` is ``registered``, ``refreshed``,
or the removal reason the rest of the registrar already uses (``unregistered``, ``expired``,
``replaced``, ``evicted``, ``admin``, ``unreachable``, ``connection-closed``, ``node-gone``).

Refreshes are coalesced: a REGISTER that only renews a binding (new CSeq and expiry, the same
address, source, socket, path and user agent) adds no row, or at 30,000 REG/s the journal
would be the whole write load. A refresh that changes one of those adds a ``refreshed`` row
naming what changed; every row keeps the binding's last REGISTER time, so a removal row also
says when the phone was last heard.

The journal is bounded by a retention window and a row cap (``journal-retention``,
``journal-max-rows``), pruned with the expiry sweeper in bounded deletes, never per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the location package imports this module: no import back at run time
    from .location.contact import Contact

REGISTERED = "registered"
REFRESHED = "refreshed"

DEFAULT_RETENTION = 7 * 86400.0  # seconds
DEFAULT_MAX_ROWS = 1_000_000
PRUNE_INTERVAL = 60.0  # seconds between two pruning passes of the sweeper
PRUNE_CHUNK = 10_000  # rows one DELETE takes at most: a pass never holds the database long
HISTORY_LIMIT = 1_000  # rows a history reply holds at most (the newest)

# (ts, table, aor, ruid, event, addr, received, last REGISTER, detail): a journal row as stored.
JournalRow = tuple[float, str, str, str, str, str, str, float, str]
JOURNAL_COLUMNS = "ts, tbl, aor, ruid, event, addr, received, last_register, detail"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str | float) -> float:
    """Seconds in ``30``, ``90s``, ``15m``, ``1h``, ``7d`` or ``2w`` (ValueError otherwise)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(text)
        return float(text)
    match = _DURATION.fullmatch(str(text).strip().lower())
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def changed(old: Contact, new: Contact) -> str:
    """What a refresh changed that an operator cares about, in words (the location service
    journals a refresh only when one of these differs)."""
    parts = []
    for name in ("addr", "received", "socket", "path", "user_agent"):
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            if name == "path":
                before, after = ",".join(before), ",".join(after)
            parts.append(f"{name.replace('_', ' ')} {before or '-'} -> {after or '-'}")
    return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal row as the history readers (ctl, console) get it."""

    ts: float
    table: str
    aor: str
    ruid: str
    event: str
    addr: str
    received: str
    last_register: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "table": self.table, "aor": self.aor, "ruid": self.ruid, "event": self.event,
                "addr": self.addr, "received": self.received, "last_register": self.last_register,
                "detail": self.detail}


# How each event reads to an operator (ctl history, the console).
DESCRIPTIONS = {
    REGISTERED: "registered",
    REFRESHED: "refreshed (changed)",
    "unregistered": "unregistered by the device",
    "expired": "expired",
    "replaced": "replaced (single-contact)",
    "evicted": "evicted (max-contacts)",
    "admin": "removed by an operator",
    "unreachable": "removed: qualify unanswered",
    "connection-closed": "connection closed",
    "node-gone": "node gone",
    "remote": "removed elsewhere",
}


def describe(event: str) -> str:
    return DESCRIPTIONS.get(event, event)

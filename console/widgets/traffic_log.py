"""The traffic pane: a bounded log of handled requests that follows new ones or stays put, with
the security events, the operator actions (the audit trail) and the removed contacts among them."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

from registrar_core import events as ev

from ..feed import GONE, Record
from ..format import clock_time, status_tone
from .virtual_table import Cell, Column, VirtualTable


class Request(NamedTuple):
    time: float
    source: str
    method: str
    aor: str
    status: int
    reason: str
    user_agent: str
    security: str = ""  # a security event (ban, auth-failed...) rather than a request


#: Security events: (label in the Method column, what happened, tone; "alert" rows are highlighted whole).
SECURITY = {
    "ban": ("BAN", "banned: request flood", "alert"),
    "unban": ("UNBAN", "ban lifted", "ok"),
    "auth-failed": ("AUTH FAIL", "wrong credentials", "warn"),
    "user-banned": ("USER BAN", "banned: auth failures", "alert"),
    "wrong-aor": ("WRONG AOR", "403: not its own AOR", "warn"),
    "scanner": ("SCANNER", "dropped: scanner UA", "warn"),
    "audit": ("AUDIT", "", "accent"),  # an operator changed something (events.OPERATOR_ACTION)
    "audit-failed": ("AUDIT", "", "warn"),
    "gone": ("GONE", "", "dim"),  # a contact left the location service (not shown with security events only)
}

#: Why a contact went (the ``reason`` of contact.removed / contact.expired), in words.
GONE_REASONS = {
    "connection-closed": "connection closed",
    "expired": "expired",
    "unregistered": "unregistered",
    "admin": "removed by operator",
    "replaced": "replaced",
    "evicted": "evicted: max contacts",
    "unreachable": "unreachable",
    "remote": "removed elsewhere",
    "node-gone": "its node died",  # the registrar holding its connection (several share the store)
}


def security_request(e: dict[str, Any]) -> Request:
    """A ``security`` event as a traffic row (for a scanner, ``user`` is its User-Agent)."""
    kind = e["event"]
    label, what, _ = SECURITY.get(kind, (kind.upper(), kind, "warn"))
    ip = e["ip"]
    source = f"[{ip}]:{e['port']}" if ":" in ip else f"{ip}:{e['port']}"
    scanner = kind == "scanner"
    return Request(e["time"], source, label, "" if scanner else e["user"], 0, what,
                   e["user"] if scanner else "", kind)


def details_text(details: object) -> str:
    if isinstance(details, dict):
        return " ".join(f"{key}={value}" for key, value in details.items())
    return "" if details is None else str(details)


def operator_request(e: dict[str, Any]) -> Request:
    """An ``operator.action`` event (the audit trail) as a traffic row: who (actor, uid, pid) in the
    Source column, what it was done to in the AOR column, the action and its result as the response."""
    who = " ".join([e["actor"], *(f"{k} {e[k]}" for k in ("uid", "pid") if e.get(k) is not None)])
    kind = "audit" if e["result"] == "ok" else "audit-failed"
    return Request(e["time"], who, "AUDIT", e["target"] or "", 0, f"{e['action']}: {e['result']}",
                   details_text(e.get("details")), kind)


def gone_request(e: dict[str, Any]) -> Request:
    """A ``contact.removed`` / ``contact.expired`` event as a traffic row: where the contact was
    reached in the Source column, why it went as the response."""
    contact = e["contact"]
    reason = e["reason"]
    return Request(e["time"], contact["received"] or contact["addr"], "GONE", e["aor"], 0,
                   GONE_REASONS.get(reason, reason), contact["user_agent"] or "", "gone")


class TrafficLog(VirtualTable):
    """The newest ``limit`` requests; ``follow`` keeps the newest in view, ``hide_options`` drops keepalives."""

    show_cursor = False
    columns = (
        Column("time", "Time", 8),
        Column("source", "Source", 22),
        Column("method", "Method", 9),
        Column("aor", "AOR", 18, flex=3),  # up to the response: 76 cells, all on 80 columns
        Column("response", "Response", 15, flex=1),
        Column("agent", "User agent", 12, flex=2),
    )

    def __init__(self, limit: int = 5000, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.everything: deque[Request] = deque(maxlen=limit)
        self.without_options: deque[Request] = deque(maxlen=limit)
        self.security: deque[Request] = deque(maxlen=limit)
        self.follow = True
        self.hide_options = False
        self.security_only = False

    @property
    def entries(self) -> deque[Request]:
        if self.security_only:
            return self.security
        return self.without_options if self.hide_options else self.everything

    def row_count(self) -> int:
        return len(self.entries)

    def row_cells(self, index: int) -> Sequence[Cell]:
        r = self.entries[index]
        if r.security:
            tone = SECURITY.get(r.security, ("", "", "warn"))[2]
            if tone == "alert":  # the whole row is highlighted (row_tone)
                return (clock_time(r.time), r.source, (r.method, "strong"), r.aor, r.reason, r.user_agent)
            return (
                (clock_time(r.time), "dim"),
                r.source,
                (r.method, tone),
                r.aor,
                (r.reason, tone),
                (r.user_agent, "dim"),
            )
        return (
            (clock_time(r.time), "dim"),
            r.source,
            (r.method, "strong"),
            r.aor,
            (f"{r.status} {r.reason}", status_tone(r.status)),
            (r.user_agent, "dim"),
        )

    def row_key(self, index: int) -> object:
        """A request's row never changes: drawn once, kept while it scrolls (a flush adds rows)."""
        return self.entries[index]

    def row_tone(self, index: int) -> str:
        r = self.entries[index]
        return "alert" if r.security and SECURITY.get(r.security, ("", "", ""))[2] == "alert" else ""

    def append(self, events: list[dict[str, Any] | Record]) -> None:
        """Add ``request.handled``, ``security``, ``operator.action`` and contact removal events, oldest first."""
        before, added = len(self.entries), 0
        for e in events:
            gone = False
            if not isinstance(e, dict):  # a compact request.handled record (feed.Record)
                request = Request(e[1], e[4], e[2], e[3], e[5], e[6], e[7])
            elif e["kind"] in GONE:
                gone = True
                request = gone_request(e)
            elif e["kind"] in (ev.SECURITY, ev.OPERATOR_ACTION):
                request = security_request(e) if e["kind"] == ev.SECURITY else operator_request(e)
                self.security.append(request)
            else:
                request = Request(e["time"], e["source"], e["method"], e["aor"], e["status"], e["reason"],
                                  e["user_agent"])
            self.everything.append(request)
            if request.method != "OPTIONS":
                self.without_options.append(request)
            if (request.security and not gone) or not (
                    self.security_only or (self.hide_options and request.method == "OPTIONS")):
                added += 1
        self._redraw(dropped=before + added - len(self.entries))

    def _redraw(self, dropped: int = 0) -> None:
        if self.follow:
            self.rows_changed(self.row_count() - 1)
            self.scroll_end(animate=False, force=True, x_axis=False)
        else:
            # Stay on the same requests while the oldest fall off the front.
            self.scroll_to(y=max(0, self.scroll_y - dropped), animate=False, force=True)
            self.rows_changed()
        self.set_title(self._title())

    def _title(self) -> str:
        follow = "following" if self.follow else "scrolled back (End follows)"
        if self.security_only:
            return (f"Traffic · security events and operator actions only (e shows all) · {len(self.entries):,} of the last "
                    f"{self.security.maxlen:,} · {follow}")
        options = "OPTIONS hidden" if self.hide_options else "OPTIONS shown"
        return f"Traffic · {len(self.entries):,} of the last {self.everything.maxlen:,} · {follow} · {options}"

    def set_follow(self, follow: bool) -> None:
        self.follow = follow
        self._redraw()

    def set_hide_options(self, hide: bool) -> None:
        self.hide_options = hide
        self._redraw()

    def set_security_only(self, only: bool) -> None:
        self.security_only = only
        self._redraw()

    # Moving in a log scrolls it; moving up stops following, End follows again.
    def action_cursor(self, delta: int) -> None:
        self._scroll_by(delta)

    def action_page(self, direction: int) -> None:
        self._scroll_by(direction * self._page_size())

    def action_edge(self, end: int) -> None:
        if end:
            self.set_follow(True)
        else:
            self._stop_following()
            self.scroll_home(animate=False, force=True)

    def on_mouse_scroll_up(self) -> None:
        self._stop_following()

    def _scroll_by(self, delta: int) -> None:
        if delta < 0:
            self._stop_following()
        self.scroll_to(y=max(0, self.scroll_y + delta), animate=False, force=True)

    def _stop_following(self) -> None:
        if self.follow:
            self.follow = False
            self.set_title(self._title())

"""The contacts pane: every binding of the highlighted AOR, in lookup (q) order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.cells import cell_len

from registrar_core.events import CONTACT_REACHABILITY, RECORD_AOR, expanded

from ..format import ADDRESS_WIDTH, countdown, short_address
from ..feed import Record
from ..model import ADDED, REMOVED
from .virtual_table import Cell, Column, VirtualTable, text_of

Contact = dict[str, Any]
STATE_STYLE = {"reachable": "ok", "unreachable": "error", "unknown": "dim"}  # VirtualTable tones
FLAPPING = "↯"  # after the state of a flapping contact (qualify-flap-changes within qualify-flap-window)


def rtt_text(rtt_ms: float | None) -> str:
    return "" if rtt_ms is None else f"{rtt_ms:.1f}"


def lookup_order(contact: Contact) -> tuple[float, float]:
    """Highest q first, newest first among equals: the order a call would try them."""
    q = 1.0 if contact["q"] is None else contact["q"]
    return (-q, -contact["modified"])


def instance_label(contact: Contact) -> str:
    instance = contact["instance"].strip('"<>')
    return f"{contact['regid']} {instance}" if contact["regid"] else instance


def flow_label(contact: Contact) -> str:
    """``conn N``: the connection (TCP, TLS, WS) replies and requests to it go through, as `ctl dump`'s FLOW."""
    return "" if contact.get("conid") is None else f"conn {contact['conid']}"


# The registrar holding the contact's flow: shown only when several share the database.
NODE_COLUMN = Column("node", "Node", 12, fit=True)


class ContactsTable(VirtualTable):
    """The full records of one AOR's contacts, kept live from the event stream."""

    columns: Sequence[Column] = (  # sized to the contacts shown (fit: at most this wide); addresses always whole
        Column("addr", "Contact", 48, flex=3, fit=True),
        Column("state", "State", 11, fit=True),
        Column("rtt", "RTT ms", 7, right=True, fit=True),
        Column("expires", "Expires", 7, right=True),
        Column("q", "q", 3, right=True),
        Column("agent", "User agent", 32, flex=2, fit=True),
        Column("received", "Received", ADDRESS_WIDTH, fit=True),
        Column("flow", "Flow", 10, fit=True),  # the connection a TCP/TLS/WS contact is reached through
        Column("path", "Path", 32, flex=1, fit=True),
        Column("callid", "Call-ID", 24, fit=True),
        Column("cseq", "CSeq", 6, right=True, fit=True),
        Column("instance", "reg-id instance", 24, fit=True),  # whole in the detail view
        Column("socket", "Socket", ADDRESS_WIDTH, fit=True),
        Column("ruid", "ruid", 24, fit=True),
    )
    MEASURED = 200  # rows measured for the column widths (an AOR rarely has more contacts)

    def __init__(self, clock: Callable[[], float], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.clock = clock
        self.aor: str | None = None
        self.contacts: list[Contact] = []
        self.several_nodes = False

    def show_nodes(self, several: bool) -> None:
        """The Node column (third, after State) while several registrars share the database."""
        if several != self.several_nodes:
            self.several_nodes = several
            base = type(self).columns
            self.columns = (*base[:2], NODE_COLUMN, *base[2:]) if several else base
            self._layout_columns(self.scrollable_content_region.width)
            self.refresh()

    def row_count(self) -> int:
        return len(self.contacts)

    def cursor_key(self) -> str | None:
        return self.contacts[self.cursor]["ruid"] if self.contacts else None

    @property
    def cursor_contact(self) -> Contact | None:
        return self.contacts[self.cursor] if self.contacts else None

    def contact(self, ruid: str) -> Contact | None:
        return next((c for c in self.contacts if c["ruid"] == ruid), None)

    def row_cells(self, index: int) -> Sequence[Cell]:
        c = self.contacts[index]
        state = c.get("state", "unknown")
        node = (c.get("node", ""),) if self.several_nodes else ()
        return (
            (c["addr"], "error") if state == "unreachable" else c["addr"],
            (f"{state} {FLAPPING}", "warn") if c.get("flapping") else (state, STATE_STYLE.get(state, "dim")),
            *node,
            rtt_text(c.get("rtt_ms")),
            countdown(c["expires_at"], self.clock()),
            "" if c["q"] is None else f"{c['q']:g}",
            c["user_agent"],
            short_address(c["received"]),
            flow_label(c),
            ", ".join(c["path"]),
            (c["callid"], "dim"),
            str(c["cseq"]),
            instance_label(c),
            (short_address(c["socket"]), "dim"),
            (c["ruid"], "dim"),
        )

    def content_widths(self) -> list[int]:
        rows = [self.row_cells(i) for i in range(min(len(self.contacts), self.MEASURED))]
        return [max((cell_len(text_of(row[i])) for row in rows), default=0) for i in range(len(self.columns))]

    # -- updating -----------------------------------------------------------------------
    def show(self, aor: str | None, contacts: Iterable[Contact]) -> None:
        """Show ``aor`` (a ``show`` reply's contacts); the cursor stays on its contact if it can."""
        same = aor == self.aor
        keep = self.cursor_key() if same else None
        self.aor = aor
        self._set(list(contacts), keep, 0 if not same else None)

    def apply(self, events: Iterable[dict[str, Any] | Record]) -> bool:
        """Apply the contact events of the AOR shown. Returns whether a contact came compact
        (only what the AOR table needs: events.CompactSubscription): then ask ``show`` for the rest."""
        by_ruid = {c["ruid"]: c for c in self.contacts}
        changed = incomplete = False
        for event in events:
            if not isinstance(event, dict):  # a compact record (feed.Record): taken apart only for this AOR
                if event[RECORD_AOR] != self.aor:
                    continue
                event = expanded(event)
            if event.get("aor") != self.aor or event.get("table", "location") != "location":
                continue
            if event["kind"] in ADDED:
                old = by_ruid.get(event["ruid"])
                contact = event["contact"]
                if old is None or old["modified"] <= contact["modified"]:
                    if "addr" not in contact:  # compact: what it has goes in now, the rest follows
                        incomplete = True
                        if old is None:
                            continue
                        by_ruid[event["ruid"]] = {**old, **contact}
                    else:
                        kept = {"state": old.get("state", "unknown"), "rtt_ms": old.get("rtt_ms"),
                                "flapping": old.get("flapping", False)} if old else {}
                        by_ruid[event["ruid"]] = {**contact, **kept}
                    changed = True
            elif event["kind"] == CONTACT_REACHABILITY:
                old = by_ruid.get(event["ruid"])
                if old is not None:
                    by_ruid[event["ruid"]] = {**old, "state": event["state"], "rtt_ms": event["rtt_ms"],
                                              "flapping": event.get("flapping", False)}
                    changed = True
            elif event["kind"] in REMOVED:
                changed |= by_ruid.pop(event["ruid"], None) is not None
        if changed:
            self._set(list(by_ruid.values()), self.cursor_key(), None)
        return incomplete

    def forget(self, ruids: set[str]) -> None:
        kept = [c for c in self.contacts if c["ruid"] not in ruids]
        if len(kept) != len(self.contacts):
            self._set(kept, self.cursor_key(), None)

    def _set(self, contacts: list[Contact], keep: str | None, cursor: int | None) -> None:
        contacts.sort(key=lookup_order)
        self.contacts = contacts
        if keep is not None:
            cursor = next((i for i, c in enumerate(contacts) if c["ruid"] == keep), cursor)
        self._layout_columns(self.scrollable_content_region.width)
        self.rows_changed(cursor)

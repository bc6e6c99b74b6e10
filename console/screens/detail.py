"""The full record of one contact: every $ulc attribute, with a live expiry countdown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from registrar_core.control import RpcError

from ..actions import bindings
from ..format import countdown, duration, wall_time
from ..widgets.footer import KeyBar
from ..widgets.reachability import ReachabilityPanel
from .history import RELOAD_SECONDS, HistoryScreen, Loader, history_table

Contact = dict[str, Any]


def contact_table(contact: Contact, now: float, gone: bool) -> Table:
    """Two columns, attribute and value, in the order an operator reads them."""
    c = contact
    left, tone = countdown(c["expires_at"], now)
    expires = Text("no longer registered", style="bold red") if gone else Text.assemble(
        (left, {"warn": "yellow", "error": "red"}.get(tone, "bold")), f"  (until {wall_time(c['expires_at'])})")
    rows: list[tuple[str, str | Text]] = [
        ("Contact", Text(c["addr"], style="bold")),
        ("AOR", c["aor"]),
        ("Expires", expires),
        ("q", "(none: 1.0)" if c["q"] is None else f"{c['q']:g}"),
        ("Contact params", c["params"] or "—"),
        ("Path", "\n".join(c["path"]) or "—"),
        ("Received from", c["received"]),
        ("Socket", c["socket"]),
        ("User agent", c["user_agent"] or "—"),
        ("Methods (Allow)", c["methods"] or "—"),
        ("Call-ID", c["callid"]),
        ("CSeq", str(c["cseq"])),
        ("Instance", c["instance"] or "—"),
        ("reg-id", str(c["regid"]) if c["regid"] else "—"),
        ("TCP connection", "—" if c["conid"] is None else str(c["conid"])),
        ("Flags / cflags", f"{c['flags']} / {c['cflags']}"),
        ("Last REGISTER", f"{wall_time(c['modified'])}  ({duration(now - c['modified'])} ago)"),
        ("Domain", c["domain"]),
        ("AOR hash", str(c["aorhash"])),
        ("ruid", c["ruid"]),
    ]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", justify="right", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    return table


def contact_header(contact: Contact, now: float) -> str:
    """The Contact header line of this binding, as in the registrar's 200 OK."""
    q = "" if contact["q"] is None else f";q={contact['q']:g}"
    left = max(0, int(contact["expires_at"] - now + 0.5))
    return f"Contact: <{contact['addr']}>{contact['params']};expires={left}{q}"


class ContactDetailScreen(Screen[bool]):
    """Follows the contact through the main screen's contacts pane, once a second.

    Dismissed with True when the operator asks to unregister the contact. Below the record,
    the AOR's recent history (the contact journal, ``H`` on the main screen shows all of it).
    """

    BINDINGS = bindings("detail")
    RECENT = 8  # journal rows shown under the record

    def __init__(self, contact: Contact, current: Callable[[str], Contact | None],
                 clock: Callable[[], float], position: str, read_only: bool, history: Loader,
                 shown: Callable[[Contact], Awaitable[Contact | None]] | None = None) -> None:
        super().__init__()
        self.read_only = read_only
        self.contact = contact
        self.current = current
        self.clock = clock
        self.position = position
        self.history = history
        self.gone = False
        self.shown = shown  # the contact as `show` gives it (with its reachability history)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail") as scroll:
            scroll.border_title = f"Contact {self.position} of {self.contact['aor']}"
            yield Static(id="record")
            yield Static(id="recent")
        binding = Static(id="binding")
        binding.border_title = "As the registrar returns it in a 200 OK to REGISTER"
        yield binding
        yield ReachabilityPanel(id="reachability")
        yield KeyBar()

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(1, self.redraw)
        self.load_history()
        self.set_interval(RELOAD_SECONDS, self.load_history)
        self.reachability()
        self.set_interval(2, self.reachability)

    @work(exclusive=True, group="history", exit_on_error=False)
    async def load_history(self) -> None:
        recent = self.query_one("#recent", Static)
        recent.border_title = f"Recent history of {self.contact['aor']} (H: all of it)"
        try:
            entries = (await self.history(self.contact["aor"]))["entries"]
        except (RpcError, ConnectionError) as exc:
            recent.update(Text(f"history unavailable: {exc}", style="red"))
            return
        recent.update(history_table(entries[-self.RECENT:], ruid=self.contact["ruid"]))

    @work(exclusive=True, group="reachability", exit_on_error=False)
    async def reachability(self) -> None:
        """Ask the registrar for the contact's reachability history (qualify keeps it, not the feed)."""
        latest = await self.shown(self.contact) if self.shown is not None and not self.gone else None
        panel = self.query_one("#reachability", ReachabilityPanel)
        panel.show(latest or self.contact, (latest or {}).get("history"))

    def redraw(self) -> None:
        latest = self.current(self.contact["ruid"])
        if latest is None:
            self.gone = True
        else:
            self.contact = latest
        now = self.clock()
        self.query_one("#record", Static).update(contact_table(self.contact, now, self.gone))
        self.query_one("#binding", Static).update(Text(contact_header(self.contact, now), style="bold"))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "unregister" and (self.gone or self.read_only):
            return None
        return True

    def action_close(self) -> None:
        self.dismiss(False)

    def action_history(self) -> None:
        self.app.push_screen(HistoryScreen(self.contact["aor"], self.history))

    def action_unregister(self) -> None:
        self.dismiss(True)

"""The help screen, built from the action table like the bindings and the palette."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..actions import ACTIONS, bindings, key_names

COLUMNS = (("Move", "AORs", "Contacts", "Detail"), ("Policy", "Subscribers", "Live", "App"))

LEGEND = (
    ("Header", "listen addresses · auth and subscribers · policy · security counters · load and REG/s"),
    ("AOR table", "Cts contacts · User agent of the newest · Expires the soonest · Updated since the newest REGISTER"),
    ("", "Sort ▲ ascending in what the column shows (Updated: newest first), ▼ descending"),
    ("", "Policy [b]single[/]/[b]multi[/]: an AOR override; dim [dim]single[/]: inherited from the global policy"),
    ("Contacts", "lookup order (highest q, then newest) · Expires yellow under a minute, red when due"),
    ("Traffic", "every request answered, newest last · 2xx green · 3xx-4xx yellow · 5xx red"),
    ("", "security events too: [reverse]BAN[/] rows highlighted, failed authentication and scanners yellow"),
    ("", "AUDIT rows: what an operator changed (console, ctl, api; uid, pid), failures yellow"),
    ("Mouse", "click a row to highlight it, a header to sort; double-click opens the contact detail"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = bindings("help")

    def __init__(self, read_only: bool) -> None:
        super().__init__()
        self.read_only = read_only

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help") as scroll:
            scroll.border_title = "sipconsole keys" + (" · read-only: destructive keys are off" if self.read_only else "")
            scroll.border_subtitle = "Esc closes"
            yield Static(self._keys(), id="keys")
            yield Static(self._legend(), id="legend")

    def _keys(self) -> Table:
        layout = Table.grid(padding=(0, 4), expand=True)
        layout.add_column(ratio=1)
        layout.add_column(ratio=1)
        layout.add_row(*(Group(*(self._group(name) for name in names)) for names in COLUMNS))
        return layout

    def _group(self, name: str) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True, min_width=9)
        table.add_column()
        table.add_row(Text(name, style="bold underline"), "")
        for action in ACTIONS:
            if action.group == name:
                off = action.destructive and self.read_only
                table.add_row(key_names(self.app, action), Text(action.help, style="dim strike" if off else ""))
        table.add_row("", "")
        return table

    def _legend(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True, min_width=9)
        table.add_column()
        for name, text in LEGEND:
            table.add_row(name, Text.from_markup(text))
        return table

    def action_close(self) -> None:
        self.dismiss()

"""Reg event watchers: who is subscribed (SUBSCRIBE Event: reg, RFC 3680) to which AOR's
registrations, from where, and for how long yet. Read through the core's ``subscriptions``
method once a second, as ``sipconsole ctl subscriptions`` prints it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.markup import escape
from textual.screen import Screen

from registrar_core.control import RpcError

from ..actions import bindings
from ..format import countdown
from ..widgets.footer import KeyBar
from ..widgets.virtual_table import Cell, Column, VirtualTable
from .subscribers import problem


class WatcherTable(VirtualTable):
    """One row per subscription, by AOR then watcher."""

    columns = (
        Column("aor", "AOR", 24, flex=2),
        Column("watcher", "Watcher", 24, flex=2),
        Column("source", "From", 21, fit=True),
        Column("expires", "Expires", 7, right=True),
        Column("version", "Version", 7, right=True),
    )

    def __init__(self, clock: Callable[[], float], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.clock = clock
        self.subscriptions: list[dict[str, Any]] = []

    def row_count(self) -> int:
        return len(self.subscriptions)

    def cursor_key(self) -> str | None:
        if not self.subscriptions:
            return None
        sub = self.subscriptions[self.cursor]
        return f"{sub['aor']} {sub['call_id']}"

    def row_cells(self, index: int) -> Sequence[Cell]:
        sub = self.subscriptions[index]
        return ((sub["aor"], "strong"), sub["watcher"], (sub["source"], "dim"),
                countdown(sub["expires_at"], self.clock()), str(sub["version"]))


class WatchersScreen(Screen[None]):
    """The reg event subscriptions, read again once a second."""

    BINDINGS = bindings("watchers")

    def __init__(self, client: Any, clock: Callable[[], float]) -> None:
        super().__init__()
        self.client = client
        self.clock = clock

    def compose(self) -> ComposeResult:
        yield WatcherTable(self.clock, id="watchers")
        yield KeyBar()

    @property
    def table(self) -> WatcherTable:
        return self.query_one(WatcherTable)

    def on_mount(self) -> None:
        self.table.border_title = "Registration watchers (reg event) · loading…"
        self.table.focus()
        self.reload()
        self.set_interval(1, self.reload)

    @work(exclusive=True, group="watchers", exit_on_error=False)
    async def reload(self) -> None:
        try:
            subscriptions = (await self.client.call("subscriptions"))["subscriptions"]
        except (RpcError, ConnectionError) as exc:
            self.notify(escape(problem(exc)), severity="error", title="Watchers")
            return
        table = self.table
        table.subscriptions = subscriptions
        aors = len({s["aor"] for s in subscriptions})
        table.border_title = (f"Registration watchers (reg event) · {len(subscriptions)} on {aors} AORs"
                              if subscriptions else "Registration watchers (reg event) · none: nobody "
                              "has subscribed to an AOR's registrations")
        table.rows_changed()

    def action_close(self) -> None:
        self.dismiss(None)

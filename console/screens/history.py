"""One AOR's contact journal: why each of its contacts came, changed and went (``ctl history``)."""

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
from registrar_core.journal import describe

from ..actions import bindings
from ..format import wall_time
from ..widgets.footer import KeyBar

Entry = dict[str, Any]
Loader = Callable[[str], Awaitable[dict[str, Any]]]
RELOAD_SECONDS = 2.0  # while the screen is open: a query on the control socket, nothing per REGISTER

# Events that a phone's owner would call trouble, and the ones that are routine.
_TONES = {"registered": "green", "refreshed": "cyan", "unregistered": "", "expired": "yellow",
          "unreachable": "yellow", "connection-closed": "yellow", "node-gone": "red", "admin": "magenta",
          "replaced": "yellow", "evicted": "yellow"}


def history_table(entries: list[Entry], *, ruid: str | None = None) -> Table | Text:
    """Time, event in words, contact, source and detail, oldest first; rows of ``ruid`` (the
    contact shown beside) in bold."""
    if not entries:
        return Text("nothing journaled for this AOR", style="dim")
    table = Table(box=None, padding=(0, 2, 0, 0), header_style="bold dim")
    for name in ("Time", "Event", "Contact", "Received", "Detail"):
        table.add_column(name, no_wrap=name != "Detail", overflow="fold" if name == "Detail" else "ellipsis")
    for e in entries:
        style = "bold" if ruid is not None and e["ruid"] == ruid else ""
        table.add_row(wall_time(e["ts"]), Text(describe(e["event"]), style=_TONES.get(e["event"], "")),
                      e["addr"], e["received"], e["detail"] or "", style=style)
    return table


class HistoryScreen(Screen[None]):
    """The journal of one AOR, newest last, reloaded while it is open (embedded and attached
    alike: through the ``history`` control method)."""

    BINDINGS = bindings("history")

    def __init__(self, aor: str, load: Loader) -> None:
        super().__init__()
        self.aor = aor
        self.load = load
        self.entries: list[Entry] = []

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="history") as scroll:
            scroll.border_title = f"History of {self.aor}"
            scroll.border_subtitle = "the contact journal: why contacts came and went"
            yield Static(id="journal")
        yield KeyBar()

    def on_mount(self) -> None:
        self.reload()
        self.set_interval(RELOAD_SECONDS, self.reload)

    @work(exclusive=True, group="history", exit_on_error=False)
    async def reload(self) -> None:
        try:
            self.entries = (await self.load(self.aor))["entries"]
        except (RpcError, ConnectionError) as exc:
            self.query_one("#journal", Static).update(Text(f"history unavailable: {exc}", style="red"))
            return
        view = self.query_one("#history", VerticalScroll)
        at_end = view.scroll_y >= view.max_scroll_y
        self.query_one("#journal", Static).update(history_table(self.entries))
        if at_end:  # follow new rows unless the operator scrolled up
            view.call_after_refresh(view.scroll_end, animate=False)

    def action_close(self) -> None:
        self.dismiss()

"""The two-line status bar: where the registrar listens, its policy, how busy it is.

One widget that renders both lines itself, so an update is a repaint of two lines and
never a new layout of the screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.content import Content
from textual.markup import escape
from textual.widget import Widget

from ..format import count, duration, sparkline

SPARK_WIDTH = 40  # 120 s of REGISTERs/s, three seconds a bar


@dataclass(slots=True)
class Flags:
    """The console's own state, shown as badges."""

    mode: str = "embedded"
    read_only: bool = False
    paused: bool = False
    queued: int = 0
    trouble: str | None = None  # the registrar does not answer


def on_off(value: bool) -> str:
    return "[b $text-warning]on[/]" if value else "[b]off[/]"


def spread(left: str, right: str, width: int) -> Content:
    """One line: ``left`` markup at the start, ``right`` at the end; ``left`` gives way."""
    start, end = Content.from_markup(left), Content.from_markup(right)
    room = width - end.cell_length - 2
    if start.cell_length > room:
        start = start.truncate(max(0, room), ellipsis=True)
    return Content.assemble(start, " " * max(2, width - start.cell_length - end.cell_length), end)


class StatusBar(Widget):
    """Header of the main screen, fed by the ``stats`` method once a second."""

    DEFAULT_CSS = """
    StatusBar {
        height: 2;
        padding: 0 1;
        background: $panel;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.flags = Flags()
        self.stats: dict[str, Any] | None = None
        self.policy = ""

    def show_stats(self, stats: dict[str, Any]) -> None:
        self.stats = stats
        self.refresh()

    def show_policy(self, single_contact: bool, overrides: int, caller_check: bool,
                    storage_error: str | None) -> None:
        extra = f" [$text-muted](+{overrides} AOR override{'s' * (overrides != 1)})[/]" if overrides else ""
        storage = ("[b $text-error]STORAGE FAULT[/] " + escape(storage_error) if storage_error
                   else "storage [$text-success]ok[/]")
        policy = (f"single-contact {on_off(single_contact)}{extra} · caller-check {on_off(caller_check)}"
                  f" · {storage}")
        if policy != self.policy:
            self.policy = policy
            self.refresh()

    def set_flags(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.flags, name, value)
        self.refresh()

    def render(self) -> Content:
        f, s = self.flags, self.stats
        where = f"[b $text-accent]sipconsole[/] [$text-muted]{f.mode}[/]"
        load = "[$text-muted]waiting for the registrar…[/]"
        rate = ""
        if s is not None:
            where += f" · {escape(' '.join(s['listening']))} · [$text-muted]up[/] {duration(s['uptime'])}"
            load = (f"AORs [b]{count(s['registered_users'])}[/] · contacts [b]{count(s['location_contacts'])}[/]"
                    f" · accepted {count(s['accepted_regs'])} · rejected {count(s['rejected_regs'])}"
                    f" · expired {count(s['expired_contacts'])}")
            series = s["register_rate"]
            rate = (f"REG/s [b]{count(series[-1] if series else 0)}[/] "
                    f"[$text-accent on $boost]{sparkline(series, SPARK_WIDTH)}[/] [$text-muted]2 min[/]")
        badges = []
        if f.trouble:
            badges.append(f"[b $text-error]{escape(f.trouble)}[/]")
        if f.paused:
            badges.append(f"[b $text-warning]PAUSED[/] {count(f.queued)} queued")
        if f.read_only:
            badges.append("[b $text-warning]READ-ONLY[/]")
        width = self.content_region.width
        state = " · ".join([*badges, self.policy] if self.policy else badges)
        return Content("\n").join([spread(where, state, width), spread(load, rate, width)])

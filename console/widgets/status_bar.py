"""The three-line status bar: where the registrar listens and its policy; authentication and
security; how busy it is.

One widget that renders its lines itself, so an update is a repaint of three lines and
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
LISTED_BANS = 2  # banned addresses named in the header; the traffic pane has them all


@dataclass(slots=True)
class Flags:
    """The console's own state, shown as badges."""

    mode: str = "embedded"
    read_only: bool = False
    paused: bool = False
    queued: int = 0
    trouble: str | None = None  # the registrar does not answer (a poll timed out)
    gone: str | None = None  # the registrar closed the connection (attach): stays until reconnected
    loading: str | None = None  # "loading 40,000 of 100,000 AORs", "reloading: events lost"


def on_off(value: bool) -> str:
    return "[b $text-warning]on[/]" if value else "[b]off[/]"


def spread(left: str, right: str, width: int) -> Content:
    """One line: ``left`` markup at the start, ``right`` at the end; ``left`` gives way."""
    start, end = Content.from_markup(left), Content.from_markup(right)
    room = width - end.cell_length - 2
    if start.cell_length > room:
        start = start.truncate(max(0, room), ellipsis=True)
    return Content.assemble(start, " " * max(2, width - start.cell_length - end.cell_length), end)


def security_text(stats: dict[str, Any]) -> str:
    """Banned addresses (highlighted while any), then the counters of security events."""
    banned = stats.get("banned_ips", [])
    events = stats.get("security", {})
    if banned:
        names = ", ".join(banned[:LISTED_BANS]) + (" …" if len(banned) > LISTED_BANS else "")
        bans = f"[b $text-error]banned IPs[/] [b reverse $text-error] {count(len(banned))} [/] {escape(names)}"
    else:
        bans = "banned IPs [b]0[/]"
    parts = [bans]
    failed = events.get("auth-failed", 0)
    parts.append(f"failed auth [b{' $text-warning' if failed else ''}]{count(failed)}[/]")
    for key, label in (("user-banned", "users banned"), ("wrong-aor", "wrong AOR")):
        if events.get(key):
            parts.append(f"{label} [b $text-warning]{count(events[key])}[/]")
    parts.append(f"scanners [b]{count(events.get('scanner', 0))}[/]")
    return " · ".join(parts)


class StatusBar(Widget):
    """Header of the main screen, fed by the ``stats`` method once a second."""

    DEFAULT_CSS = """
    StatusBar {
        height: 3;
        padding: 0 1;
        background: $panel;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.flags = Flags()
        self.stats: dict[str, Any] | None = None
        self.policy = ""
        self.storage_error: str | None = None

    def show_stats(self, stats: dict[str, Any]) -> None:
        self.stats = stats
        self.refresh()

    def show_policy(self, single_contact: bool, overrides: int, caller_check: bool,
                    storage_error: str | None) -> None:
        extra = f" [$text-muted](+{overrides} AOR override{'s' * (overrides != 1)})[/]" if overrides else ""
        policy = f"single-contact {on_off(single_contact)}{extra} · caller-check {on_off(caller_check)}"
        if (policy, storage_error) != (self.policy, self.storage_error):
            self.policy, self.storage_error = policy, storage_error
            self.refresh()

    def set_flags(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.flags, name, value)
        self.refresh()

    def _auth(self) -> str:
        s = self.stats
        if s is None or "auth" not in s:
            return ""
        if not s["auth"]:
            return "auth [b $text-warning]OFF[/] [$text-muted](anyone may register: --auth off)[/]"
        n = s["subscribers"]
        subscribers = (f"[b]{count(n)}[/] subscriber{'s' * (n != 1)}" if n
                       else "[b reverse $text-error] no subscribers [/]")
        return f"auth [b $text-success]on[/] · {subscribers}"

    def render(self) -> Content:
        f, s = self.flags, self.stats
        where = f"[b $text-accent]sipconsole[/] [$text-muted]{f.mode}[/]"
        load = "[$text-muted]waiting for the registrar…[/]"
        rate = security = ""
        if s is not None:
            where += f" · {escape(' '.join(s['listening']))} · [$text-muted]up[/] {duration(s['uptime'])}"
            load = (f"AORs [b]{count(s['registered_users'])}[/] · contacts [b]{count(s['location_contacts'])}[/]"
                    f" · accepted {count(s['accepted_regs'])} · rejected {count(s['rejected_regs'])}"
                    f" · expired {count(s['expired_contacts'])}")
            series = s["register_rate"]
            rate = (f"REG/s [b]{count(series[-1] if series else 0)}[/] "
                    f"[$text-accent on $boost]{sparkline(series, SPARK_WIDTH)}[/] [$text-muted]2 min[/]")
            security = security_text(s)
        badges = []
        if f.gone:
            badges.append(f"[b reverse $text-error] REGISTRAR GONE [/] [$text-error]{escape(f.gone)}[/]")
        elif f.trouble:
            badges.append(f"[b $text-error]{escape(f.trouble)}[/]")
        if self.storage_error:
            badges.append(f"[b reverse $text-error] STORAGE FAULT [/] [$text-error]{escape(self.storage_error)}[/]")
        if f.loading:
            badges.append(f"[b $text-accent]{escape(f.loading)}[/]")
        if f.paused:
            badges.append(f"[b $text-warning]PAUSED[/] {count(f.queued)} queued")
        if f.read_only:
            badges.append("[b $text-warning]READ-ONLY[/]")
        if self.policy:
            badges.append(self.policy)
        if not self.storage_error and s is not None:
            badges.append("storage [$text-success]ok[/]")
        width = self.content_region.width
        return Content("\n").join([spread(where, " · ".join(badges), width), spread(self._auth(), security, width),
                                   spread(load, rate, width)])

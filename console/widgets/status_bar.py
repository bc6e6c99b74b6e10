"""The three-line status bar: where the registrar listens and the state that needs attention;
authentication, policy and security; how busy it is. At 80 columns the least important parts
give way (see :func:`fitted`), never the listen address, the counts, REG/s, auth or storage.
Several registrars sharing one database add a line each: name, up or down, address, REG/s.

One widget that renders its lines itself, so an update is a repaint of three lines and
never a new layout of the screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from textual.content import Content
from textual.markup import escape
from textual.widget import Widget

from ..format import count, duration, sparkline

SPARK_WIDTH = 40  # 120 s of REGISTERs/s, three seconds a bar (half as many bars below WIDE)
WIDE = 160  # columns from which the header has room for everything
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
    retry: str | None = None  # while gone: "reconnecting in 4 s"


def on_off(value: bool) -> str:
    return "[b $text-warning]on[/]" if value else "[b]off[/]"


class Part(NamedTuple):
    """A piece of a header line, and how soon it gives way when the line is too narrow (0: never;
    the highest rank goes first, the rightmost among equals)."""

    markup: str
    rank: int
    glue: str = " · "  # what separates it from the part before


def fitted(left: list[Part], right: list[Part], width: int) -> Content:
    """One line: ``left`` at the start, ``right`` at the end, separated by `` · ``; the least
    important parts are left out until the line fits, then ``left`` is cut as a last resort."""
    def join(parts: list[Part]) -> Content:
        return Content.from_markup("".join(p.glue * bool(i) + p.markup for i, p in enumerate(parts)))

    left, right = left[:], right[:]
    while True:
        start, end = join(left), join(right)
        if start.cell_length + end.cell_length + 2 <= width:
            break
        droppable = [(p.rank, i, side) for side in (left, right) for i, p in enumerate(side) if p.rank]
        if not droppable:
            break
        _, i, side = max(droppable, key=lambda d: (d[0], d[2] is right, d[1]))
        del side[i]
    if end.cell_length > width:  # what must stay does not fit at all: it is cut too, never wrapped
        end = end.truncate(width, ellipsis=True)
    room = width - end.cell_length - 2
    if start.cell_length > room:
        start = start.truncate(max(0, room), ellipsis=True)
    return Content.assemble(start, " " * max(0, width - start.cell_length - end.cell_length), end)


def listen_text(addresses: list[str]) -> str:
    """``udp:127.0.0.1:5060 tcp:127.0.0.1:5060`` condensed to ``udp+tcp 127.0.0.1:5060``."""
    transports: dict[str, list[str]] = {}
    for address in addresses:
        transport, _, where = address.partition(":")
        transports.setdefault(where, []).append(transport)
    return " ".join(f"{'+'.join(names)} {where}" for where, names in transports.items())


def security_parts(stats: dict[str, Any]) -> list[Part]:
    """Banned addresses (highlighted, and kept, while any), then the counters of security events."""
    banned = stats.get("banned_ips", [])
    events = stats.get("security", {})
    if banned:
        names = ", ".join(banned[:LISTED_BANS]) + (" …" if len(banned) > LISTED_BANS else "")
        parts = [Part(f"[b $text-error]banned IPs[/] [b reverse $text-error] {count(len(banned))} [/] {escape(names)}", 0)]
    else:
        parts = [Part("banned IPs [b]0[/]", 3)]
    failed = events.get("auth-failed", 0)
    parts.append(Part(f"failed auth [b{' $text-warning' if failed else ''}]{count(failed)}[/]", 2 if failed else 4))
    for key, label in (("user-banned", "users banned"), ("wrong-aor", "wrong AOR")):
        if events.get(key):
            parts.append(Part(f"{label} [b $text-warning]{count(events[key])}[/]", 2))
    parts.append(Part(f"scanners [b]{count(events.get('scanner', 0))}[/]", 4))
    return parts


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
        self.policy_parts: list[Part] = []
        self.storage_error: str | None = None
        self.nodes: list[dict[str, Any]] = []  # the ``nodes`` reply, when more than one

    def show_nodes(self, nodes: list[dict[str, Any]]) -> None:
        """The registrars sharing the location table; a line each when there are several
        (one alone is the first line already: the single-node header stays three lines)."""
        shown = nodes if len(nodes) > 1 else []
        if len(shown) != len(self.nodes):
            self.styles.height = 3 + len(shown)
        if shown != self.nodes:
            self.nodes = shown
            self.refresh()

    def show_stats(self, stats: dict[str, Any]) -> None:
        self.stats = stats
        self.refresh()

    def show_policy(self, single_contact: bool, overrides: int, caller_check: bool,
                    storage_error: str | None) -> None:
        extra = f" [$text-muted](+{overrides} AOR override{'s' * (overrides != 1)})[/]" if overrides else ""
        parts = [Part(f"single-contact {on_off(single_contact)}{extra}", 1), Part(f"caller-check {on_off(caller_check)}", 2)]
        if (parts, storage_error) != (self.policy_parts, self.storage_error):
            self.policy_parts, self.storage_error = parts, storage_error
            self.refresh()

    @property
    def policy(self) -> str:
        return " · ".join(p.markup for p in self.policy_parts)

    def set_flags(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.flags, name, value)
        self.refresh()

    def _auth(self) -> list[Part]:
        s = self.stats
        if s is None or "auth" not in s:
            return []
        if not s["auth"]:
            return [Part("auth [b $text-warning]OFF[/]", 0), Part("[$text-muted]anyone may register (--auth off)[/]", 5)]
        n = s["subscribers"]
        subscribers = (f"[b]{count(n)}[/] subscriber{'s' * (n != 1)}" if n
                       else "[b reverse $text-error] no subscribers [/]")
        return [Part("auth [b $text-success]on[/]", 0), Part(subscribers, 0)]

    def _badges(self) -> list[Part]:
        """The console's and the registrar's state that needs attention, then storage: never left out."""
        f = self.flags
        badges = []
        if f.gone:
            retry = f" [b]{escape(f.retry)}[/]" if f.retry else ""
            badges.append(f"[b reverse $text-error] REGISTRAR GONE [/]{retry} [$text-error]{escape(f.gone)}[/]")
        elif f.trouble:
            badges.append(f"[b $text-error]{escape(f.trouble)}[/]")
        if self.storage_error:
            badges.append(f"[b reverse $text-error] STORAGE FAULT [/] [$text-error]{escape(self.storage_error)}[/]")
        elif self.stats is not None and not f.gone:  # gone: what it said last is no news
            badges.append("storage [$text-success]ok[/]")
        if f.loading:
            badges.append(f"[b $text-accent]{escape(f.loading)}[/]")
        if f.paused:
            badges.append(f"[b $text-warning]PAUSED[/] {count(f.queued)} queued")
        if f.read_only:
            badges.append("[b $text-warning]READ-ONLY[/]")
        return [Part(badge, 0) for badge in badges]

    def render(self) -> Content:
        f, s = self.flags, self.stats
        width = self.content_region.width
        where: list[Part] = [Part(f"[b $text-accent]sipconsole[/] [$text-muted]{escape(f.mode)}[/]", 5)]
        load: list[Part] = [Part("[$text-muted]waiting for the registrar…[/]", 0)]
        rate: list[Part] = []
        security: list[Part] = []
        if s is not None:
            where += [Part(escape(listen_text(s["listening"])), 0), Part(f"[$text-muted]up[/] {duration(s['uptime'])}", 3)]
            load = [Part(f"AORs [b]{count(s['registered_users'])}[/]", 0),
                    Part(f"contacts [b]{count(s['location_contacts'])}[/]", 0),
                    Part(f"accepted {count(s['accepted_regs'])}", 1), Part(f"rejected {count(s['rejected_regs'])}", 1)]
            if "challenged" in s:  # 401/407 challenges, apart from the real rejections
                load.append(Part(f"challenged {count(s['challenged'])}", 1))
            load.append(Part(f"expired {count(s['expired_contacts'])}", 3))
            series = s["register_rate"]
            bars = SPARK_WIDTH if width >= WIDE else SPARK_WIDTH // 2
            rate = [Part(f"REG/s [b]{count(series[-1] if series else 0)}[/]", 0),
                    Part(f"[$text-accent on $boost]{sparkline(series, bars)}[/] [$text-muted]2 min[/]", 2, " ")]
            security = security_parts(s)
        return Content("\n").join([fitted(where, self._badges(), width),
                                   fitted(self._auth() + self.policy_parts, security, width),
                                   fitted(load, rate, width),
                                   *(node_line(node, width) for node in self.nodes)])


def node_line(node: dict[str, Any], width: int) -> Content:
    """One registrar of those sharing the database (a ``nodes`` entry)."""
    state = "[b $text-success]up[/]" if node["up"] else "[b reverse $text-error] DOWN [/]"
    left = [Part(f"node [b]{escape(node['node'])}[/]", 0), Part(state, 0),
            Part(escape(listen_text(node["addresses"])), 1)]
    right = [Part(f"REG/s [b]{count(round(node['rate']))}[/]", 0),
             Part(f"[$text-muted]heartbeat {node['heartbeat_age']:.0f} s ago[/]", 2)]
    return fitted(left, right, width)

"""The main screen: status bar, AOR table, contacts of the highlighted AOR, and traffic.

Data flow: one worker reads the core's event stream into an :class:`EventBuffer`;
the table is loaded in pages meanwhile (and loaded again when the core reports lost
events, or after a reconnect); every quarter second :meth:`MainScreen.flush` applies
what arrived in one batch (so 1,000 REGISTERs/s cost four redraws a second, not a
thousand); once a second the countdowns are redrawn and ``stats`` is polled.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Set
from contextlib import suppress
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import Input, Static

from registrar_core import events as ev
from registrar_core.control import NOT_FOUND, RpcError

from .. import memory
from ..actions import ACTIONS, DESTRUCTIVE, bindings, key_names
from ..feed import Event, EventBuffer, Record
from ..model import Registry, read_table
from ..widgets.aor_table import AorTable
from ..widgets.contacts_table import Contact, ContactsTable
from ..widgets.footer import KeyBar
from ..widgets.status_bar import StatusBar
from ..widgets.traffic_log import TrafficLog, operator_request
from ..widgets.virtual_table import VirtualTable
from .confirm import ALTERNATIVE, ConfirmScreen, contact_list
from .detail import ContactDetailScreen
from .history import HistoryScreen
from .subscribers import SubscribersScreen, problem
from .watchers import WatchersScreen

FLUSH_SECONDS = 0.25
PAGE_PAUSE = 0.002  # between two pages of the initial load: a few loop turns for the registrar
STATS_TIMEOUT = 3.0
TRAFFIC_LIMIT = 5000
SHORT = 32  # terminal rows below which the panes shrink to fit (class -short; 80x24 must work)
RETRY_FIRST, RETRY_MAX = 0.5, 10.0  # attach: reconnect back-off, doubling
BAN_TOAST_SECONDS = 5.0  # at most one toast about bans this often (the traffic pane lists them all)
LISTED_CONTACTS = 8  # contacts named one by one in the "unregister AOR" question
SORT_COLUMNS = tuple(c.key for c in AorTable.columns if c.sortable)
DESCENDING_FIRST = frozenset({"contacts"})  # chosen, this column shows the busiest AORs first (▼)
SORT_LABELS = {"aor": "AOR", "contacts": "contacts", "agent": "user agent", "expires": "expiry",
               "updated": "last update"}


class MainScreen(Screen[None]):
    """Everything an operator watches and does, over one core client."""

    BINDINGS = bindings("main")

    def __init__(self, client: Any, *, clock: Callable[[], float], read_only: bool, mode: str) -> None:
        super().__init__()
        self.client = client
        self.clock = clock
        self.read_only = read_only
        self.mode = mode
        self.registry = Registry()
        self.buffer = EventBuffer(TRAFFIC_LIMIT)
        self.loaded = False  # the first load is complete
        self.reading = False  # a load (first or again) is running: contact events wait for it
        self.loads = 0  # completed loads (the first, and each reload)
        self.paused = False
        self._stats_now = asyncio.Event()
        self._retry_now = asyncio.Event()  # R: reconnect now, not when the back-off says
        self._ban_toast_at = -BAN_TOAST_SECONDS
        self._ask_nodes = True  # a registrar without the ``nodes`` method is asked no more

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield Static(id="notice")
        yield Input(placeholder="/ filters the AORs by substring · Enter keeps the filter · Esc clears it",
                    id="filter", compact=True)
        yield AorTable(self.registry, self.clock, id="aors")
        yield ContactsTable(self.clock, id="contacts")
        yield TrafficLog(TRAFFIC_LIMIT, id="traffic")
        yield KeyBar()

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def aors(self) -> AorTable:
        return self.query_one(AorTable)

    @property
    def contacts(self) -> ContactsTable:
        return self.query_one(ContactsTable)

    @property
    def traffic(self) -> TrafficLog:
        return self.query_one(TrafficLog)

    @property
    def notice(self) -> Static:
        return self.query_one("#notice", Static)

    # -- start: subscribe, then load ---------------------------------------------------------
    def on_mount(self) -> None:
        self.status.set_flags(mode=self.mode, read_only=self.read_only)
        self.notice.display = False
        self._hide_filter()
        self.contacts.set_title("Contacts")
        self.aors.set_title("AORs · loading the location table…")
        self.traffic.set_title(self.traffic._title())
        self.aors.focus()
        self.read_events()  # subscribes before the first page, so no change falls in between
        self.load()
        self.set_interval(FLUSH_SECONDS, self.flush)
        self.set_interval(1, self.tick)
        self.poll_stats()

    @work(group="events", exit_on_error=False)
    async def read_events(self) -> None:
        try:
            async for batch in self.client.events(compact=True, expand=False):
                self.buffer.add(batch)
        except (ConnectionError, RpcError) as exc:
            self._gone(str(exc))

    def _gone(self, why: str) -> None:
        """The registrar closed the connection: say so, stay usable, and (attached) reconnect by itself."""
        self.status.set_flags(gone=why, trouble=None, loading=None)
        again = ""
        if self._can_reconnect:
            again = f" · reconnecting by itself ({self._key('reconnect')}: now)"
            self.reconnect()
        self.notify(f"The registrar went away: {escape(why)}. The tables show what it held then{again}.",
                    severity="error", title="REGISTRAR GONE", timeout=10)
        self.refresh_bindings()

    @property
    def _can_reconnect(self) -> bool:
        return hasattr(self.client, "connect") and not self.app_embedded

    def _key(self, action: str) -> str:
        """The key(s) of a main-screen action as the footer shows them (they may be remapped)."""
        return key_names(self.app, next(a for a in ACTIONS if a.scope == "main" and a.name == action))

    @property
    def app_embedded(self) -> bool:
        return bool(getattr(self.app, "embedded", False))

    @work(exclusive=True, group="load", exit_on_error=False)
    async def load(self, why: str = "") -> None:
        """Read the whole table in pages into a fresh registry, then show it in one go.

        Between two pages the registrar serves requests; their events wait in the buffer
        and are applied once the table is complete (a newer binding always wins).
        """
        self.reading = True
        verb = f"reloading ({why})" if why else "loading"
        fresh = Registry()
        try:
            # The pages allocate a lot: left on, the garbage collector would run full passes over
            # the whole process (the registrar's table too) every few pages, each a stall of the
            # registrar longer than a page. memory.release() collects once at the end.
            with memory.collector_paused():
                policy = await self.client.call("policy.get")
                loop = asyncio.get_running_loop()
                started = loop.time()
                async for entries, reached, total in read_table(self.client.call):
                    fresh.add_entries(entries)
                    self.status.set_flags(loading=f"{verb} {reached:,} of {total:,} AORs")
                    # The registrar gets at least as much of the loop as the page took: under
                    # load it keeps answering, and an idle registrar costs the load little.
                    await asyncio.sleep(max(PAGE_PAUSE, loop.time() - started))
                    started = loop.time()
                fresh.finish_load(policy, index=False)
                await asyncio.sleep(PAGE_PAUSE)
                keep = self.aors.cursor_aor
                self.registry.adopt(fresh)  # sorted once, in the view's order
                del fresh
                await asyncio.sleep(PAGE_PAUSE)
                memory.release()  # one young collection, then the rows are frozen out of the GC's way
        except (ConnectionError, RpcError) as exc:
            self.reading = False
            self.status.set_flags(loading=None, trouble=f"cannot read the location table: {problem(exc)}")
            return
        self.reading = False
        self.loaded = True
        self.loads += 1
        self.status.set_flags(loading=None)
        self._registry_changed(keep)
        self.flush()  # what arrived meanwhile (unless paused)
        self.load_contacts(self.aors.cursor_aor)

    @work(group="stats", exit_on_error=False)
    async def poll_stats(self) -> None:
        while True:
            try:
                stats = await asyncio.wait_for(self.client.call("stats"), STATS_TIMEOUT)
            except (ConnectionError, OSError, asyncio.TimeoutError, RpcError):
                if not self.status.flags.gone:
                    self.status.set_flags(trouble="REGISTRAR NOT ANSWERING")
            else:
                if self.status.flags.trouble:
                    self.status.set_flags(trouble=None)
                self.registry.storage_error = stats["storage_error"]
                self.status.show_stats(stats)
                self._show_policy()
                self._show_auth(stats)
                if self._ask_nodes:
                    await self._show_nodes()
            self._stats_now.clear()
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stats_now.wait(), 1)

    async def _show_nodes(self) -> None:
        """Every registrar sharing the database: a header line each, and the Node column."""
        try:
            nodes = (await asyncio.wait_for(self.client.call("nodes"), STATS_TIMEOUT))["nodes"]
        except RpcError:
            self._ask_nodes = False  # an older registrar
            return
        except (ConnectionError, OSError, asyncio.TimeoutError):
            return  # the stats poll tells of that
        self.status.show_nodes(nodes)
        self.contacts.show_nodes(len({n["node"] for n in nodes}) > 1)

    def wake_stats(self) -> None:
        """Poll ``stats`` now (after a change the header shows, e.g. the subscriber count)."""
        self._stats_now.set()

    def _show_auth(self, stats: dict[str, Any]) -> None:
        """With authentication on and nobody to authenticate, say how to add a subscriber, until one is."""
        needed = bool(stats.get("auth")) and not stats.get("subscribers")
        if needed:
            cli = "[b]sipconsole user add alice@example.com[/]"
            if self.read_only:
                how = f"Add one with {cli} (this console is read-only)."
            else:
                how = f"Press [b]{self._key('subscribers')}[/] to add one (subscribers screen), or run {cli}."
            self.notice.update(f"⚠ Authentication is on and there are [b]no subscribers[/]: every REGISTER "
                               f"is refused. {how}")
        if self.notice.display != needed:
            self.notice.display = needed

    # -- live updates ---------------------------------------------------------------------
    def flush(self) -> None:
        """Apply everything that arrived since the last flush, in one redraw.

        While a load runs only the traffic moves: the contact events wait for the table.
        """
        if self.paused:
            self.status.set_flags(queued=len(self.buffer))
            return
        if self.buffer.lost:
            self.buffer.lost = False
            self.notify("The registrar dropped events for this console (it fell behind): "
                        "reloading the location table", severity="warning", title="Events lost")
            self.load("events lost")  # replaces a load already running: it may be stale too
        if not len(self.buffer):
            return
        whole = self.buffer.whole
        if self.reading:
            changes: list[Event | Record] = []
            traffic = self.buffer.take_traffic()
        else:
            changes, traffic = self.buffer.take()
        with self.app.batch_update():
            if changes:
                keep, shown = self.aors.cursor_aor, self.aors.shown()
                dirty = self.registry.apply(changes)
                # Compact records touch the pane only when they changed its AOR's row: not a pass
                # over thousands of them per flush for the one AOR shown.
                if (whole or self.contacts.aor in dirty) and self.contacts.apply(changes):
                    self.load_contacts(self.contacts.aor)  # compact events: the pane's AOR asks for the rest
                self._registry_changed(keep, changed=dirty, shown=shown)
            if traffic:
                self.traffic.append(traffic)
                self._security_news(traffic)

    def _security_news(self, traffic: list[Event | Record]) -> None:
        """Bans are worth a toast (at most one every few seconds) and a fresh header at once; so is
        what another operator changed (this console's own actions have their toast already)."""
        rare = [e for e in traffic if isinstance(e, dict) and e["kind"] != ev.REQUEST_HANDLED]
        if not rare:
            return
        others = [e for e in rare if e["kind"] == ev.OPERATOR_ACTION and e.get("pid") != os.getpid()]
        if others:
            first = others[0]
            more = f" (and {len(others) - 1} more: see the traffic)" if len(others) > 1 else ""
            self.notify(escape(f"{operator_request(first).source}: {first['action']} {first['target'] or ''}: "
                               f"{first['result']}{more}"), title="Operator action")
        security = [e for e in rare if e["kind"] == ev.SECURITY]
        if not security:
            return
        bans = [e for e in security if e["event"] in ("ban", "user-banned")]
        now = time.monotonic()
        if bans and now - self._ban_toast_at >= BAN_TOAST_SECONDS:  # a flood of bans: not a flood of toasts
            self._ban_toast_at = now
            names = ", ".join(e["user"] if e["event"] == "user-banned" else e["ip"] for e in bans[:3])
            more = f" and {len(bans) - 3} more" if len(bans) > 3 else ""
            self.notify(f"Banned: {escape(names)}{more}", severity="warning", title="Security")
        self.wake_stats()

    def tick(self) -> None:
        """Once a second: countdowns and ages move."""
        self.aors.refresh()
        self.contacts.refresh()

    def _registry_changed(self, keep: str | None, fallback: int | None = None, *,
                          changed: Set[str] | None = None, shown: list[str] | None = None) -> None:
        self.aors.follow(keep, fallback, changed=changed, shown=shown)
        r = self.registry
        rows = f"{len(r):,} of {len(r.rows):,} matching “{escape(r.filter)}”" if r.filter else f"{len(r):,}"
        order = "▼" if r.reverse else "▲"
        self.aors.set_title(f"AORs · {rows} · {r.contacts:,} contacts · by {SORT_LABELS[r.sort]} {order}")
        self._contacts_title()
        self._show_policy()

    def _contacts_title(self) -> None:
        aor = self.contacts.aor
        if aor is None:
            self.contacts.set_title("Contacts")
            return
        source = "AOR override" if aor in self.registry.overrides else "global"
        single = "on" if self.registry.single_contact_for(aor) else "off"
        self.contacts.set_title(f"Contacts of {escape(aor)} · {len(self.contacts.contacts)}"
                                f" · single-contact {single} ({source})")

    def _show_policy(self) -> None:
        r = self.registry
        self.status.show_policy(r.single_contact, len(r.overrides), r.caller_check, r.storage_error)

    @on(VirtualTable.Highlighted, "#aors")
    def aor_highlighted(self) -> None:
        aor = self.aors.cursor_aor
        if aor != self.contacts.aor:
            self.load_contacts(aor)
        self.refresh_bindings()

    @on(VirtualTable.Highlighted, "#contacts")
    def contact_highlighted(self) -> None:
        self.refresh_bindings()

    @work(exclusive=True, group="contacts", exit_on_error=False)
    async def load_contacts(self, aor: str | None) -> None:
        contacts: list[Contact] = []
        if aor is not None:
            try:
                contacts = (await self.client.call("show", aor=aor))["contacts"]
            except ConnectionError:
                return  # the registrar went away: the pane keeps what it showed
            except RpcError as exc:
                if exc.code != NOT_FOUND:
                    raise
        if aor == self.aors.cursor_aor:
            self.contacts.show(aor, contacts)
            self._contacts_title()

    # -- keys ----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in DESTRUCTIVE and self.read_only:
            return None
        if action in ("unregister_contact", "contact_detail", "qualify_contact"):
            return None if self.contacts.cursor_contact is None else True
        if action in ("unregister_aor", "toggle_single_contact", "history"):
            return None if self.aors.cursor_aor is None else True
        if action == "clear_filter":
            return bool(self.registry.filter) or self.query_one("#filter").has_focus
        if action == "reconnect":  # offered only when an attached registrar went away
            return bool(self.status.flags.gone) and self._can_reconnect
        return True

    def action_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.can_focus = field.display = True
        field.focus()

    def _hide_filter(self) -> None:
        """The filter line takes a row only while it is typed in or filtering; Tab never lands on it."""
        field = self.query_one("#filter")
        field.can_focus = field.display = False

    def on_resize(self) -> None:
        self.set_class(self.size.height < SHORT, "-short")

    def action_clear_filter(self) -> None:
        self.query_one("#filter", Input).value = ""
        self._set_filter("")
        self._leave_filter()

    def _leave_filter(self) -> None:
        self._hide_filter()
        self.aors.focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self._set_filter(event.value)

    @on(Input.Submitted, "#filter")
    def filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self._hide_filter()
        self.aors.focus()

    def _set_filter(self, text: str) -> None:
        keep = self.aors.cursor_aor
        self.registry.set_filter(text)
        self._registry_changed(keep, fallback=0)  # the highlighted AOR filtered out: first match
        self.refresh_bindings()

    def action_sort(self, step: int) -> None:
        index = SORT_COLUMNS.index(self.registry.sort)
        sort = SORT_COLUMNS[(index + step) % len(SORT_COLUMNS)]
        self._sort(sort, sort in DESCENDING_FIRST)

    def action_reverse_sort(self) -> None:
        self._sort(self.registry.sort, not self.registry.reverse)

    @on(VirtualTable.HeaderClicked, "#aors")
    def header_clicked(self, event: VirtualTable.HeaderClicked) -> None:
        key = event.column.key
        if key in SORT_COLUMNS:
            self._sort(key, not self.registry.reverse if key == self.registry.sort else key in DESCENDING_FIRST)

    def _sort(self, sort: str, reverse: bool) -> None:
        keep = self.aors.cursor_aor
        self.registry.set_sort(sort, reverse)
        self._registry_changed(keep)

    def footer_label(self, action: str) -> str | None:
        """The key bar says what ``p`` does now (see KeyBar)."""
        return "Resume" if action == "pause" and self.paused else None

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.status.set_flags(paused=self.paused, queued=len(self.buffer))
        self.refresh_bindings()
        if not self.paused:
            self.flush()

    def action_autoscroll(self) -> None:
        self.traffic.set_follow(not self.traffic.follow)

    def action_toggle_options(self) -> None:
        self.traffic.set_hide_options(not self.traffic.hide_options)

    def action_toggle_security(self) -> None:
        self.traffic.set_security_only(not self.traffic.security_only)

    def subscribers_screen(self) -> SubscribersScreen:
        return SubscribersScreen(self.client, self.registry, self.clock, read_only=self.read_only,
                                 stats=lambda: self.status.stats, changed=self.wake_stats)

    def action_subscribers(self) -> None:
        self.app.push_screen(self.subscribers_screen())

    def action_watchers(self) -> None:
        self.app.push_screen(WatchersScreen(self.client, self.clock))

    def action_reconnect(self) -> None:
        """Try now rather than when the back-off says."""
        self._retry_now.set()

    @work(exclusive=True, group="reconnect", exit_on_error=False)
    async def reconnect(self) -> None:
        """Reconnect with back-off (0.5 s doubling to 10 s), counting down in the header; then
        subscribe again and reload the table, which may have changed meanwhile."""
        loop = asyncio.get_running_loop()
        delay = RETRY_FIRST
        while True:
            self._retry_now.clear()
            deadline = loop.time() + delay
            while not self._retry_now.is_set() and (left := deadline - loop.time()) > 0:
                self.status.set_flags(retry=f"reconnecting in {math.ceil(left)} s")
                with suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._retry_now.wait(), min(1.0, left))
            self.status.set_flags(retry="reconnecting…")
            try:
                await self.client.connect()
            except (ConnectionError, OSError) as exc:
                self.status.set_flags(gone=str(exc))
                delay = min(delay * 2, RETRY_MAX)
                continue
            break
        self.status.set_flags(gone=None, trouble=None, retry=None)
        self.refresh_bindings()
        self.notify("Reconnected: reloading the location table", title="Registrar")
        self.read_events()  # subscribed again before the first page
        self.load("reconnected")
        self.wake_stats()

    @on(VirtualTable.Selected, "#aors")
    def aor_selected(self) -> None:
        self.contacts.focus()

    @on(VirtualTable.Selected, "#contacts")
    def contact_selected(self) -> None:
        self.action_contact_detail()

    def action_contact_detail(self) -> None:
        contact = self.contacts.cursor_contact
        if contact is None:
            return
        position = f"{self.contacts.cursor + 1}/{len(self.contacts.contacts)}"
        detail = ContactDetailScreen(contact, self.contacts.contact, self.clock, position, self.read_only,
                                     self.history, self._shown_contact)
        self.app.push_screen(detail, self._detail_closed)

    def action_history(self) -> None:
        aor = self.aors.cursor_aor
        if aor is not None:
            self.app.push_screen(HistoryScreen(aor, self.history))

    async def history(self, aor: str) -> dict[str, Any]:
        """The AOR's contact journal, through the control protocol (embedded or attached)."""
        result: dict[str, Any] = await self.client.call("history", aor=aor)
        return result

    async def _shown_contact(self, contact: Contact) -> Contact | None:
        """The contact as ``show`` gives it now (reachability history included); None: gone or unreachable registrar."""
        try:
            shown = await self.client.call("show", aor=contact["aor"])
        except (RpcError, ConnectionError):
            return None
        return next((c for c in shown["contacts"] if c["ruid"] == contact["ruid"]), None)

    def _detail_closed(self, unregister: bool | None) -> None:
        if unregister:
            self.action_unregister_contact()

    # -- changing the registrar ------------------------------------------------------------
    @work(group="qualify", exit_on_error=False)
    async def action_qualify_contact(self) -> None:
        contact = self.contacts.cursor_contact
        if contact is None:
            return
        try:
            await self.client.call("qualify", aor=contact["aor"], ruid=contact["ruid"], wait=False)
        except (RpcError, ConnectionError) as exc:
            self._failed(exc, f"{contact['addr']} is gone")
            return
        self.notify(f"OPTIONS sent to {escape(contact['addr'])}", title="Qualify")

    @work(exclusive=True, group="change", exit_on_error=False)
    async def action_unregister_contact(self) -> None:
        contact = self.contacts.cursor_contact
        if contact is None:
            return
        aor = contact["aor"]
        question = ConfirmScreen(f"Unregister this contact of {escape(aor)}?",
                                 contact_list([contact], self.clock()), "Unregister")
        if not await self.app.push_screen_wait(question):
            return
        try:
            removed = (await self.client.call("unregister", aor=aor, ruid=contact["ruid"]))["removed"]
        except (RpcError, ConnectionError) as exc:
            self._failed(exc, f"{contact['addr']} was already gone")
            return
        self._removed(removed)
        self.notify(f"Unregistered {escape(contact['addr'])} from {escape(aor)}", title="Contact removed")

    @work(exclusive=True, group="change", exit_on_error=False)
    async def action_unregister_aor(self) -> None:
        aor = self.aors.cursor_aor
        if aor is None:
            return
        try:
            contacts = (await self.client.call("show", aor=aor))["contacts"]
        except (RpcError, ConnectionError) as exc:
            self._failed(exc, f"{aor} has no contacts left")
            return
        n = len(contacts)
        which = "its only contact" if n == 1 else f"all {n} contacts"
        question = ConfirmScreen(f"Unregister {escape(aor)}: {which}?",
                                 contact_list(contacts, self.clock(), LISTED_CONTACTS), f"Unregister {n}")
        if not await self.app.push_screen_wait(question):
            return
        # Exactly the contacts named in the question go, in one commit, even if another
        # registered meanwhile.
        try:
            removed = (await self.client.call("unregister", aor=aor, ruids=[c["ruid"] for c in contacts]))["removed"]
        except (RpcError, ConnectionError) as exc:
            self._failed(exc, f"the contacts of {aor} were already gone")
            return
        self._removed(removed)
        row = self.registry.rows.get(aor)
        kept = f"; {row.count} registered since the question stay" if row is not None else ""
        self.notify(f"Unregistered {len(removed)} contact{'s' * (len(removed) != 1)} of {escape(aor)}{kept}",
                    title="AOR removed")

    def _removed(self, contacts: list[Contact]) -> None:
        keep = self.aors.cursor_aor
        self.registry.forget(contacts)
        self.contacts.forget({c["ruid"] for c in contacts})
        self._registry_changed(keep)

    @work(exclusive=True, group="change", exit_on_error=False)
    async def action_toggle_single_contact(self) -> None:
        aor = self.aors.cursor_aor
        if aor is None:
            return
        on = not self.registry.single_contact_for(aor)
        # An override equal to the global policy is dropped: the AOR follows the global switch again.
        value = None if on == self.registry.single_contact else on
        if (policy := await self._switch_single_contact(on, value, aor)) is not None:
            follows = " (follows the global policy)" if value is None else ""
            self.notify(f"single-contact {'on' if on else 'off'} for {escape(aor)}{follows}{_trimmed(policy)}",
                        title="Policy changed")

    @work(exclusive=True, group="change", exit_on_error=False)
    async def action_toggle_single_contact_global(self) -> None:
        on = not self.registry.single_contact
        if (policy := await self._switch_single_contact(on, on, None)) is not None:
            others = len(self.registry.overrides)
            extra = (f"; {others} AOR override still applies" if others == 1
                     else f"; {others} AOR overrides still apply" if others else "")
            self.notify(f"single-contact {'on' if on else 'off'} for every AOR{extra}{_trimmed(policy)}",
                        title="Policy changed")

    async def _switch_single_contact(self, on: bool, value: bool | None, aor: str | None) -> dict[str, Any] | None:
        """Set single-contact to ``value`` for ``aor`` (None: globally). Switching it on where
        that leaves AORs with several contacts asks first, naming the contacts that would go
        (policy.preview); yes sets it and removes exactly those now. None: refused or declined."""
        if not on:
            return await self._set_policy(value, aor)
        params: dict[str, Any] = {"name": "single_contact", "value": value}
        if aor is not None:
            params["aor"] = aor
        try:
            preview = await self.client.call("policy.preview", **params)
        except (RpcError, ConnectionError) as exc:
            self._failed(exc, "")
            return None
        if not preview["count"]:
            return await self._set_policy(value, aor)
        contacts = [c for entry in preview["aors"] for c in entry["contacts"]]
        where = escape(aor) if aor else "every AOR without an override"
        question = ConfirmScreen(
            f"Single-contact on for {where}: would remove {_contacts_of(contacts)}, keeping "
            f"{'its newest binding' if aor else 'the newest binding of each'}?",
            contact_list(contacts, self.clock(), LISTED_CONTACTS, with_aor=aor is None),
            f"Switch on, remove {len(contacts)}", "Switch on, remove nothing now")
        answer = await self.app.push_screen_wait(question)
        if not answer:
            return None
        return await self._set_policy(value, aor, trim=answer != ALTERNATIVE)

    @work(exclusive=True, group="change", exit_on_error=False)
    async def action_toggle_caller_check(self) -> None:
        on = not self.registry.caller_check
        if await self._set_policy(on, None, "caller_check") is not None:
            effect = ("requests from devices that are not registered get 403" if on
                      else "requests are answered whoever sends them")
            self.notify(f"caller check {'on' if on else 'off'}: {effect}", title="Policy changed")

    async def _set_policy(self, value: bool | None, aor: str | None, name: str = "single_contact", *,
                          trim: bool = False) -> dict[str, Any] | None:
        """policy.set (with ``trim``: and remove what it leaves over); its reply, None when refused."""
        params: dict[str, Any] = {"name": name, "value": value}
        if aor is not None:
            params["aor"] = aor
        if trim:
            params["trim"] = True
        try:
            policy = await self.client.call("policy.set", **params)
        except (RpcError, ConnectionError) as exc:
            self._failed(exc, "")
            return None
        self.registry.set_policy(policy)
        if policy.get("removed"):
            self._removed(policy["removed"])
        self._registry_changed(self.aors.cursor_aor)
        return policy

    def _failed(self, exc: RpcError | ConnectionError, gone: str) -> None:
        if isinstance(exc, RpcError) and exc.code == NOT_FOUND and gone:
            self.notify(escape(gone), severity="warning")
        elif isinstance(exc, RpcError):
            self.notify(escape(exc.message), severity="error", title="The registrar refused")
        else:
            self.notify(escape(problem(exc)), severity="error", title="REGISTRAR GONE")


def _contacts_of(contacts: list[Contact]) -> str:
    """``3 contacts of 2 AORs``."""
    n, m = len(contacts), len({c["aor"] for c in contacts})
    return f"{n} contact{'s' * (n != 1)} of {m} AOR{'s' * (m != 1)}"


def _trimmed(policy: dict[str, Any]) -> str:
    """What a trim removed, for the notice ("" when nothing was trimmed)."""
    removed = policy.get("removed")
    return f"; removed {_contacts_of(removed)}" if removed else ""

"""The main screen: status bar, AOR table, contacts of the highlighted AOR, and traffic.

Data flow: one worker reads the core's event stream into an :class:`EventBuffer`;
every quarter second :meth:`MainScreen.flush` applies what arrived in one batch
(so 1,000 REGISTERs/s cost four redraws a second, not a thousand); once a second
the countdowns are redrawn and ``stats`` is polled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import Footer, Input

from registrar_core.control import NOT_FOUND, RpcError

from .. import memory
from ..actions import DESTRUCTIVE, bindings
from ..feed import EventBuffer
from ..model import Registry
from ..widgets.aor_table import AorTable
from ..widgets.contacts_table import Contact, ContactsTable
from ..widgets.status_bar import StatusBar
from ..widgets.traffic_log import TrafficLog
from ..widgets.virtual_table import VirtualTable
from .confirm import ConfirmScreen, contact_list
from .detail import ContactDetailScreen

FLUSH_SECONDS = 0.25
STATS_TIMEOUT = 3.0
TRAFFIC_LIMIT = 5000
LISTED_CONTACTS = 8  # contacts named one by one in the "unregister AOR" question
SORT_COLUMNS = ("aor", "contacts", "agent", "expires", "updated")
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
        self.loaded = False
        self.paused = False

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield Input(placeholder="/ filters the AORs by substring · Enter keeps the filter · Esc clears it",
                    id="filter", compact=True)
        yield AorTable(self.registry, self.clock, id="aors")
        yield ContactsTable(self.clock, id="contacts")
        yield TrafficLog(TRAFFIC_LIMIT, id="traffic")
        yield Footer()

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

    # -- start: subscribe, then load ---------------------------------------------------------
    def on_mount(self) -> None:
        self.status.set_flags(mode=self.mode, read_only=self.read_only)
        self.query_one("#filter").can_focus = False  # only through "/": Tab cycles the panes
        self.contacts.border_title = "Contacts"
        self.aors.border_title = "AORs · loading the location table…"
        self.aors.focus()
        self.read_events()  # subscribes before the dump, so no change falls in between
        self.load()

    @work(group="events", exit_on_error=False)
    async def read_events(self) -> None:
        try:
            async for batch in self.client.events():
                self.buffer.add(batch)
        except (ConnectionError, RpcError) as exc:
            self.status.set_flags(trouble=f"NO LIVE UPDATES: {exc}")

    @work(group="load", exit_on_error=False)
    async def load(self) -> None:
        try:
            policy = await self.client.call("policy.get")
            dump = await self.client.call("dump")
        except (ConnectionError, RpcError) as exc:
            self.status.set_flags(trouble=f"cannot read the location table: {exc}")
            return
        self.registry.load(dump, policy)
        del dump  # a big reply for a big table: hand its memory back now
        memory.release()
        self.loaded = True
        self._registry_changed(None)
        self.set_interval(FLUSH_SECONDS, self.flush)
        self.set_interval(1, self.tick)
        self.poll_stats()

    @work(group="stats", exit_on_error=False)
    async def poll_stats(self) -> None:
        while True:
            try:
                stats = await asyncio.wait_for(self.client.call("stats"), STATS_TIMEOUT)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                self.status.set_flags(trouble="REGISTRAR NOT ANSWERING")
            else:
                if self.status.flags.trouble:
                    self.status.set_flags(trouble=None)
                self.registry.storage_error = stats["storage_error"]
                self.status.show_stats(stats)
                self._show_policy()
            await asyncio.sleep(1)

    # -- live updates ---------------------------------------------------------------------
    def flush(self) -> None:
        """Apply everything that arrived since the last flush, in one redraw."""
        if self.paused:
            self.status.set_flags(queued=len(self.buffer))
            return
        if not len(self.buffer):
            return
        changes, traffic = self.buffer.take()
        with self.app.batch_update():
            if changes:
                keep = self.aors.cursor_aor
                self.registry.apply(changes)
                self.contacts.apply(changes)
                self._registry_changed(keep)
            if traffic:
                self.traffic.append(traffic)

    def tick(self) -> None:
        """Once a second: countdowns and ages move."""
        self.aors.refresh()
        self.contacts.refresh()

    def _registry_changed(self, keep: str | None, fallback: int | None = None) -> None:
        self.aors.follow(keep, fallback)
        r = self.registry
        shown = f"{len(r):,} of {len(r.rows):,} matching “{escape(r.filter)}”" if r.filter else f"{len(r):,}"
        order = "▼" if r.reverse else "▲"
        self.aors.border_title = f"AORs · {shown} · {r.contacts:,} contacts · by {SORT_LABELS[r.sort]} {order}"
        self._contacts_title()
        self._show_policy()

    def _contacts_title(self) -> None:
        aor = self.contacts.aor
        if aor is None:
            self.contacts.border_title = "Contacts"
            return
        source = "AOR override" if aor in self.registry.overrides else "global"
        single = "on" if self.registry.single_contact_for(aor) else "off"
        self.contacts.border_title = (f"Contacts of {escape(aor)} · {len(self.contacts.contacts)}"
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
        if action in ("unregister_aor", "toggle_single_contact"):
            return None if self.aors.cursor_aor is None else True
        if action == "clear_filter":
            return bool(self.registry.filter) or self.query_one("#filter").has_focus
        return True

    def action_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.can_focus = True
        field.focus()

    def action_clear_filter(self) -> None:
        self.query_one("#filter", Input).value = ""
        self._set_filter("")
        self._leave_filter()

    def _leave_filter(self) -> None:
        self.query_one("#filter").can_focus = False
        self.aors.focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self._set_filter(event.value)

    @on(Input.Submitted, "#filter")
    def filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self.query_one("#filter").can_focus = False  # only through "/": Tab cycles the panes
        self.aors.focus()

    def _set_filter(self, text: str) -> None:
        keep = self.aors.cursor_aor
        self.registry.set_filter(text)
        self._registry_changed(keep, fallback=0)  # the highlighted AOR filtered out: first match
        self.refresh_bindings()

    def action_sort(self, step: int) -> None:
        index = SORT_COLUMNS.index(self.registry.sort)
        self._sort(SORT_COLUMNS[(index + step) % len(SORT_COLUMNS)], self.registry.reverse)

    def action_reverse_sort(self) -> None:
        self._sort(self.registry.sort, not self.registry.reverse)

    @on(VirtualTable.HeaderClicked, "#aors")
    def header_clicked(self, event: VirtualTable.HeaderClicked) -> None:
        key = event.column.key
        if key in SORT_COLUMNS:
            self._sort(key, not self.registry.reverse if key == self.registry.sort else False)

    def _sort(self, sort: str, reverse: bool) -> None:
        keep = self.aors.cursor_aor
        self.registry.set_sort(sort, reverse)
        self._registry_changed(keep)

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.status.set_flags(paused=self.paused, queued=len(self.buffer))
        if not self.paused:
            self.flush()

    def action_autoscroll(self) -> None:
        self.traffic.set_follow(not self.traffic.follow)

    def action_toggle_options(self) -> None:
        self.traffic.set_hide_options(not self.traffic.hide_options)

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
        detail = ContactDetailScreen(contact, self.contacts.contact, self.clock, position, self.read_only)
        self.app.push_screen(detail, self._detail_closed)

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
        except RpcError as exc:
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
        except RpcError as exc:
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
        except RpcError as exc:
            self._failed(exc, f"{aor} has no contacts left")
            return
        n = len(contacts)
        question = ConfirmScreen(f"Unregister {escape(aor)}: all {n} contact{'s' * (n != 1)}?",
                                 contact_list(contacts, self.clock(), LISTED_CONTACTS), f"Unregister {n}")
        if not await self.app.push_screen_wait(question):
            return
        # Exactly the contacts named in the question go, even if another registered meanwhile.
        results = await asyncio.gather(
            *(self.client.call("unregister", aor=aor, ruid=c["ruid"]) for c in contacts), return_exceptions=True)
        removed = [c for r in results if isinstance(r, dict) for c in r["removed"]]
        failures = [r for r in results if isinstance(r, RpcError) and r.code != NOT_FOUND]
        self._removed(removed)
        row = self.registry.rows.get(aor)
        kept = f"; {row.count} registered since the question stay" if row is not None else ""
        if failures:
            self.notify(f"{len(failures)} contact(s) of {escape(aor)} could not be removed: {failures[0].message}",
                        severity="error", title="Unregister failed")
        else:
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
        if await self._set_policy(value, aor):
            follows = " (follows the global policy)" if value is None else ""
            self.notify(f"single-contact {'on' if on else 'off'} for {escape(aor)}{follows}",
                        title="Policy changed")

    @work(exclusive=True, group="change", exit_on_error=False)
    async def action_toggle_single_contact_global(self) -> None:
        on = not self.registry.single_contact
        if await self._set_policy(on, None):
            others = len(self.registry.overrides)
            extra = f"; {others} AOR override{'s' * (others != 1)} still apply" if others else ""
            self.notify(f"single-contact {'on' if on else 'off'} for every AOR{extra}", title="Policy changed")

    async def _set_policy(self, value: bool | None, aor: str | None) -> bool:
        params: dict[str, Any] = {"name": "single_contact", "value": value}
        if aor is not None:
            params["aor"] = aor
        try:
            policy = await self.client.call("policy.set", **params)
        except RpcError as exc:
            self._failed(exc, "")
            return False
        self.registry.set_policy(policy)
        self._registry_changed(self.aors.cursor_aor)
        return True

    def _failed(self, exc: RpcError, gone: str) -> None:
        if exc.code == NOT_FOUND and gone:
            self.notify(escape(gone), severity="warning")
        else:
            self.notify(escape(exc.message), severity="error", title="The registrar refused")

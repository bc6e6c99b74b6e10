"""The console driven by Pilot against real registrars: phones register through real sockets,
keys remove bindings and flip policy, and the core confirms."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Callable

import pytest
from textual.css.query import NoMatches
from textual.widgets import Sparkline
from textual.widgets._footer import FooterKey  # the keys a Footer shows (not exported by textual.widgets)

from console import memory
from console.app import SipConsole, attached, console_session, embedded
from console.screens.confirm import ConfirmScreen
from console.screens.detail import ContactDetailScreen
from console.screens.help import HelpScreen
from console.screens.history import HistoryScreen
from console.screens.main import MainScreen
from console.screens.subscribers import SubscriberForm, SubscribersScreen
from console.screens.watchers import WatchersScreen
from console.widgets.footer import KeyBar
from console.widgets.virtual_table import text_of
from registrar_core.auth import digest
from registrar_core.config import build_config
from registrar_core.control import ControlClient, LocalClient
from registrar_core.events import OPERATOR_ACTION

from .processes import Terminal
from .sipclient import Device, TcpPhone, UdpPhone, UdpWatcher, authorization, challenges, free_port, next_aor, register_bytes, request_bytes, server_address

SIZE = (140, 40)


async def until(pilot, condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Let the app run until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        await pilot.pause(0.05)


class RecordingClient(LocalClient):
    """The embedded client, noting every call the console makes."""

    def __init__(self, core, **kw) -> None:
        super().__init__(core, **kw)
        self.calls: list[tuple[str, dict]] = []

    async def call(self, method: str, **params):
        self.calls.append((method, params))
        return await super().call(method, **params)


def console_for(srv, **kw) -> SipConsole:
    return SipConsole(RecordingClient(srv.core), embedded=True, **kw)


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


def footer_label(screen, action: str) -> str | None:
    """What the key bar says for ``action`` now (None while it is being composed again)."""
    return next((key.description for key in screen.query(FooterKey) if key.action == action), None)


async def register_with_password(srv, user: str, password: str) -> int:
    """REGISTER user@example.com, answer the challenge with ``password``: the final status."""
    aor = f"{user}@example.com"
    phone = await UdpPhone(server_address(srv)).open()
    try:
        first = await phone.register(aor, call_id=f"{user}-pw@t")
        if first.status != 401:
            return first.status
        auth = authorization(challenges(first)[0], user, password, "sip:example.com")
        return (await phone.register(aor, call_id=f"{user}-pw@t", cseq=2, extra=[auth])).status
    finally:
        phone.close()


async def phones(srv, count: int) -> list[UdpPhone]:
    return [await UdpPhone(server_address(srv)).open() for _ in range(count)]


async def ready(pilot) -> MainScreen:
    main = pilot.app.main
    await until(pilot, lambda: main.loaded)
    return main


async def highlight(pilot, main: MainScreen, aor: str) -> None:
    """Put the AOR cursor on ``aor`` and wait for its contacts."""
    await until(pilot, lambda: main.registry.position(aor) is not None)
    main.aors.move_cursor(main.registry.position(aor))
    await until(pilot, lambda: main.contacts.aor == aor)


async def test_registered_phones_appear_live(server):
    alice, bob = next_aor("alice"), next_aor("bob")
    desk, mobile, other = await phones(server, 3)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        assert (await desk.register(alice)).status == 200
        assert (await mobile.register(alice)).status == 200
        assert (await other.register(bob)).status == 200
        await until(pilot, lambda: {alice, bob} <= set(main.registry.rows))
        assert main.registry.rows[alice].count == 2
        assert [main.registry.aor_at(i) for i in range(len(main.registry))] == sorted([alice, bob])
        await highlight(pilot, main, alice)
        assert {c["received"] for c in main.contacts.contacts} == {
            f"udp:127.0.0.1:{desk.local[1]}", f"udp:127.0.0.1:{mobile.local[1]}"}
        await until(pilot, lambda: len(main.traffic.entries) >= 3)
        assert {r.aor for r in main.traffic.entries} == {alice, bob}
        assert all(r.method == "REGISTER" and r.status == 200 for r in main.traffic.entries)
        await until(pilot, lambda: main.status.stats and main.status.stats["location_contacts"] == 3)
    for p in (desk, mobile, other):
        p.close()


async def test_the_contacts_pane_follows_its_aor_live(server):
    """Compact records reach the pane only through its AOR's row: a phone joining the AOR shown
    appears in it; another AOR's REGISTERs leave it as it is."""
    alice, bob = next_aor("alice"), next_aor("bob")
    desk, mobile, other = await phones(server, 3)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        assert (await desk.register(alice)).status == 200
        await highlight(pilot, main, alice)
        await until(pilot, lambda: len(main.contacts.contacts) == 1)
        assert (await other.register(bob)).status == 200
        await until(pilot, lambda: bob in main.registry.rows)
        assert [c["aor"] for c in main.contacts.contacts] == [alice]
        assert (await mobile.register(alice)).status == 200
        await until(pilot, lambda: len(main.contacts.contacts) == 2)
        assert {c["received"] for c in main.contacts.contacts} == {
            f"udp:127.0.0.1:{desk.local[1]}", f"udp:127.0.0.1:{mobile.local[1]}"}
    for p in (desk, mobile, other):
        p.close()


async def test_a_contact_expiring_leaves_the_table(make_server):
    srv = await make_server(min_expires=1)
    aor = next_aor("brief")
    (phone,) = await phones(srv, 1)
    async with console_for(srv).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await phone.register(aor, expires=1)
        await until(pilot, lambda: aor in main.registry.rows)
        await until(pilot, lambda: aor not in main.registry.rows, timeout=5)
        await until(pilot, lambda: any(r.method == "GONE" for r in main.traffic.entries))
        assert [(r.aor, r.reason) for r in main.traffic.entries if r.method == "GONE"] == [(aor, "expired")]
    phone.close()


async def test_unregister_the_highlighted_contact(server):
    aor = next_aor("alice")
    desk, mobile = await phones(server, 2)
    await desk.register(aor)
    await mobile.register(aor, contacts=[f"<sip:m@127.0.0.1:{mobile.local[1]}>;q=0.5"])
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        await pilot.press("tab", "down")  # contacts pane, second contact: the q=0.5 mobile
        doomed = main.contacts.cursor_contact
        assert doomed is not None and doomed["q"] == 0.5
        await pilot.press("d")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        await pilot.press("n")  # cancel: nothing goes
        await pilot.pause(0.2)
        assert server.core.fetch_contacts(aor).count == 2
        await pilot.press("delete")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: server.core.fetch_contacts(aor).count == 1)
        assert server.core.fetch_contacts(aor)[0].ruid != doomed["ruid"]
        await until(pilot, lambda: main.registry.rows[aor].count == 1 and len(main.contacts.contacts) == 1)
    desk.close()
    mobile.close()


async def test_unregister_a_whole_aor(server):
    aor, bystander = next_aor("carol"), next_aor("dave")
    a, b, c = await phones(server, 3)
    await a.register(aor)
    await b.register(aor)
    await c.register(bystander)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        await pilot.press("D")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        question = pilot.app.screen
        assert aor in question.title_text and "all 2 contacts" in question.title_text
        await pilot.press("y")
        await until(pilot, lambda: server.core.fetch_contacts(aor).count == 0)
        assert server.core.fetch_contacts(bystander).count == 1
        await until(pilot, lambda: aor not in main.registry.rows)
        assert main.aors.cursor_aor == bystander
        # One call names exactly the contacts of the question (one commit).
        unregisters = [p for m, p in pilot.app.client.calls if m == "unregister"]
        assert len(unregisters) == 1 and unregisters[0]["aor"] == aor and len(unregisters[0]["ruids"]) == 2
    for p in (a, b, c):
        p.close()


async def test_single_contact_toggle_governs_the_next_register(server):
    aor, other = next_aor("erin"), next_aor("frank")
    first, second, third, fourth = await phones(server, 4)
    await first.register(aor)
    await fourth.register(other)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        await pilot.press("s")  # one contact: nothing to remove, so no question
        await until(pilot, lambda: server.core.single_contact(aor))
        assert not server.core.single_contact()  # only this AOR
        await until(pilot, lambda: main.aors.row_cells(main.aors.cursor)[5] == ("single", "accent"))
        assert "single-contact on (AOR override)" in str(main.contacts.border_title)
        # The next REGISTERs of the AOR replace its bindings.
        assert (await second.register(aor)).status == 200
        assert (await third.register(aor)).status == 200
        profile = server.core.fetch_contacts(aor)
        assert profile.count == 1 and profile[0].received.endswith(f":{third.local[1]}")
        await until(pilot, lambda: main.registry.rows[aor].count == 1)
        # The global switch: every AOR without an override.
        await pilot.press("S")
        await until(pilot, lambda: server.core.single_contact())
        assert server.core.single_contact(other)
        await until(pilot, lambda: any("1 AOR override still applies" in m for m in notifications(pilot.app)))
        await until(pilot, lambda: "single-contact [b $text-warning]on" in main.status.policy)
        # s flips what is in force for the AOR: off, as an override against the global on...
        await pilot.press("s")
        await until(pilot, lambda: server.core.single_contact_overrides() == {aor: False})
        await until(pilot, lambda: main.aors.row_cells(main.aors.cursor)[5] == ("multi", "accent"))
        # ...and back on, which equals the global policy: the override goes.
        await pilot.press("s")
        await until(pilot, lambda: server.core.single_contact_overrides() == {})
        await until(pilot, lambda: main.aors.row_cells(main.aors.cursor)[5] == ("single", "dim"))
    for p in (first, second, third, fourth):
        p.close()


async def test_single_contact_confirmation_previews_what_goes(server):
    aor, other = next_aor("hank"), next_aor("iris")
    old, older, newest, other_old, other_new = await phones(server, 5)
    for phone, who in ((older, aor), (old, aor), (newest, aor), (other_old, other), (other_new, other)):
        assert (await phone.register(who)).status == 200

    def ruid_of(phone: UdpPhone, who: str) -> str:
        return next(c.ruid for c in server.core.fetch_contacts(who) if c.received.endswith(f":{phone.local[1]}"))

    ruid = {"old": ruid_of(old, aor), "older": ruid_of(older, aor), "newest": ruid_of(newest, aor),
            "other_old": ruid_of(other_old, other), "other_new": ruid_of(other_new, other)}
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        shown = pilot.app.export_screenshot().replace("&#160;", " ")
        assert "would remove 2 contacts of 1 AOR" in shown
        assert ruid["old"] in shown and ruid["older"] in shown and ruid["newest"] not in shown
        await pilot.press("n")  # no: nothing changes
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen))
        assert not server.core.single_contact(aor) and server.core.fetch_contacts(aor).count == 3
        # o: switched on, nothing removed now (as Kamailio: the next REGISTER replaces them).
        await pilot.press("s")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        await pilot.press("o")
        await until(pilot, lambda: server.core.single_contact(aor))
        assert server.core.fetch_contacts(aor).count == 3
        await pilot.press("s")  # off again: nothing to ask
        await until(pilot, lambda: not server.core.single_contact(aor))
        await pilot.press("s")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: server.core.fetch_contacts(aor).count == 1)
        assert server.core.single_contact(aor) and server.core.fetch_contacts(aor)[0].ruid == ruid["newest"]
        await until(pilot, lambda: any("removed 2 contacts of 1 AOR" in m for m in notifications(pilot.app)))
        await until(pilot, lambda: main.registry.rows[aor].count == 1)
        # Globally: the other AOR's older contact, with its AOR named.
        await pilot.press("S")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        shown = pilot.app.export_screenshot().replace("&#160;", " ")
        assert "every AOR without an override: would remove 1 contact of 1 AOR" in shown
        assert ruid["other_old"] in shown and other in shown and ruid["other_new"] not in shown
        await pilot.press("y")
        await until(pilot, lambda: server.core.fetch_contacts(other).count == 1)
        assert server.core.single_contact() and server.core.fetch_contacts(other)[0].ruid == ruid["other_new"]
    for p in (old, older, newest, other_old, other_new):
        p.close()


async def test_filter_narrows_and_escape_clears(server):
    names = [next_aor("alice"), next_aor("alicia"), next_aor("bob")]
    devices = await phones(server, 3)
    for phone, aor in zip(devices, names):
        await phone.register(aor)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: len(main.registry) == 3)
        await pilot.press("slash", *"ALI")
        assert len(main.registry) == 2
        assert {main.registry.aor_at(i) for i in range(2)} == set(names[:2])
        await pilot.press("enter")  # keeps the filter, back to the table
        assert main.aors.has_focus and len(main.registry) == 2
        # New registrations respect the filter.
        extra = (await phones(server, 1))[0]
        await extra.register(next_aor("zed"))
        await extra.register(alice_too := next_aor("malice"))
        await until(pilot, lambda: len(main.registry) == 3)
        assert main.registry.position(alice_too) is not None
        await pilot.press("escape")
        assert len(main.registry) == 5 and main.aors.has_focus and not main.query_one("#filter").value
        extra.close()
    for p in devices:
        p.close()


async def test_sort_keys_and_header_clicks(server):
    busy, quiet = next_aor("aaa"), next_aor("zzz")
    devices = await phones(server, 3)
    await devices[0].register(quiet)
    await devices[1].register(quiet)
    await devices[2].register(busy, expires=120)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: len(main.registry) == 2)
        assert main.registry.aor_at(0) == busy
        assert main.aors.header_label(main.aors.columns[0]) == "AOR ▲"  # ascending
        await pilot.press("greater_than_sign")  # by contacts: the busiest first, which is descending
        assert main.registry.sort == "contacts" and main.registry.aor_at(0) == quiet
        assert main.aors.header_label(main.aors.columns[1]) == "Cts ▼" and "by contacts ▼" in main.aors.border_title
        await pilot.press("r")  # ascending: fewest first
        assert main.registry.aor_at(0) == busy and main.aors.header_label(main.aors.columns[1]) == "Cts ▲"
        await pilot.press("greater_than_sign")  # by user agent: ascending again
        assert main.registry.sort == "agent" and not main.registry.reverse
        await pilot.press("less_than_sign", "less_than_sign")
        assert main.registry.sort == "aor" and not main.registry.reverse
        # The arrow fits the narrowest sortable column: "Cts" is 3 cells, its column 5.
        assert main.aors._widths[1] == 5
        # Mouse: a header click sorts by that column, a row click highlights it.
        await pilot.click("#aors", offset=(main.aors._widths[0] + 2, 1))  # the "Cts" header
        assert main.registry.sort == "contacts" and main.registry.reverse and main.registry.aor_at(0) == quiet
        await pilot.click("#aors", offset=(main.aors._widths[0] + 2, 1))  # again: the other way
        assert main.registry.sort == "contacts" and not main.registry.reverse
        await pilot.click("#aors", offset=(3, 3))  # second row
        assert main.aors.cursor == 1
    for p in devices:
        p.close()


async def test_the_aor_table_redraws_only_when_what_it_shows_changes(server):
    """An event for a row off screen leaves the AOR table as drawn (most events, at 100k AORs);
    one for a row on screen draws that line again (with what it now shows), and rows coming and
    going redraw the table."""
    names = [next_aor(f"redraw{i:02d}-") for i in range(40)]
    (phone,) = await phones(server, 1)
    for aor in names:
        await phone.register(aor)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: len(main.registry) == 40)
        table = main.aors
        redraws: list[int | None] = []
        lines: list[int] = []
        drawn: list[tuple[int, str, str]] = []  # (row index, AOR, contacts) as the screen draws them
        plain_rows_changed, plain_refresh_lines, plain_row_cells = table.rows_changed, table.refresh_lines, table.row_cells
        table.rows_changed = lambda cursor=None, **kw: (redraws.append(cursor), plain_rows_changed(cursor, **kw))[1]
        table.refresh_lines = lambda y, n=1: (lines.append(y), plain_refresh_lines(y, n))[1]

        def row_cells(index: int):
            cells = plain_row_cells(index)
            drawn.append((index, cells[0], cells[1]))
            return cells

        table.row_cells = row_cells
        assert names[-1] not in table.shown() and names[1] in table.shown()
        await phone.register(names[-1], contacts=["<sip:second@127.0.0.1:5099>"])
        await until(pilot, lambda: main.registry.rows[names[-1]].count == 2)
        assert redraws == [] and lines == []
        await phone.register(names[1], contacts=["<sip:second@127.0.0.1:5099>"])
        await until(pilot, lambda: main.registry.rows[names[1]].count == 2)
        line = table.shown().index(names[1]) + int(table.scroll_y) + 1  # below the header
        assert redraws == [] and lines == [line]
        await until(pilot, lambda: (table.shown().index(names[1]), names[1], "2") in drawn)
        await phone.register(names[0], contacts=["*"], expires=0)
        await until(pilot, lambda: names[0] not in main.registry.rows)
        assert len(redraws) == 1 and table.shown()[0] == names[1]
    phone.close()


async def test_the_key_bar_is_composed_again_only_when_its_keys_change(server):
    """Moving the cursor refreshes the bindings; the key bar stays as it is unless a key, its
    label or its state changed (composing it again is most of what a cursor key costs)."""
    (phone,) = await phones(server, 1)
    for aor in (next_aor("keybar"), next_aor("keybar")):
        await phone.register(aor)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: len(main.registry) >= 2)
        bar = main.query_one(KeyBar)
        composed: list[str] = []
        plain = bar.recompose

        async def counted() -> None:
            composed.append(footer_label(main, "pause") or "")
            await plain()

        bar.recompose = counted
        await pilot.press("down", "up", "down")
        await pilot.pause(0.2)
        assert composed == []
        await pilot.press("p")
        await until(pilot, lambda: footer_label(main, "pause") == "Resume")
        assert len(composed) == 1
    phone.close()


async def test_traffic_rows_are_drawn_once_and_again_when_the_columns_change(server):
    """A request's row never changes: the traffic pane draws it once and keeps it while new rows
    arrive; a new width draws it again, to that width."""
    (phone,) = await phones(server, 1)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await phone.register(next_aor("drawn"))
        await until(pilot, lambda: len(main.traffic.entries) == 1)
        traffic = main.traffic
        await pilot.pause()  # a frame shows it
        drawn: list[int] = []
        plain = traffic.row_cells
        traffic.row_cells = lambda index: (drawn.append(index), plain(index))[1]
        line = "".join(s.text for s in traffic.render_line(1))
        assert "REGISTER" in line and drawn == []
        await pilot.resize_terminal(100, 40)
        await until(pilot, lambda: traffic.size.width < 100)
        narrow = "".join(s.text for s in traffic.render_line(1))
        assert drawn and "REGISTER" in narrow and len(narrow) < len(line)
    phone.close()


async def test_read_only_blocks_every_destructive_key(server):
    aor = next_aor("grace")
    (phone,) = await phones(server, 1)
    await phone.register(aor)
    async with console_for(server, read_only=True).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        for key in ("d", "delete", "D", "s", "S"):
            pilot.app.clear_notifications()
            await pilot.press(key)
            await until(pilot, lambda: any("read-only" in m for m in notifications(pilot.app)))
            assert isinstance(pilot.app.screen, MainScreen), key
        assert "“Single all” is off" in notifications(pilot.app)[-1]
        # The footer shows them disabled (dimmed), not gone.
        await until(pilot, lambda: footer_label(main, "unregister_aor") and footer_label(main, "filter"))
        shown = {key.action: key for key in main.query(FooterKey)}
        assert shown["unregister_aor"].has_class("-disabled") and shown["toggle_single_contact_global"].has_class("-disabled")
        assert not shown["filter"].has_class("-disabled")
        for action in ("unregister_contact", "unregister_aor", "toggle_single_contact",
                       "toggle_single_contact_global"):
            assert main.check_action(action, ()) is None  # greyed out in the footer
        assert server.core.fetch_contacts(aor).count == 1
        assert not server.core.single_contact(aor)
        # The palette cannot run them either.
        await pilot.app.main.run_action("unregister_aor")
        await pilot.pause(0.1)
        assert isinstance(pilot.app.screen, MainScreen)
        assert "READ-ONLY" in main.status.render().plain
    phone.close()


async def test_pause_holds_updates_until_resumed(server):
    aor = next_aor("heidi")
    (phone,) = await phones(server, 1)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: footer_label(main, "pause") == "Pause")
        await pilot.press("p")
        await until(pilot, lambda: footer_label(main, "pause") == "Resume")
        await phone.register(aor)
        await until(pilot, lambda: len(main.buffer) > 0)
        await pilot.pause(0.4)
        assert aor not in main.registry.rows and main.status.flags.paused
        assert "PAUSED" in main.status.render().plain
        await pilot.press("p")
        await until(pilot, lambda: aor in main.registry.rows)
        assert not main.status.flags.paused
        await until(pilot, lambda: footer_label(main, "pause") == "Pause")
    phone.close()


async def test_traffic_hides_options_and_stops_following(server):
    from .sipclient import request_bytes

    aor = next_aor("ivan")
    (phone,) = await phones(server, 1)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await phone.register(aor)
        await phone.send(request_bytes("OPTIONS", "sip:example.com", aor, local=phone.local))
        await until(pilot, lambda: len(main.traffic.entries) == 2)
        await pilot.press("o")
        assert [r.method for r in main.traffic.entries] == ["REGISTER"]
        await pilot.press("o", "a")
        assert len(main.traffic.entries) == 2 and not main.traffic.follow
        assert "scrolled back" in str(main.traffic.border_title)
    phone.close()


async def test_enter_toggles_the_contact_detail(server):
    aor = next_aor("judy")
    (phone,) = await phones(server, 1)
    await phone.register(aor, extra=["Supported: path", "Path: <sip:edge.example.net;lr>"])
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        ruid = main.contacts.cursor_contact["ruid"]
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, ContactDetailScreen))
        assert pilot.app.screen.contact["path"] == ["<sip:edge.example.net;lr>"]
        shown = pilot.app.export_screenshot()
        assert ruid in shown and "sip:edge.example.net;lr" in shown
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen))
    phone.close()


async def test_contact_detail_draws_the_rtt_sparkline_and_marks_flapping(make_server):
    srv = await make_server(qualify_interval=0.3, qualify_timeout=0.3, qualify_flap_changes=2,
                            qualify_flap_window=600)
    device = await Device.open(200)
    aor = next_aor("wobbly")
    await device.register(server_address(srv), aor)
    async with console_for(srv).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        await pilot.press("tab", "enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, ContactDetailScreen))
        spark = pilot.app.screen.query_one("#rtt-spark", Sparkline)
        await until(pilot, lambda: len(spark.data or ()) >= 2, timeout=10)
        assert all(0 < v < 500 for v in spark.data) and spark.display
        flapping = pilot.app.screen.query_one("#reach-flapping")
        assert not flapping.display
        shown = pilot.app.export_screenshot().replace("&#160;", " ")
        assert "Reachability" in shown and "RTT" in shown and "FLAPPING" not in shown
        device.status = None  # stops answering, then answers again: two changes
        await until(pilot, lambda: main.contacts.cursor_contact["state"] == "unreachable", timeout=10)
        device.status = 200

        def screen() -> str:  # what is drawn, not only what is set: a shown widget is laid out a frame later
            return pilot.app.export_screenshot().replace("&#160;", " ")

        await until(pilot, lambda: flapping.display and "FLAPPING: 2 or more" in screen(), timeout=10)
        shown = screen()
        assert "FLAPPING: 2 or more reachable/unreachable changes within 10m00s" in shown
        assert "2 state changes, last reachable" in shown
        # The contacts table marks it too (from the contact.reachability event).
        await until(pilot, lambda: main.contacts.row_cells(main.contacts.cursor)[1] == ("reachable ↯", "warn"))
    device.close()


async def test_help_and_command_palette(server):
    aor = next_aor("ken")
    (phone,) = await phones(server, 1)
    await phone.register(aor)
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        for key in ("question_mark", "f1"):
            await pilot.press(key)
            await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen))
            shown = pilot.app.export_screenshot().replace("&#160;", " ")
            assert "Add a subscriber" in shown and "Caller check on/off" in shown  # from the one table
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen))
        # The palette runs actions from the same table: toggle single-contact by name.
        await pilot.press("colon", *"off for the highlighted")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: server.core.single_contact(aor))
    phone.close()


async def test_quit_asks_before_stopping_the_embedded_registrar(server):
    async with console_for(server).run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("q")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        assert "stop the registrar" in pilot.app.screen.title_text
        await pilot.press("n")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen))
        await pilot.press("q")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: not pilot.app.is_running)


async def test_embedded_runs_the_registrar_and_stops_it(short_dir, capsys):
    port = free_port()
    config = build_config({"listen": [f"udp:127.0.0.1:{port}"], "db": str(short_dir / "loc.db"),
                           "control": str(short_dir / "c.sock"), "auth": False, "ip_budget": 0})
    aor = next_aor("lena")

    async def drive(app: SipConsole) -> None:
        async with app.run_test(size=SIZE) as pilot:
            main = await ready(pilot)
            assert pilot.app.mode == "embedded"
            phone = await UdpPhone(("127.0.0.1", port)).open()
            assert (await phone.register(aor)).status == 200
            phone.close()
            await until(pilot, lambda: aor in main.registry.rows)
            await pilot.press("q", "y")

    async def ui(control: str, read_only: bool) -> int:
        # What the console's child process runs (python -m console), here under Pilot.
        return await console_session(control, read_only, run=drive)

    import logging

    handlers = logging.getLogger().handlers[:]
    assert await embedded(config, read_only=False, ui=ui) == 0
    out = capsys.readouterr().out
    assert "registrar stopped" in out and "1 contacts" in out
    # The registrar logged to a file beside its database, not to the terminal, and let go of logging.
    assert "listening on" in (short_dir / "sipconsole.log").read_text()
    assert logging.getLogger().handlers == handlers
    # The registrar really stopped: its port is free again.
    from .sipclient import register_bytes

    probe = await UdpPhone(("127.0.0.1", port)).open()
    with pytest.raises(asyncio.TimeoutError):
        await probe.send(register_bytes(aor, [probe.contact], local=probe.local), timeout=0.3)
    probe.close()


async def test_history_key_opens_the_aor_journal_and_the_detail_shows_it(server):
    aor = next_aor("heidi")
    desk, mobile, moved = await phones(server, 3)
    await desk.register(aor, call_id="desk@t")
    await mobile.register(aor, contacts=[f"<sip:m@127.0.0.1:{mobile.local[1]}>"], call_id="m@t")
    await moved.register(aor, call_id="desk@t", cseq=2, contacts=[desk.contact])  # desk's NAT moved it
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        await pilot.press("H")
        await until(pilot, lambda: isinstance(pilot.app.screen, HistoryScreen) and len(pilot.app.screen.entries) == 3)
        assert [e["event"] for e in pilot.app.screen.entries] == ["registered", "registered", "refreshed"]
        shown = pilot.app.export_screenshot().replace("&#160;", " ")
        assert f"History of {aor}" in shown and "refreshed (changed)" in shown
        # A removal while the history is open shows up in it.
        await mobile.register(aor, contacts=[f"<sip:m@127.0.0.1:{mobile.local[1]}>"], call_id="m@t", cseq=2,
                              expires=0)
        await until(pilot, lambda: len(pilot.app.screen.entries) == 4, timeout=10)
        assert pilot.app.screen.entries[-1]["event"] == "unregistered"
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen))
        # The contact detail shows the AOR's recent history under the record.
        await until(pilot, lambda: len(main.contacts.contacts) == 1)
        await pilot.press("tab", "enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, ContactDetailScreen))
        await until(pilot, lambda: "unregistered by the device" in pilot.app.export_screenshot().replace("&#160;", " "))
        assert f"Recent history of {aor}" in pilot.app.export_screenshot().replace("&#160;", " ")
        await pilot.press("H")  # the whole of it, from the detail too
        await until(pilot, lambda: isinstance(pilot.app.screen, HistoryScreen) and len(pilot.app.screen.entries) == 4)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, ContactDetailScreen))
    for phone in (desk, mobile, moved):
        phone.close()


@pytest.fixture
def terminal(short_dir):
    started: list[Terminal] = []

    def start(port: int) -> Terminal:
        started.append(Terminal(["--listen", f"udp:127.0.0.1:{port}", "--db", str(short_dir / "loc.db"),
                                 "--control", str(short_dir / "c.sock"), "--auth", "off"]))
        return started[-1]

    yield start
    for t in started:
        t.close()


async def test_sipconsole_runs_its_console_in_a_child_process(terminal, short_dir):
    """`sipconsole` on a terminal: the registrar answers while the console, a child process on
    the same terminal, shows its bindings; q, y quits the console and stops the registrar."""
    port = free_port()
    term = terminal(port)
    await term.until(lambda: b"contacts" in term.output and term.children())
    aor = next_aor("embedded")
    phone = await UdpPhone(("127.0.0.1", port)).open()
    assert (await phone.register(aor)).status == 200
    phone.close()
    control = await ControlClient(str(short_dir / "c.sock")).connect()
    assert (await control.call("stats"))["location_contacts"] == 1
    await control.close()
    await term.until(lambda: aor.split("@")[0].encode() in term.output)  # the console shows it
    term.type("q")
    await term.until(lambda: b"Stop and quit" in term.output)
    term.type("y")
    await term.until(lambda: term.proc.poll() is not None)
    assert term.proc.returncode == 0
    await term.until(lambda: b"registrar stopped; 1 contacts kept" in term.output, timeout=5)


async def test_a_console_that_dies_stops_the_registrar_and_says_so(terminal):
    """The console's process killed: the registrar stops cleanly (its bindings are durable) and
    says why on the terminal, exit status 1; it does not run on with nothing to show it."""
    port = free_port()
    term = terminal(port)
    await term.until(lambda: b"contacts" in term.output and term.children())
    os.kill(term.children()[0], 9)
    await term.until(lambda: term.proc.poll() is not None)
    assert term.proc.returncode == 1
    await term.until(lambda: b"the console ended with status -9: registrar stopped" in term.output, timeout=5)
    # The terminal was put back first: off the alternate screen, the cursor shown.
    said = term.output.rindex(b"the console ended")
    assert term.output.rfind(b"\x1b[?1049l\x1b[?25h", 0, said) > term.output.rfind(b"\x1b[?1049h", 0, said)


async def test_attach_to_a_running_serve_process(serve_process):
    serve_process.start()
    aor, kept = next_aor("mallory"), next_aor("niaj")
    a, b = [await UdpPhone(("127.0.0.1", serve_process.port)).open() for _ in range(2)]
    await a.register(aor)
    await b.register(kept)
    client = await ControlClient(serve_process.control, actor="console").connect()  # as `attach` connects
    app = SipConsole(client, embedded=False, mode="attached")
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        await pilot.press("D")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        assert pilot.app.screen.title_text == f"Unregister {aor}: its only contact?"
        await pilot.press("y")
        await until(pilot, lambda: aor not in main.registry.rows)
        # Live events arrive over the socket too.
        await a.register(fresh := next_aor("olivia"))
        await until(pilot, lambda: fresh in main.registry.rows)
        # The history of an AOR comes through the control socket too: removed by this console.
        await highlight(pilot, main, kept)
        await pilot.press("H")
        await until(pilot, lambda: isinstance(pilot.app.screen, HistoryScreen) and pilot.app.screen.entries)
        assert [e["event"] for e in pilot.app.screen.entries] == ["registered"]
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen))
        await pilot.press("q")  # no question: the server keeps running
        await until(pilot, lambda: not pilot.app.is_running)
    await client.close()
    code, dump = serve_process.ctl("dump")
    assert code == 0 and {e["aor"] for e in dump["aors"]} == {kept, fresh}
    code, history = serve_process.ctl("history", aor)  # the journal says who removed it
    assert code == 0 and history["entries"][-1]["event"] == "admin"
    assert history["entries"][-1]["detail"].startswith(f"by console uid={os.getuid()} pid=")
    assert serve_process.proc.poll() is None
    a.close()
    b.close()


async def test_attached_without_a_registrar_exits_3(short_dir, capsys):
    assert await attached(str(short_dir / "nobody.sock"), read_only=False) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no registrar answers" in err


def test_without_a_terminal_the_console_says_so_instead_of_spinning(short_dir, serve_process):
    """Input and output not a terminal (a pipe, /dev/null: a service manager, cron): the console
    has nothing to draw on, so `sipconsole` says so, stops its registrar (exit 1, the database
    kept) and `attach` exits 2, both at once and in words, never a console burning a core unseen."""
    port = free_port()
    db = short_dir / "loc.db"
    done = subprocess.run(
        [sys.executable, "-m", "sipconsole", "--listen", f"udp:127.0.0.1:{port}", "--db", str(db),
         "--control", str(short_dir / "c.sock"), "--auth", "off"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert "sipconsole: error: the console needs a terminal" in done.stderr and "Traceback" not in done.stderr
    assert "registrar stopped" in done.stderr and db.exists()
    serve = serve_process.start()
    attach = subprocess.run([sys.executable, "-m", "sipconsole", "attach", "--control", str(serve.control)],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert attach.returncode == 2, attach.stderr
    assert attach.stderr.count("\n") == 1 and "the console needs a terminal" in attach.stderr
    assert serve.ctl("stats")[0] == 0, "the registrar it found keeps running"


def test_embedded_start_failure_is_one_line(short_dir):
    """A port already taken: exit 1 with one line on stderr, never a traceback."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "sipconsole", "--listen", f"udp:127.0.0.1:{port}",
             "--db", str(short_dir / "loc.db"), "--control", str(short_dir / "c.sock"), "--auth", "off"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
            env={**os.environ, "TERM": "dumb"})
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("sipconsole: error:"), done.stderr


# -- subscribers, security, policy, reloads --------------------------------------------------

async def test_no_subscribers_notice_then_add_one_through_the_screen(make_server):
    srv = await make_server(auth=True)
    async with console_for(srv).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: main.notice.display)
        text = str(main.notice.render())
        assert "no subscribers" in text and "Press u" in text and "sipconsole user add alice@example.com" in text
        assert "auth on" in main.status.render().plain and "no subscribers" in main.status.render().plain
        await pilot.press("u")
        await until(pilot, lambda: isinstance(pilot.app.screen, SubscribersScreen) and pilot.app.screen.loaded)
        screen = pilot.app.screen
        assert screen.table.users == []
        await pilot.press("a")
        await until(pilot, lambda: isinstance(pilot.app.screen, SubscriberForm))
        form = pilot.app.screen
        assert form.field("password").password and form.field("again").password  # masked
        # Two different passwords: refused on the spot, nothing changes, the form stays.
        await pilot.press(*"alice@example.com", "enter", *"first-pw", "enter", *"other-pw", "enter")
        await until(pilot, lambda: any("differ" in m for m in notifications(pilot.app)))
        assert pilot.app.screen is form and "alice@example.com" not in srv.core.subscribers.list()
        assert form.field("password").has_focus and not form.field("password").value
        await pilot.press(*"s3cret-pw", "enter", *"s3cret-pw", "enter")
        await until(pilot, lambda: "alice@example.com" in srv.core.subscribers.list())
        await until(pilot, lambda: pilot.app.screen is screen and screen.table.users == ["alice@example.com"])
        await until(pilot, lambda: not main.notice.display)  # gone at once: the header was refreshed
        assert "1 subscriber" in main.status.render().plain
        # Adding the same user again: the core's refusal is one line, and the form stays open.
        await pilot.press("a", *"alice@example.com", "enter", *"x", "enter", *"x", "enter")
        await until(pilot, lambda: any("exists already" in m for m in notifications(pilot.app)))
        assert isinstance(pilot.app.screen, SubscriberForm)
        await pilot.press("escape")
        await until(pilot, lambda: pilot.app.screen is screen)
    assert await register_with_password(srv, "alice", "s3cret-pw") == 200
    assert srv.core.fetch_contacts("alice@example.com").count == 1


async def test_reset_a_password_and_remove_a_subscriber(make_server):
    srv = await make_server(auth=True)
    await srv.core.subscribers.add("bob@example.com", "old-pw")
    await srv.core.subscribers.add("carol@example.com", "carol-pw")
    async with console_for(srv).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: main.status.stats is not None)
        assert not main.notice.display
        await pilot.press("u")
        await until(pilot, lambda: isinstance(pilot.app.screen, SubscribersScreen) and pilot.app.screen.loaded)
        screen = pilot.app.screen
        assert screen.table.users == ["bob@example.com", "carol@example.com"]
        await pilot.press("p")  # bob, highlighted
        await until(pilot, lambda: isinstance(pilot.app.screen, SubscriberForm))
        assert pilot.app.screen.field("user").value == "bob@example.com" and pilot.app.screen.field("user").disabled
        await pilot.press(*"new-pw", "enter", *"new-pw", "enter")
        expected = digest.ha1("SHA-256", "bob", "example.com", "new-pw")
        await until(pilot, lambda: srv.core.subscribers.ha1("bob", "example.com", "SHA-256") == expected)
        await until(pilot, lambda: pilot.app.screen is screen)
        # Remove carol: the question names her; n keeps her, y removes her.
        await pilot.press("down", "d")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        assert "carol@example.com" in pilot.app.screen.title_text
        await pilot.press("n")
        await until(pilot, lambda: pilot.app.screen is screen)
        assert "carol@example.com" in srv.core.subscribers.list()
        await pilot.press("delete")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: "carol@example.com" not in srv.core.subscribers.list())
        await until(pilot, lambda: screen.table.users == ["bob@example.com"])
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen))
    assert await register_with_password(srv, "bob", "old-pw") == 401
    assert await register_with_password(srv, "bob", "new-pw") == 200
    assert await register_with_password(srv, "carol", "carol-pw") == 401


async def test_read_only_blocks_the_subscriber_actions(make_server):
    srv = await make_server(auth=True)
    async with console_for(srv, read_only=True).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: main.notice.display)
        text = str(main.notice.render())
        assert "read-only" in text and "sipconsole user add alice@example.com" in text and "Press" not in text
        # Added from the command line meanwhile: the notice goes, the list shows it.
        await srv.core.subscribers.add("dan@example.com", "dan-pw")
        await until(pilot, lambda: not main.notice.display)
        await pilot.press("u")  # looking is fine
        await until(pilot, lambda: isinstance(pilot.app.screen, SubscribersScreen) and pilot.app.screen.loaded)
        screen = pilot.app.screen
        assert screen.table.users == ["dan@example.com"]
        for key in ("a", "insert", "d", "delete", "p"):
            pilot.app.clear_notifications()
            await pilot.press(key)
            await until(pilot, lambda: any("read-only" in m for m in notifications(pilot.app)))  # says why
            assert pilot.app.screen is screen, key
        for action in ("add", "remove", "passwd"):
            assert screen.check_action(action, ()) is None  # greyed out in the footer
            await screen.run_action(action)  # nor through the palette
        await pilot.pause(0.1)
        assert pilot.app.screen is screen
        await pilot.press("slash", "z")  # the filter: nobody matches; Esc clears it, Esc again leaves
        assert screen.table.users == []
        await pilot.press("escape")
        assert screen.table.users == ["dan@example.com"] and pilot.app.screen is screen
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen))
    assert srv.core.subscribers.list() == ["dan@example.com"]
    assert await register_with_password(srv, "dan", "dan-pw") == 200


async def test_palette_runs_subscriber_actions_from_the_main_screen(make_server):
    srv = await make_server(auth=True)
    async with console_for(srv).run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("colon", *"add a sub")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, SubscriberForm))
        assert isinstance(pilot.app.screen_stack[-2], SubscribersScreen)


async def test_a_flood_ban_shows_in_the_traffic_and_the_header(make_server):
    srv = await make_server(ip_budget=20)
    host, _ = server_address(srv)
    async with console_for(srv).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        flooder = await UdpPhone(server_address(srv)).open()
        for _ in range(40):
            flooder.send_raw(request_bytes("OPTIONS", f"sip:{host}", "flood@example.com", local=flooder.local))
        await until(pilot, lambda: any(r.security == "ban" for r in main.traffic.entries))
        index = next(i for i, r in enumerate(main.traffic.entries) if r.security == "ban")
        ban = main.traffic.entries[index]
        assert ban.source.startswith("127.0.0.1:") and ban.method == "BAN"
        assert main.traffic.row_tone(index) == "alert"  # highlighted, the whole row
        await until(pilot, lambda: (main.status.stats or {}).get("banned_ips") == ["127.0.0.1"])
        header = main.status.render().plain
        assert "banned IPs  1  127.0.0.1" in header
        await until(pilot, lambda: any("Banned: 127.0.0.1" in m for m in notifications(pilot.app)))
        await pilot.press("e")  # security events only
        assert [r.method for r in main.traffic.entries] == ["BAN"]
        await pilot.press("e")
        assert len(main.traffic.entries) > 20
        flooder.close()


async def test_caller_check_key_flips_the_policy_and_shows_it(server):
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        assert not server.core.caller_check
        await pilot.press("c")
        await until(pilot, lambda: server.core.caller_check)
        await until(pilot, lambda: "caller-check [b $text-warning]on" in main.status.policy)
        assert "caller-check on" in main.status.render().plain
        await pilot.press("c")
        await until(pilot, lambda: not server.core.caller_check and "caller-check [b]off" in main.status.policy)


async def test_storage_fault_is_highlighted_in_the_header(server):
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: server.core.events.active)  # subscribed: the event is not lost
        server.core.events.publish("storage.state", ok=False, error="disk I/O error")
        await until(pilot, lambda: "STORAGE FAULT" in main.status.render().plain)
        assert "disk I/O error" in main.status.render().plain


async def test_lost_events_reload_the_table(make_server):
    srv = await make_server()
    core = srv.core
    aor, kept = next_aor("lost"), next_aor("kept")
    devices = await phones(srv, 7)
    for phone in devices[:6]:
        await phone.register(aor)
    await devices[6].register(kept)
    app = SipConsole(RecordingClient(core, backlog=3), embedded=True)  # its queue overflows soon
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: main.registry.rows.get(aor) and main.registry.rows[aor].count == 6)
        assert main.loads == 1
        await core.unregister(aor)  # six removals at once: four of them overflow the queue
        await until(pilot, lambda: main.loads == 2)
        assert aor not in main.registry.rows and kept in main.registry.rows
        await until(pilot, lambda: any("reloading" in m for m in notifications(pilot.app)))
        dumps = [p for m, p in pilot.app.client.calls if m == "dump"]
        assert dumps and all(p["limit"] >= 1 for p in dumps)  # always in pages
    for p in devices:
        p.close()


async def test_attached_registrar_gone_then_reconnects_by_itself(serve_process):
    serve_process.start()
    before, after = next_aor("before"), next_aor("after")
    phone = await UdpPhone(("127.0.0.1", serve_process.port)).open()
    await phone.register(before)
    client = await ControlClient(serve_process.control).connect()
    app = SipConsole(client, embedded=False, mode="attached")
    async with app.run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: before in main.registry.rows)
        assert main.check_action("reconnect", ()) is False  # hidden while connected
        serve_process.stop()
        await until(pilot, lambda: main.status.flags.gone)
        assert "REGISTRAR GONE" in main.status.render().plain
        await until(pilot, lambda: any("reconnecting by itself (R: now)" in m for m in notifications(pilot.app)))
        # The console stays usable: filter, help.
        await pilot.press("slash", "b")
        assert main.registry.filter == "b"
        await pilot.press("escape", "question_mark")
        await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen))
        await pilot.press("escape")
        assert main.check_action("reconnect", ()) is True
        # It retries with back-off (0.5 s, 1 s, 2 s, 4 s...) and counts down in the header;
        # R tries at once: the next wait (8 s) starts long before the 4 s one would have ended.
        await until(pilot, lambda: "reconnecting in 4 s" in main.status.render().plain, timeout=10)
        await pilot.press("R")
        await until(pilot, lambda: "reconnecting in 8 s" in main.status.render().plain, timeout=2.5)
        assert "no registrar answers" in main.status.render().plain  # why the last try failed
        serve_process.start()
        await phone.register(after)
        # No key pressed: the back-off's next try finds it, subscribes again and reloads.
        await until(pilot, lambda: not main.status.flags.gone and main.loads == 2, timeout=15)
        assert {before, after} <= set(main.registry.rows)
        assert "reconnecting" not in main.status.render().plain
        await until(pilot, lambda: any("Reconnected" in m for m in notifications(pilot.app)))
        await phone.register(fresh := next_aor("fresh"))  # live again
        await until(pilot, lambda: fresh in main.registry.rows)
    await client.close()
    phone.close()


# -- fitting the terminal, the audit trail --------------------------------------------------------

async def test_the_console_fits_80x24(server):
    aor = next_aor("small-screen")
    desk, mobile = await phones(server, 2)
    await desk.register(aor)
    await mobile.register(aor)
    async with console_for(server).run_test(size=(80, 24)) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        await until(pilot, lambda: (main.status.stats or {}).get("location_contacts") == 2)
        # Every pane has rows on screen and nothing scrolls the screen itself.
        assert main.has_class("-short") and main.virtual_size.height <= 24
        for pane in (main.status, main.aors, main.contacts, main.traffic):
            assert pane.region.height >= 3 and pane.region.bottom <= 23, pane
        # The header keeps what matters: listen address, counts, REG/s, auth and storage.
        lines = main.status.render().plain.split("\n")
        assert len(lines) == 3 and all(len(line) <= 78 for line in lines)
        host, port = server_address(server)
        assert f"udp+tcp {host}:{port}" in lines[0] and "storage ok" in lines[0]
        assert "auth OFF" in lines[1]
        assert "AORs 1" in lines[2] and "contacts 2" in lines[2] and "REG/s" in lines[2]
        # Pause, Help and Quit stay at the right edge of the key bar, whole.
        def pinned() -> list[FooterKey]:
            return list(main.query_one(KeyBar).query_one("#pinned").query(FooterKey))

        def settled() -> bool:  # composed, laid out, and the keys that would be cut hidden
            try:
                bar = main.query_one(KeyBar)
                return (len(pinned()) == 3 and all(key.region.width for key in pinned())
                        and any(not key.display for key in bar.query(FooterKey)))
            except NoMatches:  # the bar is being composed again (its keys changed): not yet
                return False

        await until(pilot, settled)
        assert [key.description for key in pinned()] == ["Pause", "Help", "Quit"]
        assert all(key.region.right <= 80 and key.region.width >= len(key.description) + 2 for key in pinned())
        bar = main.query_one(KeyBar)
        group = bar.query_one("#pinned")
        assert group.region.right == 80
        # The other keys are shown whole or not at all (no "s Si" half key against the pinned ones).
        shown = [key for key in bar.query(FooterKey) if key.display and key.parent is not group]
        assert shown and all(key.region.width and key.region.right <= group.region.x for key in shown)
        # Every AOR column fits; the contacts' Socket and Received show whole addresses.
        assert sum(main.aors._widths) + len(main.aors._widths) - 1 <= main.aors.scrollable_content_region.width
        columns = [c.key for c in main.contacts.columns]
        contact = main.contacts.cursor_contact
        for key in ("socket", "received"):
            assert main.contacts._widths[columns.index(key)] >= len(contact[key])
        # The filter line appears only while it is used.
        assert not main.query_one("#filter").display
        await pilot.press("slash")
        assert main.query_one("#filter").display
        await pilot.press("escape")
        assert not main.query_one("#filter").display
    desk.close()
    mobile.close()


@pytest.mark.parametrize("size", [(80, 24), (180, 48), (200, 50)])
async def test_columns_hold_addresses_and_sort_arrows(server, size):
    """Socket and Received show whole addresses, and every sortable header its arrow, at any size."""
    aor = next_aor("columns")
    (phone,) = await phones(server, 1)
    await phone.register(aor)
    async with console_for(server).run_test(size=size) as pilot:
        main = await ready(pilot)
        await highlight(pilot, main, aor)
        contacts = main.contacts
        for key in ("socket", "received"):
            index = [c.key for c in contacts.columns].index(key)
            assert contacts._widths[index] >= len(contacts.cursor_contact[key]), (size, key)
        for sort in ("aor", "contacts", "agent", "expires", "updated"):
            main.registry.set_sort(sort, sort == "contacts")
            index, column = next((i, c) for i, c in enumerate(main.aors.columns) if c.key == sort)
            label = main.aors.header_label(column)
            assert label.endswith(" ▼" if sort == "contacts" else " ▲")
            assert len(label) <= main.aors._widths[index], (size, label)
    phone.close()


async def test_header_shows_challenges_apart_from_rejections(server):
    async with console_for(server).run_test(size=(200, 50)) as pilot:
        main = await ready(pilot)
        await until(pilot, lambda: main.status.stats is not None)
        stats = dict(main.status.stats)
        assert "rejected 0 · challenged 0" in main.status.render().plain  # the core's own counter
        stats["challenged"] = 7
        main.status.show_stats(stats)
        line = main.status.render().plain.split("\n")[2]
        assert "rejected 0 · challenged 7 · expired 0" in line and "2 min" in line  # wide: the sparkline too


async def test_operator_actions_show_in_the_traffic(server):
    """The audit trail: an operator.action published on the core's real event bus becomes an AUDIT
    row (in the security view too); another process's action gets a toast, this console's own not."""
    async with console_for(server).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        bus = server.core.events
        await until(pilot, lambda: bus.active)  # the console has subscribed: nothing published is lost
        bus.publish(OPERATOR_ACTION, actor="ctl", uid=1000, pid=4242, action="unregister",
                    target="alice@example.com", result="ok", details={"removed": 2})
        bus.publish(OPERATOR_ACTION, actor="console", uid=os.getuid(), pid=os.getpid(), action="policy.set",
                    target="bob@example.com", result="not found")
        await until(pilot, lambda: len(main.traffic.entries) == 2)
        ctl, mine = main.traffic.entries
        assert (ctl.method, ctl.source, ctl.aor, ctl.reason, ctl.user_agent) == (
            "AUDIT", "ctl uid 1000 pid 4242", "alice@example.com", "unregister: ok", "removed=2")
        cells = main.traffic.row_cells(0)
        assert cells[2] == ("AUDIT", "accent") and cells[4] == ("unregister: ok", "accent")
        assert main.traffic.row_cells(1)[4] == ("policy.set: not found", "warn")  # a failure stands out
        def toasts() -> list[str]:  # App.notify posts a message: the toast lands a moment later
            return [n.message for n in pilot.app._notifications if n.title == "Operator action"]

        await until(pilot, toasts)
        await pilot.pause(0.3)  # had this console's own action a toast, it would be there by now
        assert toasts() == ["ctl uid 1000 pid 4242: unregister alice@example.com: ok"]
        await pilot.press("e")  # security events and operator actions only
        assert [r.method for r in main.traffic.entries] == ["AUDIT", "AUDIT"]


async def test_a_tls_contact_whose_connection_closes_shows_why_it_went(make_server, tls_files):
    """A contact bound to its TLS connection shows its flow, and goes when the connection closes:
    the traffic pane shows a GONE row saying so (only removals: the REGISTER's add is its request
    row alone)."""
    port = free_port()
    srv = await make_server(listen=[f"udp:127.0.0.1:{port}", f"tls:127.0.0.1:{port}"], **tls_files.settings())
    aor = next_aor("tls")
    async with console_for(srv).run_test(size=SIZE) as pilot:
        main = await ready(pilot)
        phone = await TcpPhone(server_address(srv, "tls"), tls_files.client_context()).open()
        host, local_port = phone.local
        contact = f"<sip:x@{host}:{local_port};transport=tls>"
        assert (await phone.send(register_bytes(aor, [contact], local=phone.local, transport="TLS"))).status == 200
        await until(pilot, lambda: aor in main.registry.rows)
        assert [r.method for r in main.traffic.entries] == ["REGISTER"]
        await until(pilot, lambda: main.contacts.aor == aor and main.contacts.row_count() == 1)
        flow = [column.key for column in main.contacts.columns].index("flow")
        assert main.contacts.row_cells(0)[flow] == f"conn {main.contacts.contacts[0]['conid']}"  # its flow
        phone.close()
        await until(pilot, lambda: any(r.method == "GONE" for r in main.traffic.entries))
        index = next(i for i, r in enumerate(main.traffic.entries) if r.method == "GONE")
        gone = main.traffic.entries[index]
        assert (gone.aor, gone.reason, gone.source) == (aor, "connection closed", f"tls:127.0.0.1:{local_port}")
        assert main.traffic.row_cells(index)[4] == ("connection closed", "dim")
        await until(pilot, lambda: aor not in main.registry.rows)
        await pilot.press("e")  # not a security event
        assert all(r.method != "GONE" for r in main.traffic.entries)


async def test_reg_event_watchers_screen_lists_who_watches_which_aor(server):
    aor = next_aor("watched")
    watcher = await UdpWatcher(server_address(server)).open()
    assert (await watcher.subscribe(aor, 600)).status == 200
    await watcher.notify()
    async with console_for(server).run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("w")
        await until(pilot, lambda: isinstance(pilot.app.screen, WatchersScreen))
        table = pilot.app.screen.table
        await until(pilot, lambda: table.subscriptions)
        assert [(s["aor"], s["watcher"]) for s in table.subscriptions] == [(aor, "sip:watcher@example.net")]
        cells = [text_of(c) for c in table.row_cells(0)]
        assert cells[:3] == [aor, "sip:watcher@example.net", f"udp:127.0.0.1:{watcher.local[1]}"]
        assert cells[3].startswith(("9m", "10m"))  # the countdown of 600 s
        assert "1 on 1 AORs" in str(table.border_title)
        assert (await watcher.subscribe(aor, 0)).status == 200  # unsubscribed: gone from the screen
        await until(pilot, lambda: not table.subscriptions, timeout=5)
        assert "none" in str(table.border_title)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, MainScreen))
    watcher.close()


class _Node:
    """A Textual-like node: weak-referenceable, in a cycle with itself."""


async def test_a_cycle_that_died_frozen_is_reclaimed_once_no_key_came_for_a_while(server, monkeypatch):
    """The console freezes what survives each middle pass (console/memory.py): a cycle that dies
    afterwards is left to the reclaim, which the app's timer runs once the frozen population has
    grown by a share, but never while the operator is pressing keys."""
    monkeypatch.setattr(memory, "RECLAIM_CHECK", 0.1)  # the app's timer asks ten times a second
    async with console_for(server).run_test(size=SIZE) as pilot:
        await ready(pilot)  # the load's release() took the frozen population as the base
        before_key = time.monotonic()
        await pilot.press("down")
        node = _Node()
        node.self = node  # type: ignore[attr-defined]
        dead = weakref.ref(node)
        ballast = [[] for _ in range(int(gc.get_freeze_count() * memory.RECLAIM_GROWTH) + 1)]
        gc.collect(1)  # a middle pass: the node and the ballast survive it and are frozen
        del node
        gc.collect()
        assert dead() is not None, "a full pass reclaimed a frozen cycle: nothing to bound"
        assert not memory.reclaim_if_due(now=before_key + memory.RECLAIM_IDLE - 1)  # a key came 29 s ago
        await pilot.pause(0.5)  # the timer asks five times: the share has grown, but a key came
        assert dead() is not None
        monkeypatch.setattr(memory, "RECLAIM_IDLE", 0.0)  # the operator idle long enough
        await until(pilot, lambda: dead() is None)
        assert gc.get_freeze_count() >= len(ballast)  # what lives is frozen again
        assert not memory.reclaim_if_due(now=time.monotonic() + 3600)  # the new base: no growth since

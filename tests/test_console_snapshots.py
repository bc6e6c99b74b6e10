"""Snapshots of the main screen, the confirmation modal, the help, the contact detail, the
subscribers screen, the no-subscribers notice and an AOR's history (the contact journal).

Stable by construction: a real core (memory-only) on a fixed clock, fed real REGISTER
bytes with fixed Call-IDs, ports and times (plus a scanner and a flood that gets its
address banned); ruids come from a counter, event times from the same clock, and times
are shown in UTC.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator

import pytest
from textual.widgets._footer import FooterKey  # the keys a Footer shows (not exported by textual.widgets)

from console.app import SipConsole
from console.screens.confirm import ConfirmScreen
from console.screens.detail import ContactDetailScreen
from console.screens import history
from console.screens.help import HelpScreen
from console.screens.subscribers import SubscribersScreen
from console.widgets.footer import KeyBar
from registrar_core.api import RegistrarCore
from registrar_core.audit import Actor
from registrar_core.auth import Authenticator, NonceFactory
from registrar_core.config import build_config
from registrar_core.control import LocalClient
from registrar_core.source import Source

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
SIZE = (140, 40)
SOCKET = "udp:198.51.100.7:5060"
EDGE = "<sip:edge1.example.net;lr>"

# (seconds before NOW, user, user agent, source ip, port, q, expires, path, instance)
REGISTRATIONS = [
    (118, "alice", "Yealink SIP-T46U 108.86.0.20", "203.0.113.10", 5060, 1.0, 3600, None, None),
    (117, "alice", "Linphone-Android/5.2.5", "203.0.113.55", 41234, 0.5, 600, EDGE,
     "8b3f1c2e-5d0a-4f6b-9c71-2a9e4d6f0b13"),
    (110, "alice", "Zoiper rv2.10.20.3", "192.0.2.44", 5062, 0.2, 1800, None, None),
    (95, "bob", "Polycom VVX 450 6.4.6.2410", "203.0.113.11", 5060, None, 3600, None, None),
    (80, "bob", "MicroSIP/3.21.3", "192.0.2.45", 64321, 0.7, 300, None, None),
    (61, "carol", "Grandstream GXP2170 1.0.11.74", "203.0.113.12", 5060, None, 900, None, None),
    (44, "dave", "snom D785/10.1.159.12", "203.0.113.13", 5060, None, 120, None, None),
    (30, "erin", "Cisco/SPA504G-7.6.2", "203.0.113.14", 5060, None, 75, None, None),
    (21, "frank", "Obihai OBi202 3.2.2", "198.51.100.20", 5060, None, 2400, None, None),
    (12, "grace", "Bria 6.7.0 build 119851", "203.0.113.56", 50211, 0.9, 3600, EDGE,
     "c0ffee00-1d2b-4c3d-8e4f-5a6b7c8d9e0f"),
    (5, "pbx-trunk", "Asterisk PBX 20.5.0", "198.51.100.30", 5060, None, 300, None, None),
    (3, "carol", "Grandstream GXP2170 1.0.11.74", "203.0.113.12", 5060, None, 900, None, None),
]


def register(n: int, user: str, agent: str, ip: str, port: int, q: float | None, expires: int,
             path: str | None, instance: str | None) -> bytes:
    params = f';+sip.instance="<urn:uuid:{instance}>";reg-id=1' if instance else ""
    params += f";q={q}" if q is not None else ""
    lines = [
        "REGISTER sip:example.com SIP/2.0",
        f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{n:08d};rport",
        f"From: <sip:{user}@example.com>;tag=f{n}",
        f"To: <sip:{user}@example.com>",
        f"Call-ID: {user}-{ip}-{port}",
        f"CSeq: {n} REGISTER",
        f"Contact: <sip:{user}@{ip}:{port};transport=udp>{params}",
        f"Expires: {expires}",
        f"User-Agent: {agent}",
        "Supported: path, outbound" if path else "Supported: replaces",
        *([f"Path: {path}"] if path else []),
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def options(n: int, ip: str, port: int) -> bytes:
    return (f"OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:{port};branch=z9hG4bKo{n}\r\n"
            f"From: <sip:monitor@example.com>;tag=o{n}\r\nTo: <sip:example.com>\r\nCall-ID: keepalive-{n}\r\n"
            "CSeq: 1 OPTIONS\r\nUser-Agent: kamailio-dispatcher\r\nContent-Length: 0\r\n\r\n").encode()


def scanner_options(n: int, ip: str, port: int) -> bytes:
    return (f"OPTIONS sip:{100 + n}@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:{port};branch=z9hG4bKs{n}\r\n"
            f"From: <sip:100@example.com>;tag=s{n}\r\nTo: <sip:{100 + n}@example.com>\r\nCall-ID: scan-{n}\r\n"
            "CSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n").encode()


FLOODER = ("192.0.2.66", 40000)
IP_BUDGET = 30


def enable_auth(core: RegistrarCore, clock: Callable[[], float]) -> None:
    """Digest authentication on, as ``RegistrarCore.start`` turns it on (without its key file)."""
    key = b"snapshot-key-".ljust(32, b".")
    core.authenticator = Authenticator(core.subscribers, NonceFactory(key, clock=clock), key, clock=clock)


class Clock:
    """The time, as the test sets it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fixed_world(monkeypatch) -> Iterator[tuple[RegistrarCore, Clock]]:
    """A memory-only core on a fixed clock (its events carry that clock too), counted ruids, UTC."""
    clock = Clock(NOW - 600)
    ruids = itertools.count(0xA11CE)
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    core = RegistrarCore(build_config({"auth": False, "ip_budget": IP_BUDGET, "db": "/nonexistent/location.db"}),
                         clock=clock, memory_only=True)
    core.registrar.new_ruid = lambda: f"uloc-{next(ruids):016x}"
    core.listening += [SOCKET, "tcp:198.51.100.7:5060"]
    yield core, clock
    if old_tz is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old_tz
    time.tzset()


async def until(pilot, condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.05)


def feeder(core: RegistrarCore, clock: Clock, then: Callable | None = None):
    """run_before for snap_compare: the traffic arrives while the console watches."""

    async def run_before(pilot) -> None:
        main = pilot.app.main
        await until(pilot, lambda: main.loaded)
        for n, (ago, user, agent, ip, port, q, expires, path, instance) in enumerate(REGISTRATIONS, 1):
            clock.now = NOW - ago
            await core.handle(register(n, user, agent, ip, port, q, expires, path, instance),
                              Source("udp", ip, port, SOCKET))
            if n == 6:
                await core.handle(options(n, "198.51.100.2", 5060), Source("udp", "198.51.100.2", 5060, SOCKET))
        clock.now = NOW - 2
        await core.handle(register(99, "erin", "Cisco/SPA504G-7.6.2", "203.0.113.14", 5060, None, 10, None, None),
                          Source("udp", "203.0.113.14", 5060, SOCKET))  # too brief: 423
        await core.handle(scanner_options(1, "198.51.100.250", 5070), Source("udp", "198.51.100.250", 5070, SOCKET))
        clock.now = NOW - 1
        for _ in range(IP_BUDGET + 5):  # garbage over the address's budget: banned
            await core.handle(b"\x16\x03\x01 not sip\r\n\r\n", Source("udp", *FLOODER, SOCKET))
        clock.now = NOW
        await until(pilot, lambda: len(main.registry) == 8 and len(main.traffic.entries) == 16)
        accepted = len(REGISTRATIONS)
        await until(pilot, lambda: (main.status.stats or {}).get("accepted_regs") == accepted)
        main.aors.move_cursor(0)
        await until(pilot, lambda: len(main.contacts.contacts) == 3)
        await until(pilot, lambda: bool(pilot.app._notifications))  # the ban's toast...
        pilot.app.clear_notifications()  # ...would hide the traffic for a timeout: stability first
        if then is not None:
            await then(pilot)
        await until(pilot, lambda: all(key_bar_settled(screen) for screen in pilot.app.screen_stack))

    return run_before


def key_bar_settled(screen) -> bool:
    """The key bar has hidden the keys its pinned ones would cut (it does so after a layout)."""
    for bar in screen.query(KeyBar):
        pinned = bar.query("#pinned")
        if not pinned or not pinned.first().region.width:
            return False
        edge = pinned.first().region.x
        if any(key.display and key.region.width and key.region.right > edge
               for key in bar.query(FooterKey) if key.parent is not pinned.first()):
            return False
    return True


@pytest.mark.parametrize("size", [(80, 24), SIZE, (200, 50)], ids=["80x24", "140x40", "200x50"])
def test_main_screen(snap_compare, fixed_world, size):
    """The smallest terminal supported, the usual one and a large one: nothing that matters is cut."""
    core, clock = fixed_world
    app = SipConsole(LocalClient(core), embedded=True, clock=clock)
    assert snap_compare(app, terminal_size=size, run_before=feeder(core, clock))


def test_main_screen_paused_read_only_80x24(snap_compare, fixed_world):
    """Paused (the key bar offers "p Resume") and read-only (the changing keys dimmed)."""
    core, clock = fixed_world

    async def pause(pilot) -> None:
        await pilot.press("p")
        await until(pilot, lambda: pilot.app.main.status.flags.paused)

    app = SipConsole(LocalClient(core), embedded=True, clock=clock, read_only=True)
    assert snap_compare(app, terminal_size=(80, 24), run_before=feeder(core, clock, pause))


def test_confirm_unregister_aor(snap_compare, fixed_world):
    core, clock = fixed_world

    async def ask(pilot) -> None:
        await pilot.press("D")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))

    app = SipConsole(LocalClient(core), embedded=True, clock=clock)
    assert snap_compare(app, terminal_size=SIZE, run_before=feeder(core, clock, ask))


def test_help_screen_read_only(snap_compare, fixed_world):
    core, clock = fixed_world

    async def help_(pilot) -> None:
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen))

    app = SipConsole(LocalClient(core), embedded=True, clock=clock, read_only=True)
    assert snap_compare(app, terminal_size=SIZE, run_before=feeder(core, clock, help_))


def test_contact_detail(snap_compare, fixed_world):
    core, clock = fixed_world

    async def detail(pilot) -> None:
        await pilot.press("tab", "down", "enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, ContactDetailScreen))

    app = SipConsole(LocalClient(core), embedded=True, clock=clock)
    assert snap_compare(app, terminal_size=SIZE, run_before=feeder(core, clock, detail))



def test_subscribers_screen(snap_compare, fixed_world):
    core, clock = fixed_world

    async def subscribers(pilot) -> None:
        enable_auth(core, clock)
        for user in ("alice", "bob", "carol", "zoe"):  # zoe has not registered yet
            await core.subscribers.add(f"{user}@example.com", f"{user}-pw")
        main = pilot.app.main
        main.wake_stats()
        await until(pilot, lambda: (main.status.stats or {}).get("subscribers") == 4)
        await pilot.press("u")
        await until(pilot, lambda: isinstance(pilot.app.screen, SubscribersScreen) and pilot.app.screen.loaded)
        await pilot.press("down")

    app = SipConsole(LocalClient(core), embedded=True, clock=clock)
    assert snap_compare(app, terminal_size=SIZE, run_before=feeder(core, clock, subscribers))


def test_no_subscribers_notice(snap_compare, fixed_world):
    core, clock = fixed_world

    async def auth_on(pilot) -> None:
        enable_auth(core, clock)
        main = pilot.app.main
        main.wake_stats()
        await until(pilot, lambda: main.notice.display)

    app = SipConsole(LocalClient(core), embedded=True, clock=clock)
    assert snap_compare(app, terminal_size=SIZE, run_before=feeder(core, clock, auth_on))


def test_history_screen(snap_compare, fixed_world, tmp_path, monkeypatch):
    """alice's journal: three devices registered, the mobile signs off, the desk phone comes back
    with new firmware, a short-lived one expires, an operator removes the softphone. A core with a
    real SQLite file (the journal lives there) on the fixed clock; reloads off for stability."""
    _, clock = fixed_world
    core = RegistrarCore(build_config({"auth": False, "db": str(tmp_path / "location.db")}), clock=clock)
    ruids = itertools.count(0xB0B)
    core.registrar.new_ruid = lambda: f"uloc-{next(ruids):016x}"
    monkeypatch.setattr(history, "RELOAD_SECONDS", 3600.0)
    alice = "alice@example.com"

    async def at(ago: float, n: int, *row) -> None:
        clock.now = NOW - ago
        response = await core.handle(register(n, *row), Source("udp", row[2], row[3], SOCKET))
        assert response is not None

    async def story(pilot) -> None:
        await core.start()
        try:
            for n, (ago, *row) in enumerate(REGISTRATIONS[:3], 1):
                await at(ago, n, *row)
            await at(100, 4, "alice", "Grandstream WP810 1.0.11.8", "192.0.2.77", 5062, None, 60, None, None)
            mobile = REGISTRATIONS[1][1:]
            await at(90, 5, *mobile[:5], 0, *mobile[6:])  # the mobile signs off
            await at(70, 6, "alice", "Yealink SIP-T46U 108.86.0.40", *REGISTRATIONS[0][3:])  # new firmware
            clock.now = NOW - 30  # the Grandstream's minute is up
            await until(pilot, lambda: core.location.expired_total == 1)
            clock.now = NOW - 10
            [softphone] = [c for c in core.fetch_contacts(alice) if "Zoiper" in c.user_agent]
            await core.unregister(alice, softphone.ruid, actor=Actor("console", 1000, 4242))
            clock.now = NOW
            main = pilot.app.main
            await until(pilot, lambda: main.loaded and main.registry.position(alice) is not None)
            main.aors.move_cursor(main.registry.position(alice))
            await until(pilot, lambda: bool(pilot.app._notifications))  # the operator action's toast...
            pilot.app.clear_notifications()  # ...would cover the rows for a timeout: stability first
            await pilot.press("H")
            await until(pilot, lambda: isinstance(pilot.app.screen, history.HistoryScreen)
                        and len(pilot.app.screen.entries) == 8)
        finally:
            await core.stop()

    app = SipConsole(LocalClient(core), embedded=True, clock=clock)
    assert snap_compare(app, terminal_size=SIZE, run_before=story)

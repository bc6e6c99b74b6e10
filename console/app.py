"""The sipconsole application, and the two ways to start it: embedded or attached.

Embedded (``sipconsole``): the registrar runs in this process and the console in a child
process (``python -m console``) attached to its control socket: the console's parsing and
drawing never hold up the registrar's event loop, and they run on another core. Attached
(``sipconsole attach``): the console talks to a running ``sipconsole serve`` over its
control socket. Either way the console only ever uses the client interface:
``await client.call(method, **params)`` and ``async for batch in client.events()``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import termios
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from textual import events, work
from textual.app import App
from textual.markup import escape
from textual.screen import Screen

from registrar_core import exit_codes
from registrar_core.config import Config
from registrar_core.control import ControlClient
from registrar_core.server import Server, install_fast_loop

from . import memory
from .actions import Action, bindings
from .commands import ActionCommands
from .format import count
from .screens.confirm import ConfirmScreen
from .screens.detail import ContactDetailScreen
from .screens.help import HelpScreen
from .screens.main import MainScreen
from .screens.subscribers import SubscribersScreen

Runner = Callable[[App[Any]], Awaitable[object]]
Ui = Callable[[str, bool], Awaitable[int | None]]  # (control socket, read-only) -> the console's exit status
# What Textual turns on, turned off: mouse reporting (1000, 1003, 1015, 1006), bracketed paste,
# the alternate screen; the cursor shown again.
TERMINAL_RESET = "\x1b[?1000l\x1b[?1003l\x1b[?1015l\x1b[?1006l\x1b[?2004l\x1b[?1049l\x1b[?25h"


class SipConsole(App[None]):
    """The operator console over a core client: a ControlClient (a LocalClient in tests and screenshots)."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses elsewhere keep it
    TITLE = "sipconsole"
    BINDINGS = bindings("app")
    COMMANDS = App.COMMANDS | {ActionCommands}

    def __init__(self, client: Any, *, embedded: bool, read_only: bool = False,
                 clock: Callable[[], float] = time.time, mode: str | None = None) -> None:
        super().__init__()
        self.client = client
        self.embedded = embedded
        self.read_only = read_only
        self.clock = clock
        self.mode = mode or ("embedded" if embedded else "attached")

    def on_mount(self) -> None:
        self.set_interval(memory.RECLAIM_CHECK, memory.reclaim_if_due)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            memory.key_seen()  # the collector's reclaim waits for an idle operator
        await super().on_event(event)

    def get_default_screen(self) -> Screen[Any]:
        return MainScreen(self.client, clock=self.clock, read_only=self.read_only, mode=self.mode)

    @property
    def main(self) -> MainScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, MainScreen)
        return screen

    async def run_scoped(self, action: Action) -> None:
        """Run an action of the table from the palette on the screen it belongs to: back to the
        main screen for its actions, on to the subscribers screen for theirs."""
        if action.scope == "app":
            await self.run_action(action.action)
            return
        for _ in range(100):  # the palette closes first
            if isinstance(self.screen, (MainScreen, SubscribersScreen, ContactDetailScreen)):
                break
            await asyncio.sleep(0.01)
        home = SubscribersScreen if action.scope == "subscribers" else MainScreen
        while not isinstance(self.screen, (home, MainScreen)) and len(self.screen_stack) > 1:
            await self.pop_screen()
        if not isinstance(self.screen, home):
            await self.push_screen(self.main.subscribers_screen())
        await self.screen.run_action(action.action)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "refuse_read_only":  # the fallback of a destructive key: only when that is why it is off
            return self.read_only
        return True

    def action_refuse_read_only(self, label: str) -> None:
        self.notify(f"read-only: “{escape(label)}” is off (this console was started with --read-only)",
                    severity="warning", title="Read-only")

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.read_only))

    async def action_quit(self) -> None:
        if isinstance(self.screen, ConfirmScreen):
            return
        if self.embedded:
            self.confirm_quit()
        else:
            self.exit()

    @work(exclusive=True, group="quit")
    async def confirm_quit(self) -> None:
        registry = self.main.registry
        stats = self.main.status.stats or {}
        where = " and ".join(stats.get("listening", [])) or "its addresses"
        body = (f"The registrar stops answering on {where}.\n"
                f"Its {count(len(registry.rows))} AORs ({count(registry.contacts)} contacts) stay in the "
                "database and are served again at the next start.")
        if await self.push_screen_wait(ConfirmScreen("Quit and stop the registrar?", body, "Stop and quit")):
            self.exit()


async def run_app(app: App[Any]) -> object:
    """Run ``app`` on the terminal; SIGTERM quits it cleanly."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, app.exit)
    try:
        return await app.run_async()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def log_file(config: Config) -> Path:
    """Where the registrar logs while the console owns the terminal: beside its database (for
    a PostgreSQL one, in this machine's data directory)."""
    path = config.files_dir / "sipconsole.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """Send every log record to ``path`` (and none to the terminal) until the block ends."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        handler.close()
        root.handlers = saved
        root.setLevel(level)


async def embedded(config: Config, read_only: bool, *, ui: Ui | None = None) -> int:
    """Start the registrar, run the console beside it (``ui``, by default in a child process),
    stop the registrar when the console ends, whichever way it ends."""
    try:
        log = log_file(config)
    except OSError as exc:
        print(f"sipconsole: error: {exc}", file=sys.stderr)
        return exit_codes.FAILED
    with logging_to(log):
        server = Server(config)
        try:
            await server.start()
        except Exception as exc:  # port in use, unwritable db...: one line, no traceback
            print(f"sipconsole: error: {exc}", file=sys.stderr)
            return exit_codes.FAILED
        try:
            status = await (ui or console_process)(config.control, read_only)
        finally:
            contacts = server.core.snapshot_stats()["location_contacts"]
            await server.stop()
    if status not in (exit_codes.OK, None):
        print(f"sipconsole: the console ended with status {status}: registrar stopped; {contacts:,} contacts "
              f"kept in {config.db} (log: {log})", file=sys.stderr)
        return exit_codes.FAILED
    print(f"sipconsole: registrar stopped; {contacts:,} contacts kept in {config.db} (log: {log})")
    return exit_codes.OK


async def console_process(control: str, read_only: bool) -> int | None:
    """The embedded console in a child process on this terminal, attached to ``control``:
    returns its exit status. SIGTERM to this process is passed on (the console quits, then
    the registrar stops); a console that crashes stops the registrar too (what it holds is
    durable), rather than leave a registrar running with no terminal to show it."""
    terminal = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    saved = termios.tcgetattr(terminal) if terminal is not None else None
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "console", control, *(["--read-only"] if read_only else []))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, child.terminate)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the console's key, not ours
    try:
        return await child.wait()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)
        if child.returncode is None:  # cancelled: the console goes with us
            child.kill()
            await child.wait()
        if child.returncode and terminal is not None and saved is not None:
            # A console killed mid-screen leaves the terminal raw, on its alternate screen, the
            # mouse reported and the cursor hidden: put it back before saying what happened.
            termios.tcsetattr(terminal, termios.TCSADRAIN, saved)
            sys.stdout.write(TERMINAL_RESET)
            sys.stdout.flush()


def no_terminal() -> str | None:
    """Why the console cannot be drawn here (None: it can). Without a terminal on both sides
    Textual has nothing to read keys from and no screen to draw on, and would spin in vain."""
    if sys.stdin is None or sys.stdout is None or not (sys.stdin.isatty() and sys.stdout.isatty()):
        return ("the console needs a terminal (its input or output is not one): run it from a terminal, "
                "or `sipconsole serve` for the registrar alone")
    return None


async def console_session(control: str, read_only: bool, *, run: Runner = run_app) -> int:
    """What the child process runs: the embedded console, a client of ``control``."""
    try:
        client = await ControlClient(control, actor="console").connect()
    except ConnectionError as exc:
        print(f"sipconsole: error: {exc}", file=sys.stderr)
        return exit_codes.NO_REGISTRAR
    if run is run_app and (problem := no_terminal()):
        await client.close()
        print(f"sipconsole: error: {problem}", file=sys.stderr)
        return exit_codes.USAGE
    app = SipConsole(client, embedded=True, read_only=read_only)
    try:
        await run(app)
    finally:
        await client.close()
    return app.return_code or exit_codes.OK


async def attached(control_path: str, read_only: bool, *, run: Runner = run_app) -> int:
    """Run the console against ``sipconsole serve``; the server keeps running after it."""
    try:
        client = await ControlClient(control_path, actor="console").connect()
    except ConnectionError as exc:
        print(f"sipconsole: error: {exc}; start one with `sipconsole serve`", file=sys.stderr)
        return exit_codes.NO_REGISTRAR
    if run is run_app and (problem := no_terminal()):  # after the registrar is found: that error first
        await client.close()
        print(f"sipconsole: error: {problem}", file=sys.stderr)
        return exit_codes.USAGE
    app = SipConsole(client, embedded=False, read_only=read_only, mode=f"attached {control_path}")
    try:
        await run(app)
    finally:
        await client.close()
    print(f"sipconsole: detached; the registrar on {control_path} keeps running")
    return app.return_code or exit_codes.OK


def run_embedded(config: Config, read_only: bool) -> int:
    install_fast_loop()
    return asyncio.run(embedded(config, read_only))


def run_attached(control_path: str, read_only: bool) -> int:
    install_fast_loop()
    return asyncio.run(attached(control_path, read_only))

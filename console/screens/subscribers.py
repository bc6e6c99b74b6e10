"""Subscribers: who may register when digest authentication is on.

Lists them with what the location table holds for each (so an operator sees at once who
is registered), and adds, removes and resets passwords through the core's ``user.*``
methods. Passwords are typed masked, twice, and never shown, logged or kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Input, Label, Static

from registrar_core.control import RpcError

from ..actions import DESTRUCTIVE, bindings
from ..format import count, countdown, duration
from ..model import Registry
from ..widgets.footer import KeyBar
from ..widgets.virtual_table import Cell, Column, VirtualTable
from .confirm import ConfirmScreen

Submit = Callable[[str, str], Awaitable[str]]


def problem(exc: Exception) -> str:
    """One line for a failed call: the core's message, or why the registrar did not answer."""
    if isinstance(exc, RpcError):
        return exc.message
    return f"the registrar is not reachable: {exc}"


class SubscriberTable(VirtualTable):
    """One row per subscriber, with its bindings in the location table (if any)."""

    columns = (
        Column("user", "Subscriber", 28, flex=3),
        Column("contacts", "Cts", 3, right=True),
        Column("agent", "User agent (newest)", 20, flex=2),
        Column("expires", "Expires", 7, right=True),
        Column("updated", "Updated", 7, right=True),
    )

    def __init__(self, registry: Registry, clock: Callable[[], float], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.registry = registry
        self.clock = clock
        self.users: list[str] = []

    def row_count(self) -> int:
        return len(self.users)

    def cursor_key(self) -> str | None:
        return self.users[self.cursor] if self.users else None

    @property
    def cursor_user(self) -> str | None:
        return self.cursor_key()

    def row_cells(self, index: int) -> Sequence[Cell]:
        user = self.users[index]
        row = self.registry.rows.get(user)
        if row is None:
            return (user, ("0", "dim"), ("not registered", "dim"), "", "")
        now = self.clock()
        return (
            (user, "strong"),
            str(row.count),
            row.agent,
            countdown(row.soonest, now),
            (duration(now - row.newest), "dim"),
        )

    def show(self, users: list[str]) -> None:
        keep = self.cursor_key()
        self.users = users
        index = users.index(keep) if keep in users else None
        self.rows_changed(index)


class SubscriberForm(ModalScreen[str | None]):
    """Asks a subscriber (unless given) and a password twice, masked; ``submit`` does the change.

    A refusal of the registrar (user exists, bad name...) is a one-line notification and
    the form stays open to fix it; dismissed with the subscriber on success, None on Esc.
    """

    BINDINGS = bindings("form")

    def __init__(self, title: str, submit: Submit, confirm: str, user: str | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.submit = submit
        self.confirm = confirm
        self.user = user

    def compose(self) -> ComposeResult:
        with Vertical(id="form"):
            yield Static(self.title_text, id="form-title")
            yield Label("Subscriber (user@domain)")
            yield Input(value=self.user or "", placeholder="alice@example.com", id="user",
                        disabled=self.user is not None, compact=True)
            yield Label("Password")
            yield Input(password=True, id="password", compact=True)
            yield Label("Password again")
            yield Input(password=True, id="again", compact=True)
            yield Static("Enter moves to the next field and saves on the last · Esc cancels", id="form-hint")
            with Horizontal(id="buttons"):
                yield Button(self.confirm, variant="primary", id="save", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#password" if self.user else "#user", Input).focus()

    def field(self, name: str) -> Input:
        return self.query_one(f"#{name}", Input)

    @on(Input.Submitted)
    def next_field(self, event: Input.Submitted) -> None:
        following = {"user": "password", "password": "again"}.get(event.input.id or "")
        if following is None:
            self.save()
        else:
            self.field(following).focus()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.save()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _refuse(self, message: str, focus: str) -> None:
        self.notify(escape(message), severity="error", title=self.confirm)
        if focus != "user":
            self.field("password").value = self.field("again").value = ""
        self.field(focus).focus()

    @work(exclusive=True, group="form", exit_on_error=False)
    async def save(self) -> None:
        user = self.field("user").value.strip()
        password, again = self.field("password").value, self.field("again").value
        if "@" not in user.strip("@"):
            self._refuse("give the subscriber as user@domain, e.g. alice@example.com", "user")
            return
        if not password:
            self._refuse("the password must not be empty", "password")
            return
        if password != again:
            self._refuse("the two passwords differ: type them again", "password")
            return
        try:
            done = await self.submit(user, password)
        except (RpcError, ConnectionError) as exc:
            self._refuse(problem(exc), "user" if self.user is None else "password")
            return
        self.dismiss(done)


class SubscribersScreen(Screen[None]):
    """The subscriber table: add, remove, reset a password; refreshed when the count changes."""

    BINDINGS = bindings("subscribers")

    def __init__(self, client: Any, registry: Registry, clock: Callable[[], float], *, read_only: bool,
                 stats: Callable[[], dict[str, Any] | None], changed: Callable[[], None]) -> None:
        super().__init__()
        self.client = client
        self.registry = registry
        self.clock = clock
        self.read_only = read_only
        self.stats = stats
        self.changed = changed
        self.users: list[str] = []
        self.loaded = False
        self.filter = ""

    def compose(self) -> ComposeResult:
        yield Static(id="auth-state")
        yield Input(placeholder="/ filters the subscribers by substring · Esc clears it", id="subs-filter",
                    compact=True)
        yield SubscriberTable(self.registry, self.clock, id="subscribers")
        yield KeyBar()

    @property
    def table(self) -> SubscriberTable:
        return self.query_one(SubscriberTable)

    def on_mount(self) -> None:
        self.query_one("#subs-filter").can_focus = False
        self.table.border_title = "Subscribers · loading…"
        self.table.focus()
        self.reload()
        self.set_interval(1, self.tick)

    def tick(self) -> None:
        """Once a second: countdowns move; a change made elsewhere (``sipconsole user``) shows up."""
        self.table.refresh()
        self._auth_state()
        stats = self.stats()
        if self.loaded and stats is not None and stats.get("subscribers", len(self.users)) != len(self.users):
            self.reload()

    def _auth_state(self) -> None:
        stats = self.stats() or {}
        if "auth" not in stats:
            text = Text("")
        elif not stats["auth"]:
            text = Text.from_markup("Authentication is [b]off[/] (--auth off): anyone may register; "
                                    "subscribers only matter once it is on.")
        elif not self.users:
            text = Text.from_markup("Authentication is [b]on[/] and there are [b]no subscribers[/]: every "
                                    "REGISTER is refused. Add one with [b]a[/] here, or "
                                    "[b]sipconsole user add alice@example.com[/].")
        else:
            text = Text.from_markup("Authentication is [b]on[/]: only these subscribers may register, "
                                    "each its own AOR.")
        self.query_one("#auth-state", Static).update(text)

    @work(exclusive=True, group="subscribers", exit_on_error=False)
    async def reload(self, select: str | None = None) -> None:
        """Read the list again; ``select`` puts the cursor on that subscriber."""
        try:
            users = (await self.client.call("user.list"))["users"]
        except (RpcError, ConnectionError) as exc:
            self.notify(escape(problem(exc)), severity="error", title="Subscribers")
            return
        self.users = users
        self.loaded = True
        self._show()
        if select is not None and select in self.table.users:
            self.table.move_cursor(self.table.users.index(select))

    def _show(self) -> None:
        shown = [u for u in self.users if self.filter in u.lower()] if self.filter else self.users
        self.table.show(shown)
        where = f"{count(len(shown))} of {count(len(self.users))} matching “{escape(self.filter)}”" if (
            self.filter) else count(len(self.users))
        self.table.border_title = f"Subscribers · {where}"
        self._auth_state()
        self.refresh_bindings()

    @on(VirtualTable.Highlighted, "#subscribers")
    def highlighted(self) -> None:
        self.refresh_bindings()

    # -- keys ------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in DESTRUCTIVE and self.read_only:
            return None
        if action in ("remove", "passwd"):
            return None if self.table.cursor_user is None else True
        return True

    def action_filter(self) -> None:
        field = self.query_one("#subs-filter", Input)
        field.can_focus = True
        field.focus()

    @on(Input.Changed, "#subs-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.filter = event.value.strip().lower()
        self._show()

    @on(Input.Submitted, "#subs-filter")
    def filter_submitted(self) -> None:
        self.query_one("#subs-filter").can_focus = bool(self.filter)
        self.table.focus()

    def action_close(self) -> None:
        field = self.query_one("#subs-filter", Input)
        if self.filter or field.has_focus:
            field.value = ""
            field.can_focus = False
            self.table.focus()
            return
        self.dismiss()

    def action_add(self) -> None:
        async def add(user: str, password: str) -> str:
            return (await self.client.call("user.add", user=user, password=password))["user"]

        self.app.push_screen(SubscriberForm("Add a subscriber", add, "Add"), self._added)

    def _added(self, user: str | None) -> None:
        if user:
            self.notify(f"Added subscriber {escape(user)}: it may register now", title="Subscribers")
            self._changed(select=user)

    def action_passwd(self) -> None:
        user = self.table.cursor_user
        if user is None:
            return

        async def passwd(user: str, password: str) -> str:
            return (await self.client.call("user.passwd", user=user, password=password))["user"]

        self.app.push_screen(SubscriberForm(f"New password for {escape(user)}", passwd, "Set password", user),
                             self._password_set)

    def _password_set(self, user: str | None) -> None:
        if user:
            self.notify(f"New password for {escape(user)}: its phones must use it from their next REGISTER",
                        title="Subscribers")

    @work(exclusive=True, group="change", exit_on_error=False)
    async def action_remove(self) -> None:
        user = self.table.cursor_user
        if user is None:
            return
        row = self.registry.rows.get(user)
        n = row.count if row is not None else 0
        stays = (f"Its {n} registered contact{'s' * (n != 1)} stay until they expire or are unregistered "
                 "(D on the main screen)." if n else "It has no registered contacts.")
        body = Text(f"{user} can no longer authenticate: its next REGISTER is refused.\n{stays}")
        if not await self.app.push_screen_wait(ConfirmScreen(f"Remove subscriber {escape(user)}?", body,
                                                             "Remove")):
            return
        try:
            await self.client.call("user.remove", user=user)
        except (RpcError, ConnectionError) as exc:
            self.notify(escape(problem(exc)), severity="error", title="Remove failed")
            return
        self.notify(f"Removed subscriber {escape(user)}", title="Subscribers")
        self._changed()

    def _changed(self, select: str | None = None) -> None:
        self.changed()
        self.reload(select)

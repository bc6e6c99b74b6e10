"""A y/n confirmation that names exactly what an action will do."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from ..actions import bindings
from ..format import countdown


ALTERNATIVE = "alternative"  # what a ConfirmScreen's third button answers


def contact_list(contacts: Sequence[dict[str, Any]], now: float, limit: int = 8, *, with_aor: bool = False) -> Table:
    """The contacts an unregister or a policy trim would remove, one aligned row each, named
    down to the ruid (``with_aor``: their AORs too, when they are of several)."""
    table = Table(box=None, padding=(0, 1), expand=True, header_style="bold")
    if with_aor:
        table.add_column("AOR", ratio=2, no_wrap=True, overflow="ellipsis")
    table.add_column("Contact", ratio=3, no_wrap=True, overflow="ellipsis")
    table.add_column("User agent", ratio=2, no_wrap=True, overflow="ellipsis")
    table.add_column("Received", no_wrap=True)
    table.add_column("Expires", justify="right", no_wrap=True)
    table.add_column("ruid", no_wrap=True, style="dim")
    for c in contacts[:limit]:
        table.add_row(*([c["aor"]] if with_aor else []), Text(c["addr"], style="bold"), c["user_agent"],
                      c["received"], countdown(c["expires_at"], now)[0], c["ruid"])
    if len(contacts) > limit:
        more = Text(f"… and {len(contacts) - limit} more", style="italic")
        table.add_row(*([""] if with_aor else []), more, "", "", "", "")
    return table


class ConfirmScreen(ModalScreen[bool | str]):
    """Dismissed with True on ``y`` (or the red button), False on ``n``/Esc; Cancel has the focus.
    With ``alternative`` (a label), a third button and ``o`` dismiss it with ``ALTERNATIVE``:
    a milder way to do it (switch a policy on without removing anything now)."""

    BINDINGS = bindings("confirm")

    def __init__(self, title: str, body: RenderableType, confirm: str, alternative: str | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.confirm = confirm
        self.alternative = alternative

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.title_text, id="question")
            yield Static(self.body, id="details")
            with Horizontal(id="buttons"):
                yield Button(f"{self.confirm} (y)", variant="error", id="yes", compact=True)
                if self.alternative:
                    yield Button(f"{self.alternative} (o)", variant="warning", id="alternative", compact=True)
                yield Button("Cancel (n)", id="no", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(ALTERNATIVE if event.button.id == "alternative" else event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return bool(self.alternative) if action == "alternative" else True

    def action_alternative(self) -> None:
        self.dismiss(ALTERNATIVE)

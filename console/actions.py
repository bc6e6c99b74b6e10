"""Every key of the console in one table: the bindings, the footer, the help screen
and the command palette are all built from :data:`ACTIONS`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from textual.binding import Binding, BindingType

if TYPE_CHECKING:
    from textual.app import App

Scope = Literal["app", "main", "table", "detail", "history", "confirm", "help", "subscribers", "form", "watchers"]


@dataclass(frozen=True, slots=True)
class Action:
    keys: str  # Textual key names, comma-separated
    action: str  # action string, run on the scope's node
    label: str  # short label for the footer and the palette
    help: str  # one line for the help screen and the palette
    group: str
    scope: Scope = "main"
    footer: bool = False
    destructive: bool = False  # disabled by --read-only
    key_display: str | None = None

    @property
    def name(self) -> str:
        """The action name without parameters (what check_action receives)."""
        return self.action.partition("(")[0].rpartition(".")[2]

    def binding(self) -> Binding:
        """The Textual binding; its id (``main.unregister_aor``, ``table.cursor(1)``...) lets
        ``App.set_keymap`` remap it."""
        return Binding(self.keys, self.action, self.label, show=self.footer,
                       key_display=self.key_display, tooltip=self.help, id=f"{self.scope}.{self.action}")


ACTIONS: tuple[Action, ...] = (
    # Moving around: bound on every table.
    Action("up,k", "cursor(-1)", "Up", "Move the cursor up", "Move", "table"),
    Action("down,j", "cursor(1)", "Down", "Move the cursor down", "Move", "table"),
    Action("pageup", "page(-1)", "Page up", "One page up", "Move", "table"),
    Action("pagedown", "page(1)", "Page down", "One page down", "Move", "table"),
    Action("home", "edge(0)", "First", "First row", "Move", "table"),
    Action("end", "edge(1)", "Last", "Last row (traffic: follow again)", "Move", "table"),
    Action("left,h", "pan(-1)", "Left", "Scroll the columns left", "Move", "table"),
    Action("right,l", "pan(1)", "Right", "Scroll the columns right", "Move", "table"),
    Action("tab", "app.focus_next", "Next pane", "Next pane: AORs, contacts, traffic", "Move"),
    Action("shift+tab", "app.focus_previous", "Previous pane", "Focus the previous pane", "Move"),
    # The AOR table.
    Action("slash", "filter", "Filter", "Filter AORs by substring; Enter keeps, Esc clears",
           "AORs", footer=True, key_display="/"),
    Action("escape", "clear_filter", "Clear filter", "Clear the AOR filter", "AORs"),
    Action("less_than_sign", "sort(-1)", "Sort ◂", "Sort the AORs by the previous column", "AORs"),
    Action("greater_than_sign", "sort(1)", "Sort", "Sort the AORs by the next column", "AORs",
           footer=True, key_display="<>"),
    Action("r", "reverse_sort", "Reverse", "Reverse the sort order", "AORs"),
    Action("H", "history", "History", "History of the highlighted AOR: why its contacts came and went",
           "AORs"),
    # Contacts and bindings.
    Action("enter", "contact_detail", "Detail", "Full record of the highlighted contact (toggles)",
           "Contacts", footer=True),
    Action("d,delete", "unregister_contact", "Unreg contact",
           "Unregister the highlighted contact (asks)", "Contacts", footer=True, destructive=True),
    Action("D", "unregister_aor", "Unreg AOR", "Unregister every contact of the AOR (asks)",
           "Contacts", footer=True, destructive=True),
    Action("Q", "qualify_contact", "Qualify", "Send OPTIONS to the highlighted contact now (state, RTT)",
           "Contacts"),
    # Policy.
    Action("s", "toggle_single_contact", "Single AOR",
           "Single-contact on/off for the highlighted AOR",
           "Policy", footer=True, destructive=True),
    Action("S", "toggle_single_contact_global", "Single all", "Single-contact on/off for AORs without override",
           "Policy", footer=True, destructive=True),
    Action("c", "toggle_caller_check", "Caller check",
           "Caller check on/off: 403 to requests from devices not registered", "Policy", destructive=True),
    # Subscribers (digest authentication).
    Action("u", "subscribers", "Subscribers", "Subscribers screen: add, remove, reset passwords",
           "Subscribers", footer=True),
    Action("w", "watchers", "Watchers", "Reg event: who watches which AOR, until when",
           "Subscribers"),
    # Live view.
    Action("p", "pause", "Pause", "Pause/resume live updates (events are kept)",
           "Live", footer=True),
    Action("a", "autoscroll", "Follow", "Traffic: follow new requests or stay put", "Live"),
    Action("o", "toggle_options", "OPTIONS", "Traffic: show or hide OPTIONS keepalives", "Live"),
    Action("e", "toggle_security", "Security",
           "Traffic: security events and operator actions only (bans, failed auth, scanners, audit) or all", "Live"),
    Action("R", "reconnect", "Reconnect", "Reconnect now (attach: after the registrar went away it retries by itself)", "Live",
           footer=True),
    # The application.
    Action("question_mark,f1", "help", "Help", "This help", "App", "app", footer=True),
    Action("colon", "command_palette", "Commands", "Command palette: every action by name (ctrl+p)",
           "App", "app"),
    Action("q", "quit", "Quit", "Quit (asks when the registrar would stop)", "App", "app", footer=True),
    # Inside the contact detail view, a confirmation and the help screen.
    Action("escape,enter", "close", "Back", "Back to the main screen", "Detail", "detail", footer=True),
    Action("d,delete", "unregister", "Unregister", "Unregister this contact (asks)", "Detail", "detail",
           footer=True, destructive=True),
    Action("H", "history", "History", "The AOR's whole history (the contact journal)", "Detail", "detail",
           footer=True),
    Action("escape,H", "close", "Back", "History view: back to the main screen", "Detail", "history",
           footer=True),
    # The subscribers screen and its add / password form.
    Action("a,insert", "add", "Add", "Add a subscriber (user@domain, the password twice)",
           "Subscribers", "subscribers", footer=True, destructive=True),
    Action("d,delete", "remove", "Remove", "Remove the highlighted subscriber (asks)", "Subscribers",
           "subscribers", footer=True, destructive=True),
    Action("p", "passwd", "Password", "New password for the highlighted subscriber",
           "Subscribers", "subscribers", footer=True, destructive=True),
    Action("slash", "filter", "Filter", "Filter subscribers by substring; Esc clears", "Subscribers",
           "subscribers", footer=True, key_display="/"),
    Action("escape,u", "close", "Back", "Back to the main screen (Esc clears a filter first)",
           "Subscribers", "subscribers", footer=True),
    Action("escape,w", "close", "Back", "Back to the main screen", "Watchers", "watchers", footer=True),
    Action("escape", "cancel", "Cancel", "Close the form without changing anything", "Form", "form"),
    Action("y", "answer(True)", "Yes", "Confirm", "Confirm", "confirm", footer=True),
    Action("o", "alternative", "Other", "The milder choice, where offered (e.g. switch on, remove nothing now)",
           "Confirm", "confirm", footer=True),
    Action("n,escape", "answer(False)", "No", "Cancel", "Confirm", "confirm", footer=True),
    Action("escape,q,question_mark,f1", "close", "Close", "Close the help", "Help", "help", footer=True),
)

#: Actions the command palette offers: those of the main screen, the subscribers screen (opened on the
#: way) and the app, but the palette itself.
PALETTE = tuple(a for a in ACTIONS
                if a.scope in ("main", "app", "subscribers") and a.name not in ("command_palette", "close"))
DESTRUCTIVE = frozenset(a.name for a in ACTIONS if a.destructive)


def bindings(scope: Scope) -> list[BindingType]:
    """The bindings of ``scope``; each destructive action's keys are bound a second time, hidden, to
    ``app.refuse_read_only``: Textual tries it when the action itself is off, so under --read-only
    the key says why it does nothing (the app allows that action only then)."""
    actions = [a for a in ACTIONS if a.scope == scope]
    out: list[BindingType] = [a.binding() for a in actions]
    out += [Binding(a.keys, f"app.refuse_read_only({a.label!r})", show=False, id=f"{scope}.read_only.{a.name}")
            for a in actions if a.destructive]
    return out


def key_names(app: App[object], action: Action) -> str:
    """The keys of ``action`` as the footer writes them, e.g. ``d del``."""
    return " ".join(app.get_key_display(Binding(key, "")) for key in action.keys.split(","))

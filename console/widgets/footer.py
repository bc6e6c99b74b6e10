"""The key bar: Textual's Footer, with Pause, Help and Quit pinned to the right edge and labels
that follow the state (``p Resume`` while paused).

Textual's Footer lays the keys out left to right and cuts what does not fit, so at 80
columns the keys an operator needs most were the first to go.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import HorizontalGroup
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

COMPACT_BELOW = 120  # columns
PINNED = ("pause", "help", "quit")  # what an operator must always find: a frozen view says how to resume


class KeyBar(Footer):
    """A screen may define ``footer_label(action) -> str | None``: the label of ``action`` in its
    current state, or None for the usual one; it calls ``refresh_bindings()`` when that changes."""

    DEFAULT_CSS = """
    KeyBar #pinned {
        dock: right;
        width: auto;
        padding-left: 1;
        border-left: vkey $foreground 20%;
        background: $footer-background;
    }
    """

    _shown: tuple[Any, ...] | None = None  # what the keys show, as last composed (see bindings_changed)

    def bindings_changed(self, screen: Screen[Any]) -> None:
        """Recompose only when a key shown, its label or its state changed. Textual recomposes on
        every ``refresh_bindings()``, which the cursor calls on each move: a new set of keys to
        mount, style and lay out, the most of what a cursor key cost."""
        if screen.app.app_focus and self.is_attached and screen is self.screen:
            shown = self._keys_shown(screen)
            if shown == self._shown and self._bindings_ready:
                return
            self._shown = shown
        super().bindings_changed(screen)

    def _keys_shown(self, screen: Screen[Any]) -> tuple[Any, ...]:
        label = getattr(screen, "footer_label", lambda _: None)
        return self.show_command_palette, tuple(
            (b.key, b.action, b.description, b.group, enabled, tooltip, label(b.action))
            for _, b, enabled, tooltip in screen.active_bindings.values() if b.show)

    def on_resize(self) -> None:
        self.compact = self.size.width < COMPACT_BELOW  # tighter spacing: more keys whole at 80 columns
        self.call_after_refresh(self._drop_cut_keys)

    async def recompose(self) -> None:
        await super().recompose()  # the keys are mounted (and styled) when it returns
        self._drop_cut_keys()

    def _drop_cut_keys(self) -> None:
        """Hide the keys the pinned ones would cut in half ("s Si" reads as noise): all or nothing.
        Widths come from the keys' own text and margins, so no layout needs to have run."""
        def width(key: FooterKey) -> int:
            return key.render().cell_len + key.styles.margin.width

        pinned = self.query("#pinned")
        room = self.size.width
        if pinned:
            group = pinned.first()
            room -= sum(width(key) for key in group.query(FooterKey)) + group.styles.gutter.width
        edge = 0
        for key in self.query_children(FooterKey):
            edge += width(key)
            key.display = edge <= room

    def compose(self) -> ComposeResult:
        pinned: list[Widget] = []
        for widget in super().compose():
            if isinstance(widget, FooterKey):
                label = getattr(self.screen, "footer_label", lambda _: None)(widget.action)
                if label is not None:
                    widget.description = label
                if widget.action in PINNED:
                    pinned.append(widget)
                    continue
            yield widget
        if pinned:
            with HorizontalGroup(id="pinned"):
                yield from pinned

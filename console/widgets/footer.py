"""The key bar: Textual's Footer, with Pause, Help and Quit pinned to the right edge and labels
that follow the state (``p Resume`` while paused).

Textual's Footer lays the keys out left to right and cuts what does not fit, so at 80
columns the keys an operator needs most were the first to go.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import HorizontalGroup
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

"""A virtual table: renders only the visible rows of a row source of any size.

Subclasses say how many rows there are (:meth:`row_count`) and what one row holds
(:meth:`row_cells`); the table keeps a cursor, a fixed header, horizontal scrolling,
mouse selection and semantic cell colours. Nothing is stored per row, so 100,000
rows cost no more to draw than 40.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..actions import bindings

#: A cell: plain text, or (text, tone) where tone is one of :data:`TONES` or "" (none).
Cell = str | tuple[str, str]
TONES = ("ok", "warn", "error", "dim", "accent", "strong", "alert")
DRAWN_ROWS = 512  # rows kept drawn by a table whose rows never change (see VirtualTable.row_key)


def text_of(cell: Cell) -> str:
    return cell if isinstance(cell, str) else cell[0]


@dataclass(frozen=True, slots=True)
class Column:
    """One column: ``width`` is the minimum (with ``fit``: the most it takes, less when its widest
    value is narrower); ``flex`` columns share the spare room; a ``sortable`` column always has
    room for its label and the sort arrow."""

    key: str
    label: str
    width: int
    flex: int = 0
    right: bool = False
    sortable: bool = False
    fit: bool = False

    @property
    def least(self) -> int:
        """The narrowest it may be: its label, plus `` ▲`` when sortable."""
        return cell_len(self.label) + 2 * self.sortable


@lru_cache(maxsize=4096)
def fit(text: str, width: int, right: bool = False) -> str:
    """``text`` padded or cut (with an ellipsis) to exactly ``width`` cells."""
    if width <= 0:
        return ""
    size = cell_len(text)
    if size > width:
        return set_cell_size(text, width - 1) + "…"
    pad = " " * (width - size)
    return pad + text if right else text + pad


class VirtualTable(ScrollView, can_focus=True):
    """A keyboard and mouse driven table over rows computed on demand."""

    COMPONENT_CLASSES = {
        "virtual-table--header",
        "virtual-table--cursor",
        *(f"virtual-table--{tone}" for tone in TONES),
    }
    DEFAULT_CSS = """
    VirtualTable {
        width: 100%;
        background: $surface;
        color: $foreground;
        overflow-x: auto;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
        scrollbar-gutter: stable;
        scrollbar-size-horizontal: 1;
        & > .virtual-table--header { text-style: bold; color: $text-accent; background: $panel; }
        & > .virtual-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
        }
        &:focus > .virtual-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: bold;
        }
        & > .virtual-table--ok { color: $text-success; }
        & > .virtual-table--warn { color: $text-warning; }
        & > .virtual-table--error { color: $text-error; }
        & > .virtual-table--dim { color: $text-muted; }
        & > .virtual-table--accent { color: $text-accent; }
        & > .virtual-table--strong { text-style: bold; }
        & > .virtual-table--alert { color: $text-error; text-style: bold reverse; }
    }
    """
    BINDINGS = bindings("table")

    class Highlighted(Message):
        """The cursor moved to another row (``index`` -1: the table is empty)."""

        def __init__(self, table: VirtualTable, index: int) -> None:
            super().__init__()
            self.table = table
            self.index = index

        @property
        def control(self) -> VirtualTable:
            return self.table

    class Selected(Highlighted):
        """A row was double-clicked."""

    class HeaderClicked(Message):
        def __init__(self, table: VirtualTable, column: Column) -> None:
            super().__init__()
            self.table = table
            self.column = column

        @property
        def control(self) -> VirtualTable:
            return self.table

    columns: Sequence[Column] = ()
    show_cursor = True

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.cursor = 0
        self._widths: list[int] = [max(c.least, c.width) for c in self.columns]
        self._styles: dict[str, Style] = {}
        self._last_key: object = None
        self._shown_title: str | None = None
        self._drawn: dict[tuple[object, Style], Strip] = {}  # (row_key, style) -> the row drawn

    # -- what subclasses provide ---------------------------------------------------------
    def row_count(self) -> int:
        raise NotImplementedError

    def row_cells(self, index: int) -> Sequence[Cell]:
        raise NotImplementedError

    def row_tone(self, index: int) -> str:
        """A tone for the whole row, gaps included (override to highlight rows)."""
        return ""

    def row_key(self, index: int) -> object:
        """What the row at ``index`` shows, as a key, for a table whose rows never change once
        added (a log): the row is drawn once and kept. None (the default): drawn every time."""
        return None

    def header_label(self, column: Column) -> str:
        """The header text of ``column`` (override to add sort markers)."""
        return column.label

    def cursor_key(self) -> object:
        """What identifies the highlighted row across updates (default: its index)."""
        return self.cursor if self.row_count() else None

    # -- updating ---------------------------------------------------------------------
    def set_title(self, title: str) -> None:
        """The border title, set only when it changes: Textual parses and redraws the whole
        table on every assignment, and the live panes set theirs at each update."""
        if title != self._shown_title:
            self._shown_title = title
            self.border_title = title

    def window(self) -> range:
        """The indices of the rows on screen."""
        top = int(self.scroll_y)
        return range(top, min(self.row_count(), top + self._page_size()))

    def rows_changed(self, cursor: int | None = None, *, keep_screen_row: bool = False) -> None:
        """The row source changed: resize, optionally move the cursor, and redraw.

        ``keep_screen_row`` scrolls so that the cursor stays on the same screen line,
        so rows arriving above it do not make the highlighted row jump.
        """
        count = self.row_count()
        screen_row = self.cursor - int(self.scroll_y)
        self.virtual_size = Size(sum(self._widths) + len(self._widths) - 1, count + 1)
        self.cursor = max(0, min(self.cursor if cursor is None else cursor, count - 1))
        if keep_screen_row and 0 <= screen_row < self._page_size():
            self.scroll_to(y=max(0, self.cursor - screen_row), animate=False, force=True)
        else:
            self._scroll_cursor_into_view()
        self.refresh()
        self._announce()

    def move_cursor(self, index: int) -> None:
        self.cursor = max(0, min(index, self.row_count() - 1))
        self._scroll_cursor_into_view()
        self.refresh()
        self._announce()

    def _announce(self) -> None:
        key = self.cursor_key()
        if key != self._last_key:
            self._last_key = key
            self.post_message(self.Highlighted(self, self.cursor if key is not None else -1))

    def _page_size(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _scroll_cursor_into_view(self) -> None:
        top = int(self.scroll_y)
        page = self._page_size()
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, force=True)
        elif self.cursor >= top + page:
            self.scroll_to(y=self.cursor - page + 1, animate=False, force=True)

    # -- actions --------------------------------------------------------------------
    def action_cursor(self, delta: int) -> None:
        self.move_cursor(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.move_cursor(self.cursor + direction * self._page_size())

    def action_edge(self, end: int) -> None:
        self.move_cursor(self.row_count() - 1 if end else 0)

    def action_pan(self, direction: int) -> None:
        self.scroll_to(x=max(0, self.scroll_x + direction * 8), animate=False, force=True)

    # -- layout and drawing ---------------------------------------------------------
    def on_resize(self, event: events.Resize) -> None:
        self._layout_columns(self.scrollable_content_region.width)
        self.rows_changed()

    def content_widths(self) -> Sequence[int] | None:
        """The widest value of each column, which ``fit`` columns shrink to; None (not measured,
        the default) leaves them at their width. Override where rows are few."""
        return None

    def _layout_columns(self, width: int) -> None:
        measured = self.content_widths()
        widths = [max(c.least, min(c.width, measured[i]) if c.fit and measured is not None else c.width)
                  for i, c in enumerate(self.columns)]
        spare = width - (sum(widths) + len(widths) - 1)
        flex = sum(c.flex for c in self.columns)
        if spare > 0 and flex:
            for i, column in enumerate(self.columns):
                widths[i] += spare * column.flex // flex
        self._widths = widths
        self._drawn.clear()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles.clear()
        self._drawn.clear()

    def _style(self, name: str) -> Style:
        style = self._styles.get(name)
        if style is None:
            style = self._styles[name] = self.get_component_rich_style(f"virtual-table--{name}", partial=True)
        return style

    def column_at(self, x: int) -> Column | None:
        edge = 0
        for column, width in zip(self.columns, self._widths):
            edge += width + 1
            if x < edge:
                return column
        return None

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        base = self.rich_style
        cursor: Style | None = None
        if y == 0:
            header = self._style("header")
            cells: Sequence[Cell] = [self.header_label(c) for c in self.columns]
            strip = self._strip(cells, base + header, None)
        else:
            index = scroll_y + y - 1
            if index >= self.row_count():
                return Strip.blank(width, base)
            cursor = self._style("cursor") if self.show_cursor and index == self.cursor else None
            tone = self.row_tone(index)
            if tone:
                base = base + self._style(tone)
            row = self.row_key(index) if cursor is None else None
            key = None if row is None else (row, base)  # base: a theme or focus change draws anew
            drawn = None if key is None else self._drawn.get(key)
            if drawn is None:
                drawn = self._strip(self.row_cells(index), base, cursor)
                if key is not None:
                    if len(self._drawn) >= DRAWN_ROWS:
                        self._drawn.clear()
                    self._drawn[key] = drawn
            strip = drawn
        return strip.crop_extend(scroll_x, scroll_x + width, base + cursor if cursor else base)

    def _strip(self, cells: Sequence[Cell], base: Style, cursor: Style | None) -> Strip:
        segments: list[Segment] = []
        gap = Segment(" ", base + cursor if cursor else base)
        for i, (column, width) in enumerate(zip(self.columns, self._widths)):
            if i:
                segments.append(gap)
            cell = cells[i]
            text, tone = cell if isinstance(cell, tuple) else (cell, "")
            style = base + self._style(tone) if tone else base
            if cursor is not None:
                style = style + cursor
            segments.append(Segment(fit(text, width, column.right), style))
        return Strip(segments, sum(self._widths) + len(self._widths) - 1)

    # -- mouse ------------------------------------------------------------------------
    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            column = self.column_at(offset.x + int(self.scroll_x))
            if column is not None:
                self.post_message(self.HeaderClicked(self, column))
            return
        index = int(self.scroll_y) + offset.y - 1
        if index < self.row_count():
            self.move_cursor(index)
            if event.chain == 2:
                self.post_message(self.Selected(self, index))


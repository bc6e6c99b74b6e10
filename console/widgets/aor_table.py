"""The AOR table: one row per address-of-record, drawn from the console's Registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence, Set

from ..format import countdown, duration
from ..model import Registry
from .virtual_table import Cell, Column, VirtualTable


class AorTable(VirtualTable):
    """Keyed by AOR: the cursor stays on its AOR while rows come and go around it."""

    columns = (  # 76 cells at least: an 80-column terminal shows every column
        Column("aor", "AOR", 24, flex=3, sortable=True),
        Column("contacts", "Cts", 3, right=True, sortable=True),
        Column("agent", "User agent", 18, flex=2, sortable=True),  # the newest contact's
        Column("expires", "Expires", 7, right=True, sortable=True),
        Column("updated", "Updated", 7, right=True, sortable=True),
        Column("policy", "Policy", 6),
    )

    def __init__(self, registry: Registry, clock: Callable[[], float], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.registry = registry
        self.clock = clock

    def row_count(self) -> int:
        return len(self.registry)

    def cursor_key(self) -> str | None:
        return self.registry.aor_at(self.cursor) if len(self.registry) else None

    @property
    def cursor_aor(self) -> str | None:
        return self.cursor_key()

    def header_label(self, column: Column) -> str:
        if column.key != self.registry.sort:
            return column.label
        return column.label + (" ▼" if self.registry.reverse else " ▲")  # ▲ ascending, as shown

    def row_cells(self, index: int) -> Sequence[Cell]:
        row = self.registry.row_at(index)
        now = self.clock()
        return (
            row.aor,
            str(row.count),
            row.agent,
            countdown(row.soonest, now),
            (duration(now - row.newest), "dim"),
            self._policy(row.aor),
        )

    def _policy(self, aor: str) -> Cell:
        """``single``/``multi`` in bold for an AOR override, dim ``single`` when inherited."""
        override = self.registry.overrides.get(aor)
        if override is not None:
            return ("single" if override else "multi", "accent")
        return ("single", "dim") if self.registry.single_contact else ""

    def shown(self) -> list[str]:
        """The AORs on screen, top to bottom."""
        return [self.registry.aor_at(i) for i in self.window()]

    def follow(self, aor: str | None, fallback: int | None = None, *, changed: Set[str] | None = None,
               shown: list[str] | None = None) -> None:
        """Redraw after the registry changed, keeping the cursor on ``aor`` if it is still shown
        (else on row ``fallback``, or on the same row number when that is None).

        With ``changed`` (the AORs whose rows changed) and ``shown`` (what was on screen before):
        when the same AORs are on screen and the row count is the same, only the lines of the
        changed ones are drawn again (none, mostly: most events are for rows far off screen; the
        countdowns move at the next tick). Under load a flush changes a few of the 40 lines shown,
        and drawing the whole table was most of the console's drawing.
        """
        index = None if aor is None else self.registry.position(aor)
        cursor = fallback if index is None else index
        if (changed is not None and shown is not None and cursor in (None, self.cursor)
                and len(self.registry) + 1 == self.virtual_size.height and shown == self.shown()):
            top = int(self.scroll_y) + 1  # the header is line 0
            for line, shown_aor in enumerate(shown, top):
                if shown_aor in changed:
                    self.refresh_lines(line)
            return
        self.rows_changed(cursor, keep_screen_row=True)

"""The command palette: every action of the action table, by name."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from .actions import PALETTE, Action, key_names


class ActionCommands(Provider):
    """Offers the actions of :data:`~console.actions.PALETTE`, run on the screen the palette was opened from."""

    def _entries(self) -> list[tuple[str, Action]]:
        read_only = getattr(self.app, "read_only", False)
        entries = []
        for action in PALETTE:
            disabled = " (disabled: read-only)" if action.destructive and read_only else ""
            entries.append((f"{action.help}{disabled} · key {key_names(self.app, action)}", action))
        return entries

    def _run(self, action: Action) -> Callable[[], object]:
        run_scoped = getattr(self.app, "run_scoped", None)
        if run_scoped is not None:  # the right screen first (main, subscribers), then the action
            return partial(run_scoped, action)
        target = self.app if action.scope == "app" else self.screen
        return partial(target.run_action, action.action)

    @staticmethod
    def _name(action: Action) -> str:
        return action.label if action.label == action.group else f"{action.group}: {action.label}"

    async def discover(self) -> Hits:
        for help_text, action in self._entries():
            yield DiscoveryHit(self._name(action), self._run(action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for help_text, action in self._entries():
            name = self._name(action)
            score = max(matcher.match(name), matcher.match(action.help))
            if score > 0:
                yield Hit(score, matcher.highlight(name), self._run(action), help=help_text)

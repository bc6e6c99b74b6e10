"""Contacts bound to a TLS or WebSocket connection go when it closes (Kamailio's
handle_lost_tcp): RFC 5626/7118 flows are reachable only through their connection (a
WebSocket contact's host is often ``*.invalid``), so a closed one leaves a dead binding."""

from __future__ import annotations

import asyncio
import logging

from .api import RegistrarCore
from .source import Source

log = logging.getLogger(__name__)

REMOVED_FLOW_CLOSED = "connection-closed"  # contact.removed reason: the console and ctl show it


class FlowReaper:
    """Removes the contacts of closed flows (unless --keep-flow-contacts)."""

    def __init__(self, core: RegistrarCore) -> None:
        self.core = core
        self._tasks: set[asyncio.Task[int]] = set()

    def closed(self, source: Source) -> None:
        """Transports' callback; the removal is a location transaction, so it runs as a task."""
        task = asyncio.get_running_loop().create_task(self.remove(source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def remove(self, source: Source) -> int:
        """Remove every contact registered over the connection ``source`` names; how many went.
        A contact refreshed meanwhile over another connection carries the new one and stays."""
        location = self.core.location
        removed = 0
        for table in location.tables():
            aors = [aor for aor in list(location.aors(table))
                    if any(c.conid == source.conid for c in location.contacts(table, aor))]
            for aor in aors:
                await location.locks.acquire((table, aor))
                try:
                    gone = [c for c in location.contacts(table, aor) if c.conid == source.conid]
                    if gone:
                        await location.apply(table, [], [(c, REMOVED_FLOW_CLOSED) for c in gone])
                        removed += len(gone)
                finally:
                    location.locks.release((table, aor))
        if removed:
            log.info("connection %s closed: removed its %d contact(s)", source.address, removed)
        return removed

    async def stop(self) -> None:
        """Let removals under way finish: each is one short transaction."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

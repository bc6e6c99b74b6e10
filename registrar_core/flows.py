"""Contacts bound to a TLS or WebSocket connection go when it closes (Kamailio's
handle_lost_tcp): RFC 5626/7118 flows are reachable only through their connection (a
WebSocket contact's host is often ``*.invalid``), so a closed one leaves a dead binding.

Strategy: the location table is not indexed by connection (that would cost every REGISTER
over TCP a write for a feature only closing flows use), so finding a flow's contacts is a
walk over the table. Closes are gathered and the table is walked once for all the
connections that closed meanwhile, yielding to the event loop every WALK_STEP AORs: a proxy
restart that drops a thousand WebSockets costs one walk, not a thousand, and SIP keeps being
answered during it.
"""

from __future__ import annotations

import asyncio
import logging

from .api import RegistrarCore
from .source import Source

log = logging.getLogger(__name__)

REMOVED_FLOW_CLOSED = "connection-closed"  # contact.removed reason: the console and ctl show it
WALK_STEP = 2_000  # AORs looked at between two turns of the event loop


class FlowReaper:
    """Removes the contacts of closed flows (unless --keep-flow-contacts)."""

    def __init__(self, core: RegistrarCore) -> None:
        self.core = core
        self._closed: dict[int, str] = {}  # conid -> transport address, closed and not walked for yet
        self._task: asyncio.Task[int] | None = None

    def closed(self, source: Source) -> None:
        """Transports' callback: noted now, removed by the next walk (a location transaction
        per AOR, so it runs as a task)."""
        if source.conid is None:
            return
        self._closed[source.conid] = source.address
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> int:
        """Walk until no close is left unwalked for; how many contacts went."""
        removed = 0
        try:
            while self._closed:
                closed, self._closed = self._closed, {}
                removed += await self.remove(closed)
        finally:
            self._task = None
        return removed

    async def remove(self, closed: dict[int, str]) -> int:
        """Remove every contact registered over one of the ``closed`` connections (conid ->
        address); how many went. A contact refreshed meanwhile over another connection carries
        the new one and stays."""
        location = self.core.location
        removed = 0
        for table in location.tables():
            aors = []
            for n, aor in enumerate(list(location.aors(table)), 1):
                if any(c.conid in closed for c in location.contacts(table, aor)):
                    aors.append(aor)
                if n % WALK_STEP == 0:
                    await asyncio.sleep(0)
            for aor in aors:
                await location.locks.acquire((table, aor))
                try:
                    gone = [c for c in location.contacts(table, aor) if c.conid in closed]
                    if gone:
                        await location.apply(table, [], [(c, REMOVED_FLOW_CLOSED) for c in gone])
                        removed += len(gone)
                finally:
                    location.locks.release((table, aor))
        if removed:
            where = f"connection {next(iter(closed.values()))}" if len(closed) == 1 else f"{len(closed)} connections"
            log.info("%s closed: removed %d contact(s)", where, removed)
        return removed

    async def stop(self) -> None:
        """Let a walk under way finish: its removals are short transactions."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

"""The registrar as a running service: core, SIP listeners and (optionally) the control socket."""

from __future__ import annotations

import asyncio
import gc
import logging

from . import build
from .api import RegistrarCore
from .config import Config, parse_metrics_listen
from .control import ControlServer, ensure_free
from .dblock import DatabaseLock
from .flows import FlowReaper
from .location.sqlite_store import SqliteStore
from .metrics import render
from .metrics_http import MetricsServer
from .transport import Transports

log = logging.getLogger(__name__)

# The collector's youngest generation runs every 700 allocations by default. Requests
# waiting for a group commit survive it, get promoted, and soon set off full collections
# that walk the whole location table: a third of a REGISTER's CPU under load. Rare young
# collections (a few ms each, about one a second at 10,000 REGISTER/s) and the table
# loaded at start frozen out of them bring that under 5% (bench/, in-process profile).
GC_THRESHOLDS = (100_000, 20, 10)


class Server:
    def __init__(self, config: Config, *, control: bool = True, memory_only: bool = False) -> None:
        self.config = config
        self.core = RegistrarCore(config, memory_only=memory_only)
        self._memory_only = memory_only
        self._lock: DatabaseLock | None = None
        self.transports = Transports(
            self.core.pipeline.receive, config.limits, config.tcp_idle_timeout, config.max_tcp_per_ip,
            tcp_read_timeout=min(config.tcp_read_timeout, config.tcp_idle_timeout),
            max_tcp_connections=config.max_tcp_connections or None, config=config)
        if any(spec.proto in ("ws", "wss") for spec in config.listen):
            from .websocket import WebSocketConnection  # wsproto is loaded only when used

            self.transports.connection_types.update(ws=WebSocketConnection, wss=WebSocketConnection)
        self.core.sender = self.transports.send
        self.flows = FlowReaper(self.core)
        if not config.keep_flow_contacts:
            self.transports.flow_closed = self.flows.closed
        self._control_enabled = control
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None

    async def start(self) -> None:
        if not self._memory_only:  # before the database opens and any port is bound
            self._lock = DatabaseLock.take(self.config.db, control=self.config.control if self._control_enabled else "")
            if isinstance(self.core.location.store, SqliteStore):
                self.core.location.store.lock = self._lock  # let go while a fault closes the file
        try:
            if self._control_enabled:  # before any port is bound, as the database lock
                await ensure_free(self.config.control)
            await self.core.start()
        except BaseException:
            self._release()
            raise
        gc.set_threshold(*GC_THRESHOLDS)
        gc.freeze()  # what start loaded (the table, the subscribers) lives as long as we do
        log.info("REGISTER hot path: %s", "compiled (mypyc)" if build() == "mypyc" else
                 "pure Python (no compiled build: less than half the throughput, see setup.py)")
        try:
            for spec in self.config.listen:
                address = await self.transports.listen(spec)
                self.core.listening.append(address)
                log.info("listening on %s", address)
            if not self.config.auth:
                log.warning("authentication is OFF: anyone who reaches %s can register as any AOR "
                            "(a lab setting; drop --auth off to require subscribers)", ", ".join(self.core.listening))
            await self.core.qualify.start()
            if self._control_enabled:
                self.control = ControlServer(self.core, self.config.control)
                await self.control.start()
                log.info("control socket at %s", self.config.control)
            if self.config.metrics_listen:
                host, port = parse_metrics_listen(self.config.metrics_listen)
                self.metrics = MetricsServer(lambda: render(self.core), host, port)
                await self.metrics.start()
                log.info("Prometheus metrics at %s", self.metrics.address)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
            self.metrics = None
        if self.control is not None:
            await self.control.stop()
            self.control = None
        self.transports.flow_closed = None  # shutting down: contacts stay for the next start
        await self.core.reg_events.stop()  # its last NOTIFYs need the transports
        await self.transports.close()
        await self.flows.stop()
        await self.core.stop()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def install_fast_loop() -> bool:
    """Use uvloop where the platform has it; asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True

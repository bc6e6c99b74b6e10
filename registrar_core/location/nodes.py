"""The registrars sharing one store ("nodes"): who each says it is, and how alive it looks.

A node announces itself with a :class:`NodeIdentity` (given to the store that several share);
:class:`NodeState` is what every node can read back about all of them (``ctl nodes``, the
console's header). A store only one registrar uses has no nodes table: the registrar then
describes itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Transports whose contacts are reachable only through the connection they registered over
# (their flow): the node that held it is the only way to them, so they go when it dies.
CONNECTION_TRANSPORTS = ("tcp", "tls", "ws", "wss")


@dataclass(frozen=True)
class NodeIdentity:
    """This registrar among those sharing a store: its name (``--node-name``), the addresses
    it listens on, its count of accepted REGISTERs, and whether the contacts of its dead
    connections are removed (not with ``--keep-flow-contacts``)."""

    name: str
    addresses: tuple[str, ...]
    registers: Callable[[], int]
    prune_flows: bool = True


@dataclass(frozen=True)
class NodeState:
    """One node as the shared store knows it. ``up``: its heartbeat is recent (and it was not
    found gone); ``rate``: accepted REGISTERs per second over its last heartbeat interval."""

    name: str
    addresses: tuple[str, ...]
    started: float  # epoch seconds
    heartbeat_age: float  # seconds since its last heartbeat
    registers: int
    rate: float
    up: bool

    def to_dict(self) -> dict[str, object]:
        return {"node": self.name, "addresses": list(self.addresses), "started": self.started,
                "heartbeat_age": round(self.heartbeat_age, 3), "registers": self.registers,
                "rate": round(self.rate, 1), "up": self.up}

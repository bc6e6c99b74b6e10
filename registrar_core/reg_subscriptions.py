"""The reg event subscriptions (RFC 6665 dialogs) this registrar notifies, indexed two ways:
by dialog, for in-dialog SUBSCRIBEs, and by AOR, for the location change that concerns it.

Plain data and bookkeeping, no I/O: reg_notifier.py accepts the SUBSCRIBEs, sends the
NOTIFYs and arms the expiry timers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .client_transactions import ClientTransaction
from .reginfo import ContactInfo
from .sip import SipURI
from .source import format_address

DialogId = tuple[str, str, str]  # Call-ID, our tag, the subscriber's tag


@dataclass(eq=False)
class Subscription:
    """One subscriber's dialog for one AOR, and what its next NOTIFY must say."""

    aor: str  # user@host, the location table's key
    watcher: str  # the subscriber's From URI, as shown to operators
    event: str  # the Event header as received (with its id parameter), echoed in NOTIFYs
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # the SUBSCRIBE's To (without tag): the NOTIFY's From
    remote_uri: str  # the SUBSCRIBE's From (with tag): the NOTIFY's To
    remote_target: SipURI  # the SUBSCRIBE's Contact: the NOTIFY's Request-URI
    route_set: tuple[str, ...]  # the SUBSCRIBE's Record-Route, in order (RFC 3261 §12.1.1)
    local: str  # our socket that took the SUBSCRIBE ("udp:127.0.0.1:5060")
    conid: int | None  # its TCP/TLS/WebSocket connection: NOTIFYs go through it
    addr: tuple[str, int]  # where the SUBSCRIBE came from: NOTIFYs go there (NAT-safe)
    transport: str  # "udp", "tcp", "tls", "ws", "wss"
    remote_cseq: int
    expires_at: float  # the core's clock
    local_cseq: int = 0
    version: int = -1  # the reginfo version of the last NOTIFY; the first one says 0
    notified: int = 0  # NOTIFYs answered with 2xx
    outstanding: ClientTransaction | None = None  # RFC 6665 §4.2.2: one NOTIFY at a time
    full_due: bool = True  # the next NOTIFY carries full state
    pending: dict[str, ContactInfo] = field(default_factory=dict)  # by contact id, for a partial
    final: str = ""  # Subscription-State reason of the terminating NOTIFY still to send
    ended: bool = False  # the terminating NOTIFY went out: nothing more to send
    timer: asyncio.TimerHandle | None = None

    @property
    def dialog(self) -> DialogId:
        return self.call_id, self.local_tag, self.remote_tag

    def to_dict(self, now: float) -> dict[str, Any]:
        """What ``ctl subscriptions`` and the console show."""
        return {"aor": self.aor, "watcher": self.watcher, "source": format_address(self.transport, *self.addr),
                "expires": max(0, int(self.expires_at - now + 0.5)), "expires_at": self.expires_at,
                "version": self.version, "notified": self.notified, "call_id": self.call_id,
                "event": self.event}


class SubscriptionTable:
    """Every live subscription: by dialog, and per AOR (the notifier's one lookup per change)."""

    def __init__(self) -> None:
        self.by_dialog: dict[DialogId, Subscription] = {}
        self.by_aor: dict[str, dict[DialogId, Subscription]] = {}

    def __len__(self) -> int:
        return len(self.by_dialog)

    def add(self, sub: Subscription) -> None:
        self.by_dialog[sub.dialog] = sub
        self.by_aor.setdefault(sub.aor, {})[sub.dialog] = sub

    def remove(self, sub: Subscription) -> None:
        if self.by_dialog.pop(sub.dialog, None) is None:
            return
        watchers = self.by_aor.get(sub.aor)
        if watchers is not None:
            watchers.pop(sub.dialog, None)
            if not watchers:
                del self.by_aor[sub.aor]

    def get(self, dialog: DialogId) -> Subscription | None:
        return self.by_dialog.get(dialog)

    def of(self, aor: str | None = None) -> list[Subscription]:
        """The subscriptions of ``aor`` (all when None), by AOR then watcher."""
        subs = list(self.by_dialog.values()) if aor is None else list(self.by_aor.get(aor, {}).values())
        return sorted(subs, key=lambda s: (s.aor, s.watcher, s.call_id))

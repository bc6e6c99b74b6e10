"""Non-INVITE server transactions (RFC 3261 §17.2.2), reduced to what a registrar needs:
a retransmitted request gets the same response again and is not processed twice."""

from __future__ import annotations

import time
from collections import deque

from .sip import Request

MAGIC_COOKIE = "z9hG4bK"
TIMER_J = 32.0  # 64*T1: how long a completed transaction absorbs retransmissions
Reply = tuple[bytes, tuple[str, int]]  # a response and where it goes
IN_PROGRESS = b""  # the table's value while a transaction has no response yet
# Transactions remembered at most. At 30,000 REGISTER/s Timer J alone would keep about a
# million (600 MB, 650 bytes each) during a registration storm; past this bound the oldest go
# early. A retransmission of one of those is processed again, which changes nothing: the
# same Call-ID and CSeq never update a binding (RFC 3261 §10.3 step 7), the reply lists the
# current bindings, and a retransmitted challenge gets a fresh nonce.
MAX_TRANSACTIONS = 200_000


def transaction_key(request: Request) -> str:
    """RFC 3261 §17.2.3 matching; RFC 2543 fallback when the branch lacks the cookie.

    One string (its parts hold no spaces), so that the table holds no per-request
    containers for the garbage collector to walk."""
    via = request.vias[0]
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    port = via.port
    if branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
        # One f-string: no sent-by string apart; the port formatted as an int (compiled, "port or ''"
        # is an object formatted through a generic str()).
        if port is None:
            return f"{branch} {via.host}: {method}"
        return f"{branch} {via.host}:{port} {method}"
    return (f"{request.call_id} {request.cseq[0]} {method} {request.from_.tag or ''} "
            f"{via.host}:{via.port or ''} {branch}")


class TransactionTable:
    """Responses of recent transactions, forgotten Timer J after the request came.

    Keys are strings and values response bytes (a retransmission carries the same Via,
    so where the response goes is worked out from it again); deadlines queue in arrival
    order. Timer J counts from arrival rather than from the response (milliseconds apart).
    Beyond ``max_entries`` the oldest are forgotten early (``evicted`` counts them).
    """

    def __init__(self, lifetime: float = TIMER_J, clock=time.monotonic,
                 max_entries: int = MAX_TRANSACTIONS) -> None:
        self._entries: dict[str, bytes] = {}
        self._deadlines: deque[float] = deque()
        self._keys: deque[str] = deque()
        self._lifetime = lifetime
        self._clock = clock
        self._max_entries = max_entries
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> bytes | None:
        """None for a new transaction; IN_PROGRESS or the final response for a known one."""
        return self._entries.get(key)

    def begin(self, key: str) -> None:
        now = self._clock()
        deadlines, keys = self._deadlines, self._keys
        while deadlines and deadlines[0] <= now:
            deadlines.popleft()
            self._entries.pop(keys.popleft(), None)
        if len(keys) >= self._max_entries:
            deadlines.popleft()
            if self._entries.pop(keys.popleft(), None):  # completed: one whose retransmission may come
                self.evicted += 1
        self._entries[key] = IN_PROGRESS
        deadlines.append(now + self._lifetime)
        keys.append(key)

    def complete(self, key: str, response: bytes) -> None:
        if key in self._entries:  # not when evicted meanwhile: it has left the deadline queue
            self._entries[key] = response

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

"""Non-INVITE server transactions (RFC 3261 §17.2.2), reduced to what a registrar needs:
a retransmitted request gets the same response again and is not processed twice."""

from __future__ import annotations

import time
from collections import deque

from .sip import Request

MAGIC_COOKIE = "z9hG4bK"
TIMER_J = 32.0  # 64*T1: how long a completed transaction absorbs retransmissions
Reply = tuple[bytes, tuple[str, int]]  # the response and where it goes
IN_PROGRESS: Reply = (b"", ("", 0))


def transaction_key(request: Request) -> tuple[str, ...]:
    """RFC 3261 §17.2.3 matching; RFC 2543 fallback when the branch lacks the cookie."""
    via = request.vias[0]
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    sent_by = f"{via.host}:{via.port or ''}"
    if branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
        return (branch, sent_by, method)
    return (request.call_id, str(request.cseq[0]), method, request.from_.tag or "", sent_by, branch)


class TransactionTable:
    """Responses of recent transactions, forgotten Timer J after the request came.

    A plain dict and a queue of deadlines in arrival order: no per-request reordering.
    Timer J counts from arrival rather than from the response (milliseconds apart).
    """

    def __init__(self, lifetime: float = TIMER_J, clock=time.monotonic) -> None:
        self._entries: dict[tuple[str, ...], Reply] = {}
        self._deadlines: deque[tuple[float, tuple[str, ...]]] = deque()
        self._lifetime = lifetime
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: tuple[str, ...]) -> Reply | None:
        """None for a new transaction; IN_PROGRESS or the final response for a known one."""
        return self._entries.get(key)

    def begin(self, key: tuple[str, ...]) -> None:
        now = self._clock()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            self._entries.pop(deadlines.popleft()[1], None)
        self._entries[key] = IN_PROGRESS
        deadlines.append((now + self._lifetime, key))

    def complete(self, key: tuple[str, ...], response: Reply) -> None:
        self._entries[key] = response

    def forget(self, key: tuple[str, ...]) -> None:
        self._entries.pop(key, None)

"""Non-INVITE client transactions (RFC 3261 §17.1.2): send a request, retransmit it over
UDP, match its responses, and tell the owner how it ended.

Strategy (h11 style): every transaction is a small state machine driven by two inputs, a
response (:meth:`ClientTransactions.receive`) and a timer firing (:meth:`ClientTransactions.poll`);
the only output is the send callable and the owner's ``on_done`` callback, called once per
transaction with the final response, or None with ``error`` saying why (Timer F, or the
transport refusing a retransmission, §17.1.4). Nothing here knows sockets: the
sender is the core's hook ``(local socket, conid, (host, port), bytes) -> sent?``. One timer
heap holds the timers of every transaction and one event-loop timer handle is armed for the
earliest, so 100k outstanding OPTIONS cost no task each. A transaction has one timer pending
at a time (E, F or K, told apart by its state and the time); a rescheduled one leaves a stale
heap item, skipped when popped. With ``arm_timers=False`` the caller drives :meth:`poll`
itself (tests use a fake clock).

State table (Figure 6; "reliable" is TCP):

=============  ====================  ================================================
state          input                 action, next state
=============  ====================  ================================================
Trying         Timer E (UDP)         retransmit, E = min(2E, T2); Trying
Trying         1xx                   Proceeding
Trying/Proc.   2xx-6xx               report; Completed (UDP, Timer K = T4) / Terminated
Proceeding     Timer E (UDP)         retransmit, E = T2; Proceeding
Proceeding     1xx                   Proceeding
Trying/Proc.   Timer F               report None (error "timeout"); Terminated
Trying/Proc.   Timer E, send fails   report None (error "transport error"); Terminated
Completed      any response          absorbed (a retransmitted final response)
Completed      Timer K               Terminated (forgotten)
=============  ====================  ================================================

A request the transport refuses at once is never a transaction: :meth:`start` returns None.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from .sip import Response

T1 = 0.5  # RTT estimate (RFC 3261 §17.1.1.1)
T2 = 4.0  # longest retransmit interval for non-INVITE requests
T4 = 5.0  # how long the network may hold a message: Timer K on UDP
TIMER_F = 64 * T1

TIMEOUT = "timeout"  # ClientTransaction.error when reported without a response
TRANSPORT_ERROR = "transport error"

TRYING = "trying"
PROCEEDING = "proceeding"
COMPLETED = "completed"
TERMINATED = "terminated"

Sender = Callable[[str, int | None, tuple[str, int], bytes], bool]
log = logging.getLogger(__name__)


class ClientTransaction:
    """One outstanding request. ``context`` is the owner's (qualify keeps its contact there)."""

    __slots__ = ("branch", "method", "data", "local", "conid", "addr", "reliable", "state",
                 "started", "deadline", "interval", "timer_at", "retransmissions", "error", "on_done",
                 "context")

    def __init__(self, branch: str, method: str, data: bytes, local: str, conid: int | None,
                 addr: tuple[str, int], reliable: bool, started: float, deadline: float,
                 on_done: Callable[[ClientTransaction, Response | None], None], context: Any) -> None:
        self.branch = branch
        self.method = method
        self.data = data
        self.local = local
        self.conid = conid
        self.addr = addr
        self.reliable = reliable
        self.state = TRYING
        self.started = started
        self.deadline = deadline  # Timer F
        self.interval = 0.0  # Timer E's current value; 0: no retransmissions (TCP, or not asked)
        self.timer_at = deadline  # the one timer pending: E, F or K by the state and the time
        self.retransmissions = 0
        self.error = ""  # TIMEOUT or TRANSPORT_ERROR when it ended without a final response
        self.on_done = on_done
        self.context = context


class ClientTransactions:
    """Every client transaction of the core, keyed by top Via branch (§17.1.3: branch and
    CSeq method); see the module docstring."""

    def __init__(self, send: Sender, *, clock: Callable[[], float] = time.monotonic,
                 arm_timers: bool = True) -> None:
        self.send = send
        self.clock = clock
        self.arm_timers = arm_timers
        self._transactions: dict[str, ClientTransaction] = {}
        self._timers: list[tuple[float, int, ClientTransaction]] = []  # stale when != tx.timer_at
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0

    def __len__(self) -> int:
        return len(self._transactions)

    def start(self, data: bytes, *, branch: str, method: str, local: str, conid: int | None,
              addr: tuple[str, int], transport: str,
              on_done: Callable[[ClientTransaction, Response | None], None],
              timeout: float = TIMER_F, retransmit: bool = True, context: Any = None,
              ) -> ClientTransaction | None:
        """Send ``data`` (a request whose top Via carries ``branch``) and follow it.

        ``timeout`` is Timer F (qualify asks for less than 64*T1); ``retransmit=False``
        turns Timer E off. Returns None, having reported nothing, when the transport
        refuses the request at once (a closed TCP connection, an unknown socket).
        """
        if not self.send(local, conid, addr, data):
            return None
        now = self.clock()
        reliable = conid is not None or transport.lower() != "udp"
        tx = ClientTransaction(branch, method, data, local, conid, addr, reliable, now, now + timeout,
                               on_done, context)
        self._transactions[branch] = tx
        if retransmit and not reliable:
            tx.interval = T1
        self._schedule(tx, min(now + T1, tx.deadline) if tx.interval else tx.deadline)
        return tx

    def receive(self, response: Response, _source: object = None) -> bool:
        """A response from the transports (the core's response sink); True when it matched."""
        vias = response.vias
        if not vias:
            return False
        tx = self._transactions.get(vias[0].branch or "")
        if tx is None or response.cseq[1] != tx.method:
            return False
        if tx.state == COMPLETED:
            return True  # a retransmitted final response
        if response.status < 200:
            tx.state = PROCEEDING
            return True
        tx.data = b""  # never sent again: 100k completed probes need not keep their requests
        if tx.reliable:
            self._terminate(tx)
        else:
            tx.state = COMPLETED
            self._schedule(tx, self.clock() + T4)
        _report(tx, response)
        return True

    def cancel(self, tx: ClientTransaction) -> None:
        """The owner lost interest: forget it without reporting (its timers go stale)."""
        if tx.state != TERMINATED:
            self._terminate(tx)

    def poll(self) -> float | None:
        """Fire every timer due now; returns when the next one is due (None: no timers)."""
        timers = self._timers
        now = self.clock()
        while timers and timers[0][0] <= now:
            when, _, tx = heapq.heappop(timers)
            if when != tx.timer_at or tx.state == TERMINATED:
                continue  # rescheduled since, or over
            if tx.state == COMPLETED:  # Timer K
                self._terminate(tx)
            elif when >= tx.deadline:  # Timer F
                self._fail(tx, TIMEOUT)
            elif not self.send(tx.local, tx.conid, tx.addr, tx.data):  # Timer E, §17.1.4
                self._fail(tx, TRANSPORT_ERROR)
            else:  # Timer E
                tx.retransmissions += 1
                tx.interval = T2 if tx.state == PROCEEDING else min(tx.interval * 2, T2)
                self._schedule(tx, min(now + tx.interval, tx.deadline))
        return timers[0][0] if timers else None

    # -- internals --------------------------------------------------------------------
    def _fail(self, tx: ClientTransaction, error: str) -> None:
        tx.error = error
        self._terminate(tx)
        _report(tx, None)

    def _terminate(self, tx: ClientTransaction) -> None:
        tx.state = TERMINATED
        if self._transactions.get(tx.branch) is tx:
            del self._transactions[tx.branch]

    def _schedule(self, tx: ClientTransaction, when: float) -> None:
        """Set the transaction's one pending timer (what was pending before goes stale)."""
        tx.timer_at = when
        heapq.heappush(self._timers, (when, next(self._seq), tx))
        if self.arm_timers and (self._handle is None or when < self._armed_at):
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = asyncio.get_running_loop().call_later(max(when - self.clock(), 0.0), self._fire)

    def _fire(self) -> None:
        self._handle = None
        upcoming = self.poll()
        if upcoming is not None:
            self._arm(upcoming)


def _report(tx: ClientTransaction, response: Response | None) -> None:
    """Tell the owner; its failure must not stop the timers of every other transaction."""
    try:
        tx.on_done(tx, response)
    except Exception:
        log.exception("client transaction %s: its owner failed on the outcome", tx.branch)


__all__ = ["COMPLETED", "PROCEEDING", "T1", "T2", "T4", "TERMINATED", "TIMEOUT", "TIMER_F",
           "TRANSPORT_ERROR", "TRYING", "ClientTransaction", "ClientTransactions"]

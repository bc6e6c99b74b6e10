"""Counters in Kamailio's vocabulary (accepted_regs, rejected_regs, ...), plus ``challenged``:
a 401 asking for credentials is the first half of every healthy digest registration, not a
rejection, so it is counted apart (rejected_regs counts what really failed)."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    accepted_regs: int = 0
    rejected_regs: int = 0
    challenged: int = 0  # REGISTERs answered with a digest challenge (no or stale credentials)
    keepalives: int = 0  # UDP CRLF and STUN keepalives (RFC 5626), never parse errors
    # Requests by method: a plain dict (compiled, native dict calls; a Counter's item get and
    # set are generic ones, about 1,000 instructions a request).
    requests: dict[str, int] = field(default_factory=dict)
    # Responses by status code, in a list indexed by the code: compiled, counting one is an
    # index and an add, where a Counter keyed by str(status) was a string made and two generic
    # dict calls (about 2,000 instructions a response). Read as ``responses``.
    by_status: list[int] = field(default_factory=lambda: [0] * 700)
    security: Counter[str] = field(default_factory=Counter)
    parse_errors: int = 0
    retransmissions: int = 0
    # REGISTERs per second over the last ten minutes, newest last: (second, count); the current
    # second counted apart, in two ints (compiled, no deque item read and written per REGISTER).
    register_rate: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=600))
    rate_second: int = -1
    rate_count: int = 0

    def count_request(self, method: str) -> None:
        requests = self.requests
        requests[method] = requests.get(method, 0) + 1

    def count_register(self, accepted: bool, challenged: bool, now: float) -> None:
        if accepted:
            self.accepted_regs += 1
        elif challenged:
            self.challenged += 1
        else:
            self.rejected_regs += 1
        second = int(now)
        if second == self.rate_second:
            self.rate_count += 1
        else:
            if self.rate_count:
                self.register_rate.append((self.rate_second, self.rate_count))
            self.rate_second = second
            self.rate_count = 1

    @property
    def responses(self) -> Counter[str]:
        """Responses sent, by status code ("200": n), as the stats and metrics report them."""
        return Counter({str(status): n for status, n in enumerate(self.by_status) if n})

    def rate_series(self, now: float, seconds: int = 120) -> list[int]:
        """REGISTERs per second for the last ``seconds`` whole seconds, oldest first."""
        counts = dict(self.register_rate)
        if self.rate_count:
            counts[self.rate_second] = self.rate_count
        end = int(now)
        return [counts.get(s, 0) for s in range(end - seconds, end)]

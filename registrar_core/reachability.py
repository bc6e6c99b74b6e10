"""The reachability of one contact as qualify sees it, and what routing does with it.

A pure state record (no I/O, no clock of its own): :mod:`registrar_core.qualify` keeps one per
contact, feeds it each probe's outcome and publishes ``contact.reachability`` when
:meth:`Reachability.observe` says the change is worth an event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .location import Contact

UNKNOWN = "unknown"  # never answered yet
REACHABLE = "reachable"
UNREACHABLE = "unreachable"
_RANK = {REACHABLE: 0, UNKNOWN: 1, UNREACHABLE: 2}


class Reachability:
    """State, RTT and failure count of one contact; the target and reason of its last probe."""

    __slots__ = ("state", "rtt_ms", "last_checked", "failures", "reason", "target")

    def __init__(self) -> None:
        self.state = UNKNOWN
        self.rtt_ms: float | None = None
        self.last_checked: float | None = None
        self.failures = 0
        self.reason = ""
        self.target = ""

    def observe(self, rtt_ms: float | None, reason: str, when: float) -> bool:
        """One probe's outcome (rtt_ms None: failed). True when it makes news: the state
        changed, or a reachable contact's RTT moved by 25 % and at least 1 ms."""
        previous_state, previous_rtt = self.state, self.rtt_ms
        self.last_checked = when
        self.state = UNREACHABLE if rtt_ms is None else REACHABLE
        self.failures = self.failures + 1 if rtt_ms is None else 0
        self.rtt_ms = None if rtt_ms is None else round(rtt_ms, 3)
        self.reason = reason
        return previous_state != self.state or (
            rtt_ms is not None and previous_rtt is not None
            and abs(rtt_ms - previous_rtt) >= max(1.0, 0.25 * previous_rtt))

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "rtt_ms": self.rtt_ms, "last_checked": self.last_checked,
                "failures": self.failures, "reason": self.reason}


def order(contacts: Iterable[Contact], known: Mapping[str, Reachability], *, by_latency: bool = False,
          max_latency_ms: float | None = None) -> list[Contact]:
    """Reachable contacts first, then unknown (not in ``known``), then unreachable: a stable
    sort, so the caller's q / newest order holds within each group. ``by_latency`` sorts the
    reachable ones by RTT (OpenSIPS sort-by-latency); ``max_latency_ms`` drops reachable
    contacts slower than that (OpenSIPS max-ping-latency)."""

    def key(c: Contact) -> tuple[int, float]:
        r = known.get(c.ruid)
        if r is None:
            return _RANK[UNKNOWN], 0.0
        rank = _RANK[r.state]
        return rank, (r.rtt_ms or 0.0) if by_latency and rank == 0 else 0.0

    out = list(contacts)
    if max_latency_ms is not None:
        out = [c for c in out if not ((r := known.get(c.ruid)) and r.state == REACHABLE
                                       and r.rtt_ms is not None and r.rtt_ms > max_latency_ms)]
    out.sort(key=key)
    return out


__all__ = ["REACHABLE", "UNKNOWN", "UNREACHABLE", "Reachability", "order"]

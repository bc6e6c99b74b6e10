"""The reachability of one contact as qualify sees it, and what routing does with it.

A pure state record (no I/O, no clock of its own): :mod:`registrar_core.qualify` keeps one per
contact, feeds it each probe's outcome and publishes ``contact.reachability`` when
:meth:`Reachability.observe` says the change is worth an event.

It also keeps the contact's recent past, for "why is this phone unreachable now and then":
the last :data:`HISTORY` RTTs and state changes, in compact arrays (a few hundred bytes per
qualified contact, nothing for one never probed), and whether it is flapping.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping
from typing import Any

from .location import Contact

UNKNOWN = "unknown"  # never answered yet
REACHABLE = "reachable"
UNREACHABLE = "unreachable"
_RANK = {REACHABLE: 0, UNKNOWN: 1, UNREACHABLE: 2}
HISTORY = 32  # probe outcomes and state changes kept per contact


class Reachability:
    """State, RTT and failure count of one contact; the target and reason of its last probe."""

    __slots__ = ("state", "rtt_ms", "last_checked", "failures", "reason", "target", "rtts", "changes")

    def __init__(self) -> None:
        self.state = UNKNOWN
        self.rtt_ms: float | None = None
        self.last_checked: float | None = None
        self.failures = 0
        self.reason = ""
        self.target = ""
        # The last HISTORY probes' RTTs in ms, oldest first, NaN for no answer (float32: enough
        # for milliseconds); made at the first probe.
        self.rtts: array[float] | None = None
        # When the state changed between reachable and unreachable (epoch seconds), oldest
        # first: positive when it became reachable, negative when it became unreachable.
        self.changes: array[float] | None = None

    def observe(self, rtt_ms: float | None, reason: str, when: float) -> bool:
        """One probe's outcome (rtt_ms None: failed). True when it makes news: the state
        changed, or a reachable contact's RTT moved by 25 % and at least 1 ms."""
        previous_state, previous_rtt = self.state, self.rtt_ms
        self.last_checked = when
        self.state = UNREACHABLE if rtt_ms is None else REACHABLE
        self.failures = self.failures + 1 if rtt_ms is None else 0
        self.rtt_ms = None if rtt_ms is None else round(rtt_ms, 3)
        self.reason = reason
        _keep(self.rtts if self.rtts is not None else self._new_rtts(), math.nan if rtt_ms is None else rtt_ms)
        if previous_state != self.state and previous_state != UNKNOWN:
            if self.changes is None:
                self.changes = array("d")
            _keep(self.changes, when if self.state == REACHABLE else -when)
        return previous_state != self.state or (
            rtt_ms is not None and previous_rtt is not None
            and abs(rtt_ms - previous_rtt) >= max(1.0, 0.25 * previous_rtt))

    def _new_rtts(self) -> array[float]:
        self.rtts = array("f")
        return self.rtts

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "rtt_ms": self.rtt_ms, "last_checked": self.last_checked,
                "failures": self.failures, "reason": self.reason}

    def flapping(self, now: float, changes: int, window: float) -> bool:
        """At least ``changes`` reachable/unreachable changes within the last ``window`` seconds."""
        if self.changes is None or len(self.changes) < changes:
            return False
        return abs(self.changes[-changes]) >= now - window

    def history(self, now: float, changes: int, window: float) -> dict[str, Any]:
        """The recent past: ``rtts`` (ms, oldest first, None: no answer), ``changes``
        ([epoch seconds, new state], oldest first) and ``flapping``."""
        return {
            "rtts": [None if math.isnan(v) else round(v, 3) for v in self.rtts or ()],
            "changes": [[abs(t), REACHABLE if t > 0 else UNREACHABLE] for t in self.changes or ()],
            "flapping": self.flapping(now, changes, window),
        }


def _keep(ring: array[float], value: float) -> None:
    """Append to a ring of HISTORY values (the oldest goes: a 128-byte move)."""
    ring.append(value)
    if len(ring) > HISTORY:
        del ring[0]


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


__all__ = ["HISTORY", "REACHABLE", "UNKNOWN", "UNREACHABLE", "Reachability", "order"]

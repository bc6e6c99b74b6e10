"""Short, aligned renderings of durations, counts, times and rates."""

from __future__ import annotations

import time
from collections.abc import Sequence

BARS = "▁▂▃▄▅▆▇█"


def duration(seconds: float) -> str:
    """``42s``, ``12m05s``, ``3h07m``, ``2d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def countdown(expires_at: float, now: float) -> tuple[str, str]:
    """Time left until ``expires_at`` and its tone: warn under a minute, error once expired."""
    left = expires_at - now
    if left <= 0:
        return "expired", "error"
    return duration(left + 0.5), "warn" if left < 60 else ""


def count(n: int) -> str:
    return f"{n:,}"


def clock_time(epoch: float) -> str:
    """Local wall-clock time, ``HH:MM:SS``."""
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def wall_time(epoch: float) -> str:
    """Local date and time, ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def sparkline(values: Sequence[int], width: int) -> str:
    """``values`` squeezed into ``width`` bars (the peak of each bucket), oldest first."""
    if not values or width <= 0:
        return ""
    step = max(1, -(-len(values) // width))
    buckets = [max(values[i:i + step]) for i in range(0, len(values), step)]
    top = max(buckets) or 1
    return "".join(BARS[min(len(BARS) - 1, v * (len(BARS) - 1) // top)] if v else " " for v in buckets)


ADDRESS_WIDTH = 25  # "tcp:255.255.255.255:65535": every IPv4 transport address in full


def short_address(address: str, width: int = ADDRESS_WIDTH) -> str:
    """A transport address in ``width`` cells: an IPv6 host gives up the middle of its text
    (``udp:[2001:db8:…:7348]:5060``) so the transport and the port stay; others are unchanged."""
    if len(address) <= width:
        return address
    start, bracket, rest = address.partition("[")
    host, close, tail = rest.partition("]")
    room = width - len(start) - len(tail) - 3  # the brackets and the ellipsis
    if not (bracket and close) or room < 4:
        return address
    return f"{start}[{host[:room - room // 2]}…{host[len(host) - room // 2:]}]{tail}"


def status_tone(status: int) -> str:
    """Table tone of a SIP status code."""
    if status < 300:
        return "ok"
    if status < 500:
        return "warn"
    return "error"

"""Source-address defences: a per-IP request budget with temporary bans (pike / fail2ban
style), trusted peers exempt from both, scanner User-Agents, and the SIPSEC log lines
fail2ban can parse.

The source is always the socket's address, never anything a header claims.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Iterable

log = logging.getLogger("sipconsole.security")

SCANNER_AGENTS = re.compile(r"friendly|scanner|sipcli|sipvicious|VaxSIPUserAgent|pplsip", re.I)
WINDOW = 2.0  # seconds per budget window, as pike's sampling_time_unit
ADMIT, DROP, BAN = "admit", "drop", "ban"  # verdicts of IpGuard.admit


def sipsec(event: str, ip: str, port: int, user: str = "") -> None:
    """``SIPSEC <event> src=<ip>:<port> user="<escaped>"`` — one anchored line per event."""
    escaped = user.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    log.warning('SIPSEC %s src=%s:%d user="%s"', event, ip, port, escaped)


class IpGuard:
    """Per-IP budget and bans. Trusted peers (an edge proxy or SBC, through which every phone
    arrives from one address; loopback, where load tests run) are never banned: one ban there
    would take the whole service down."""

    def __init__(self, budget: int, ban_time: float, trusted: Iterable[str] = (), *,
                 clock=time.monotonic) -> None:
        self.budget = budget  # requests per WINDOW per source IP; 0 = no limit
        self.ban_time = ban_time
        self.clock = clock
        self._trusted_networks = [ipaddress.ip_network(cidr, strict=False) for cidr in trusted]
        self._trusted: dict[str, bool] = {}  # ip -> in a trusted network (asked once per address)
        self._windows: dict[str, list[float]] = {}  # ip -> [window start, count]
        self.bans: dict[str, float] = {}  # ip -> until (monotonic)

    def admit(self, ip: str) -> str:
        """Count one request from ``ip``: ADMIT, DROP (banned), or BAN (just went over budget)."""
        if not self.budget and not self.bans:
            return ADMIT
        now = self.clock()
        until = self.bans.get(ip)
        if until is not None:
            if until > now:
                return DROP
            del self.bans[ip]
        if not self.budget:
            return ADMIT
        window = self._windows.get(ip)
        if window is None or now - window[0] >= WINDOW:
            if len(self._windows) > 100_000:
                self._windows = {k: w for k, w in self._windows.items() if now - w[0] < WINDOW}
            self._windows[ip] = [now, 1]
            return ADMIT
        window[1] += 1
        if window[1] > self.budget:
            del self._windows[ip]  # a trusted peer starts a new window: asked once per budget
            return BAN if self.ban(ip) else ADMIT
        return ADMIT

    def trusted(self, ip: str) -> bool:
        known = self._trusted.get(ip)
        if known is None:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                return False
            known = any(address in network for network in self._trusted_networks)
            if len(self._trusted) > 100_000:
                self._trusted.clear()
            self._trusted[ip] = known
        return known

    def ban(self, ip: str) -> bool:
        """Ban ``ip`` for ban_time unless it is trusted; True when it is banned now."""
        if self.trusted(ip):
            return False
        self.bans[ip] = self.clock() + self.ban_time
        return True

    def banned(self, ip: str) -> bool:
        until = self.bans.get(ip)
        return until is not None and until > self.clock()

    def expired_bans(self) -> list[str]:
        """Lift the bans whose time is up; returns their IPs."""
        now = self.clock()
        gone = [ip for ip, until in self.bans.items() if until <= now]
        for ip in gone:
            del self.bans[ip]
        return gone


def is_scanner(user_agent: str | None) -> bool:
    return bool(user_agent and SCANNER_AGENTS.search(user_agent))

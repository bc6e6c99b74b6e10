"""One qualify probe: where the OPTIONS goes (planned from the stored contact, RFC 3263 DNS
for a host name), what it says, and what its client transaction's outcome means.

Apart from :mod:`registrar_core.qualify`, which keeps the scheduling (when, how many at once)
and the reachability state; the retransmissions, timeout and response matching are the
core's :class:`~registrar_core.client_transactions.ClientTransactions`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import secrets
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .client_transactions import TRANSPORT_ERROR, ClientTransaction, ClientTransactions
from .location import Contact
from .resolver import Resolution, Resolver
from .sip import Headers, Request, Response, SipError, SipURI, parse_name_addr, parse_uri
from .source import parse_address

# How a probe ended: (the owner's context, RTT in ms or None when it failed, reason, target).
Report = Callable[[Any, float | None, str, str], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where and how one probe goes; ``hop`` is a URI to resolve, else ``addr`` is final."""

    local: str
    conid: int | None
    transport: str
    request_uri: str
    routes: tuple[str, ...]
    hop: str | None
    addr: tuple[str, int] | None


def plan_probe(contact: Contact, use_received: str) -> Plan | str:
    """Where the probe of ``contact`` goes, or why it cannot be sent.

    Over the device's own TCP connection when it has one (its flow: no DNS); with a Path,
    to the first Path URI with the Path as Route set (RFC 3327); an IP-literal contact at
    its ``received`` address (``use_received`` "auto"; "always" for every contact, "never"
    to resolve the contact URI instead).
    """
    if not contact.socket:
        return "registered without a socket"
    try:
        proto, _host, _port = parse_address(contact.socket)
    except ValueError:
        return f"bad socket {contact.socket!r}"
    routes = tuple(contact.path)
    if contact.conid is not None:
        return Plan(contact.socket, contact.conid, proto, contact.addr, routes, None,
                    _address(contact.received) or ("0.0.0.0", 0))
    if proto != "udp":
        return "its TCP connection is closed"
    if routes:
        try:
            hop_uri = parse_name_addr(routes[0]).uri
        except SipError:
            return f"bad Path {routes[0]!r}"
        return Plan(contact.socket, None, "udp", contact.addr, routes, str(hop_uri.raw or hop_uri), None)
    received = _address(contact.received) if use_received != "never" else None
    if received is not None and (use_received == "always" or _literal_contact(contact.addr)):
        return Plan(contact.socket, None, "udp", contact.addr, (), None, received)
    return Plan(contact.socket, None, "udp", contact.addr, (), contact.addr, None)


def resolved_address(plan: Plan, resolution: Resolution) -> tuple[str, int] | str:
    """The address to probe out of the DNS answer for ``plan.hop`` (the family of the
    socket it leaves from), or why there is none."""
    if not resolution.ok:
        return f"dns {resolution.state}: {resolution.reason}"
    family = 6 if ":" in parse_address(plan.local)[1] else 4
    target = resolution.first(family)
    if target is None:
        return f"dns: no IPv{family} address for {plan.hop}"
    return target.addr


def sent_by_host(host: str, addr: tuple[str, int]) -> str:
    """The address to put in Via and From: ``host``, or, for a socket bound to 0.0.0.0 or ::,
    the address the kernel sends from towards ``addr`` (a route look-up: connecting a UDP
    socket sends nothing). A Via of 0.0.0.0 names no host: a device that answers to the
    sent-by, or checks it, cannot."""
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host
    if not unspecified:
        return host
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(addr)
            return str(probe.getsockname()[0])
    except OSError:  # no route (or the unknown address of a closed flow): nothing better to say
        return host


def options_request(plan: Plan, call_id: str, branch: str, from_user: str, addr: tuple[str, int]) -> bytes:
    """The OPTIONS bytes towards ``addr``; raises SipError when the contact is not a SIP URI."""
    _, host, port = parse_address(plan.local)
    host = sent_by_host(host, addr)
    host = f"[{host}]" if ":" in host else host
    uri = parse_uri(plan.request_uri)
    if not isinstance(uri, SipURI) or uri.scheme not in ("sip", "sips"):
        raise SipError(400, "not a sip URI")
    fields = [("Via", f"SIP/2.0/{plan.transport.upper()} {host}:{port};branch={branch};rport")]
    fields += [("Route", r) for r in plan.routes]
    fields += [
        ("Max-Forwards", "70"),
        ("From", f"<sip:{from_user}@{host}:{port}>;tag={branch[-12:]}"),
        ("To", f"<{plan.request_uri}>"),
        ("Call-ID", call_id),
        ("CSeq", "1 OPTIONS"),
        ("Accept", "application/sdp"),
        ("User-Agent", "sipconsole qualify"),
        ("Content-Length", "0"),
    ]
    return bytes(Request(Headers(fields), b"", method="OPTIONS", uri=uri))


class Prober:
    """Sends one OPTIONS per :meth:`probe` and reports its outcome exactly once (unless
    cancelled): reachable with an RTT on any final response except 408 (2xx only with
    ``require_2xx``), failed on a timeout, a send failure, a DNS failure or an unusable
    contact. ``counters`` gets sent, retransmitted, answered, timeouts and failed."""

    def __init__(self, transactions: ClientTransactions, resolver: Resolver, report: Report,
                 counters: Counter[str], *, timeout: float, retransmit: bool, require_2xx: bool,
                 use_received: str, from_user: str) -> None:
        if use_received not in ("auto", "always", "never"):
            raise ValueError("use_received must be 'auto', 'always' or 'never'")
        self.transactions = transactions
        self.resolver = resolver
        self.report = report
        self.counters = counters
        self.timeout = timeout
        self.retransmit = retransmit
        self.require_2xx = require_2xx
        self.use_received = use_received
        self.from_user = from_user
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self._resolving: set[asyncio.Task[None]] = set()

    def probe(self, contact: Contact, context: Any) -> ClientTransaction | asyncio.Task[None] | None:
        """Start probing ``contact``; returns what :meth:`cancel` takes, or None when the
        outcome was reported already. Only a host name not in the DNS cache gets a task."""
        plan = plan_probe(contact, self.use_received)
        if isinstance(plan, str):
            self.report(context, None, plan, "")
            return None
        if plan.addr is not None:
            return self._send(plan, plan.addr, context)
        assert plan.hop is not None
        resolution = self.resolver.cached(plan.hop, transports=(plan.transport,))
        if resolution is not None:
            return self._send(plan, resolved_address(plan, resolution), context)
        task = asyncio.ensure_future(self._resolve_and_send(plan, plan.hop, context))
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)
        return task

    def cancel(self, handle: ClientTransaction | asyncio.Task[None]) -> None:
        """Forget a probe without a report."""
        if isinstance(handle, ClientTransaction):
            self.transactions.cancel(handle)
        else:
            handle.cancel()

    async def close(self) -> None:
        """Cancel the DNS lookups under way."""
        tasks = list(self._resolving)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _resolve_and_send(self, plan: Plan, hop: str, context: Any) -> None:
        try:
            resolution = await self.resolver.resolve(hop, transports=(plan.transport,))
        except Exception as exc:  # the probe must still end, or it stays in flight for ever
            log.exception("qualify: resolving %s failed", hop)
            self.report(context, None, f"dns error: {exc}", "")
            return
        self._send(plan, resolved_address(plan, resolution), context)

    def _send(self, plan: Plan, addr: tuple[str, int] | str, context: Any) -> ClientTransaction | None:
        if isinstance(addr, str):
            self.report(context, None, addr, "")
            return None
        token = f"{next(self._ids):x}{secrets.token_hex(6)}"  # unguessable: a forged 200 cannot match
        branch = f"z9hG4bKq{token}"
        try:
            data = options_request(plan, f"q{self._prefix}-{token}", branch, self.from_user, addr)
        except SipError as exc:
            self.report(context, None, f"bad contact URI ({exc.reason})", "")
            return None
        target = f"{plan.transport}:{addr[0]}:{addr[1]}" if plan.conid is None else f"conn {plan.conid}"
        tx = self.transactions.start(
            data, branch=branch, method="OPTIONS", local=plan.local, conid=plan.conid, addr=addr,
            transport=plan.transport, on_done=self._outcome, timeout=self.timeout,
            retransmit=self.retransmit, context=(context, target))
        if tx is None:
            self.counters["failed"] += 1
            why = "its TCP connection is closed" if plan.conid is not None else f"cannot send from {plan.local}"
            self.report(context, None, why, target)
            return None
        self.counters["sent"] += 1
        return tx

    def _outcome(self, tx: ClientTransaction, response: Response | None) -> None:
        """The transaction's end: a final response, or None (Timer F, or a refused retransmission)."""
        context, target = tx.context
        self.counters["retransmitted"] += tx.retransmissions
        if response is None and tx.error == TRANSPORT_ERROR:
            self.counters["failed"] += 1
            self.report(context, None, f"cannot send from {tx.local}", target)
            return
        if response is None:
            self.counters["timeouts"] += 1
            self.report(context, None, f"no answer within {self.timeout:g} s", target)
            return
        self.counters["answered"] += 1
        ok = response.status != 408 and (not self.require_2xx or response.status < 300)
        rtt_ms = (self.transactions.clock() - tx.started) * 1000.0
        self.report(context, rtt_ms if ok else None, f"{response.status} {response.reason}".strip(), target)


def _address(received: str) -> tuple[str, int] | None:
    """``udp:1.2.3.4:5060`` -> ("1.2.3.4", 5060); None when absent or unusable."""
    if not received:
        return None
    try:
        _, host, port = parse_address(received)
    except ValueError:
        return None
    return host, port


def _literal_contact(addr: str) -> bool:
    """Is the contact URI's host an IP address (not a name to resolve)?"""
    try:
        uri = parse_uri(addr)
    except SipError:
        return True  # not resolvable anyway: the received address is the best bet
    if not isinstance(uri, SipURI):
        return True
    try:
        ipaddress.ip_address(uri.host.strip("[]"))
    except ValueError:
        return False
    return True


__all__ = ["Plan", "Prober", "options_request", "plan_probe", "resolved_address", "sent_by_host"]

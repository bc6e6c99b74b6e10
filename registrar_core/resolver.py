"""RFC 3263 §4 server location for SIP URIs: NAPTR -> SRV -> A/AAAA, cached by TTL.

:class:`Resolver` turns a SIP URI (a contact, a Path hop) into an ordered list of
:class:`Target` (transport, IP address, port) to try in turn:

* an IP literal needs no DNS: its port, or 5060 (5061 for sips / TLS);
* an explicit port skips NAPTR and SRV: A/AAAA of the host, at that port;
* a ``transport=`` parameter skips NAPTR: SRV of that transport's service
  (``_sip._udp``, ``_sip._tcp``, ``_sips._tcp``), else A/AAAA at the default port;
* otherwise NAPTR of the host: ``SIP+D2U``, ``SIP+D2T`` and ``SIPS+D2T`` records with
  flag ``s``, by order then preference, each replacement looked up as SRV. Without
  usable NAPTR records, SRV of every allowed transport; without SRV, A/AAAA.

SRV records are ordered by priority, then by RFC 2782 weighted random selection;
a target of "." means the service is not offered there. A and AAAA are both asked
(IPv4 first by default: ``families``).

Answers are cached for their TTL (capped by ``max_ttl``). Failures are cached too,
briefly: NXDOMAIN and "no records" for the zone's negative TTL (at most
``negative_ttl``), timeouts and server failures for ``failure_ttl``. A failed
resolution says why in :attr:`Resolution.state`: ``"nxdomain"``, ``"no records"``,
``"timeout"``, ``"servfail"`` or ``"error"`` (a URI or transport that cannot be used).

The nameservers are configurable: ``Resolver(nameservers=[("127.0.0.1", 5353)])`` (or
``"192.0.2.53"`` / ``"192.0.2.53:5353"``); none means the system's resolv.conf.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from .sip import SipError, SipURI, parse_uri

log = logging.getLogger(__name__)

OK = "ok"
NXDOMAIN = "nxdomain"
NO_RECORDS = "no records"
TIMEOUT = "timeout"
SERVFAIL = "servfail"
ERROR = "error"

TRANSPORTS = ("udp", "tcp", "tls")
# NAPTR service field -> transport (RFC 3263 §4.1); anything else (D2S, E2U...) is skipped.
SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061}
NOT_OFFERED = "service not offered (SRV target '.')"


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send to: ``transport`` is "udp", "tcp" or "tls"; ``address`` an IP."""

    transport: str
    address: str
    port: int
    name: str = ""  # the host name the address came from ("" for an IP literal)

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def addr(self) -> tuple[str, int]:
        return self.address, self.port

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.transport}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome for one URI: targets in the order to try, or a failure state."""

    uri: str
    targets: tuple[Target, ...] = ()
    state: str = OK
    reason: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.targets)

    def first(self, family: int | None = None) -> Target | None:
        """The first target (of IP ``family`` 4 or 6, when given)."""
        for target in self.targets:
            if family is None or target.family == family:
                return target
        return None


@dataclass(frozen=True, slots=True)
class _Answer:
    """A cached DNS answer: records (as plain tuples/strings) or a failure state."""

    expires: float
    records: tuple = ()
    state: str = OK
    reason: str = ""


class _CacheMiss(Exception):
    """Raised in cache-only mode when a lookup would need the network."""


# Failure states in order of how much they say about why nothing was found.
_SEVERITY = {OK: 0, NO_RECORDS: 1, NXDOMAIN: 2, ERROR: 3, SERVFAIL: 4, TIMEOUT: 5}


def _worse(a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str]:
    return b if _SEVERITY[b[0]] > _SEVERITY[a[0]] else a


def parse_nameserver(spec: str | tuple[str, int]) -> tuple[str, int]:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"[2001:db8::1]:53"``, ``"::1"`` or (host, port)."""
    if isinstance(spec, tuple):
        return str(spec[0]), int(spec[1])
    text = spec.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host, port = text, 53
    ipaddress.ip_address(host)  # raises ValueError for a name: nameservers are addresses
    if not 0 < port < 65536:
        raise ValueError(f"bad port in nameserver {spec!r}")
    return host, port


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _fqdn(name: str) -> str:
    return name.lower().rstrip(".") + "."


class Resolver:
    """RFC 3263 resolution with dnspython's asyncio resolver and a TTL cache.

    ``timeout``: seconds for one DNS lookup (all retries). ``families``: which address
    records to ask, in order of preference. ``rng`` and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        nameservers: Iterable[str | tuple[str, int]] | None = None,
        *,
        timeout: float = 2.0,
        max_ttl: float = 3600.0,
        negative_ttl: float = 30.0,
        failure_ttl: float = 5.0,
        families: Sequence[str] = ("A", "AAAA"),
        max_entries: int = 100_000,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.failure_ttl = failure_ttl
        self.families = tuple(f.upper() for f in families)
        if not self.families or any(f not in ("A", "AAAA") for f in self.families):
            raise ValueError("families must be A and/or AAAA")
        self.max_entries = max_entries
        self.rng = rng or random.Random()
        self.clock = clock
        self.queries = 0  # lookups sent to the network
        self.hits = 0  # lookups answered from the cache
        self._cache: dict[tuple[str, str], _Answer] = {}
        self._inflight: dict[tuple[str, str], asyncio.Task[_Answer]] = {}
        servers = [parse_nameserver(s) for s in nameservers or ()]
        self.nameservers = servers
        if servers:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
        else:
            self._dns = dns.asyncresolver.Resolver()  # /etc/resolv.conf
        self._dns.cache = None  # we cache, with our own clock and negative caching
        self._dns.timeout = timeout
        self._dns.lifetime = timeout

    # -- public -------------------------------------------------------------------------
    async def resolve(self, uri: str | SipURI, *, transports: Iterable[str] | None = None) -> Resolution:
        """Targets for ``uri`` in order of preference; never raises for DNS failures.

        ``transports`` limits the choice to what the caller can use (say ``("udp",)``):
        NAPTR and SRV records of other transports are skipped (RFC 3263 §4.1).
        """
        return await self._resolve(uri, transports, cache_only=False)

    def cached(self, uri: str | SipURI, *, transports: Iterable[str] | None = None) -> Resolution | None:
        """The resolution if the cache can answer it whole (IP literals always), else None."""
        coro = self._resolve(uri, transports, cache_only=True)
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        except _CacheMiss:
            return None
        coro.close()  # pragma: no cover - cache-only lookups never suspend
        raise RuntimeError("a cache-only resolution tried to wait")

    def clear(self) -> None:
        self._cache.clear()

    def cache_entries(self) -> int:
        return len(self._cache)

    # -- RFC 3263 §4 ------------------------------------------------------------------
    async def _resolve(self, uri: str | SipURI, transports: Iterable[str] | None,
                       cache_only: bool) -> Resolution:
        text = str(uri) if isinstance(uri, SipURI) else uri
        if not isinstance(uri, SipURI):
            try:
                parsed = parse_uri(uri.strip().strip("<>"))
            except SipError as exc:
                return Resolution(text, state=ERROR, reason=exc.reason)
            if not isinstance(parsed, SipURI):
                return Resolution(text, state=ERROR, reason="not a sip or sips URI")
            uri = parsed
        if uri.scheme not in ("sip", "sips"):
            return Resolution(text, state=ERROR, reason="not a sip or sips URI")
        allowed = tuple(t for t in TRANSPORTS if t in set(transports or TRANSPORTS))
        secure = uri.scheme == "sips"
        if secure:
            allowed = tuple(t for t in allowed if t == "tls")
        if not allowed:
            return Resolution(text, state=ERROR, reason="no usable transport (sips needs tls)")

        transport = None
        param = uri.transport
        if param:
            transport = "tls" if secure or param == "tls" else param
            if transport not in DEFAULT_PORT:
                return Resolution(text, state=ERROR, reason=f"unsupported transport {param}")
            if transport not in allowed:
                return Resolution(text, state=ERROR, reason=f"transport {transport} not usable here")
        default_transport = transport or ("tls" if secure else allowed[0])

        host = uri.host
        literal = _ip_literal(host)
        if literal is not None:  # §4.1/§4.2: numeric host, no DNS
            port = uri.port or DEFAULT_PORT[default_transport]
            return Resolution(text, (Target(default_transport, literal, port),))
        if uri.port is not None:  # §4.2: explicit port, A/AAAA only
            return await self._hosts(text, host, default_transport, uri.port, cache_only)
        if transport is not None:  # §4.2: transport known, SRV for it, then A/AAAA
            targets, failure = await self._srv(f"{SRV_PREFIX[transport]}.{host}", transport, cache_only)
            if targets:
                return Resolution(text, tuple(targets))
            if failure[0] in (TIMEOUT, SERVFAIL) or failure[1].endswith(NOT_OFFERED):
                return Resolution(text, state=failure[0], reason=failure[1])
            return await self._hosts(text, host, transport, DEFAULT_PORT[transport], cache_only)

        # §4.1: NAPTR
        naptr = await self._lookup(host, "NAPTR", cache_only)
        if naptr.state in (TIMEOUT, SERVFAIL, NXDOMAIN):
            return Resolution(text, state=naptr.state, reason=f"NAPTR {host}: {naptr.reason}")
        usable = sorted(
            (order, pref, SERVICES[service.upper()], replacement)
            for order, pref, flags, service, _regexp, replacement in naptr.records
            if flags.lower() == "s" and service.upper() in SERVICES
            and SERVICES[service.upper()] in allowed
        )
        failure = (NO_RECORDS, f"no usable SRV for {host}")
        if usable:
            targets = []
            for _order, _pref, t, replacement in usable:
                found, why = await self._srv(replacement, t, cache_only)
                targets += found
                failure = _worse(failure, why) if not found else failure
            if targets:
                return Resolution(text, tuple(_unique(targets)))
            return Resolution(text, state=failure[0], reason=failure[1])

        # §4.1: no NAPTR: SRV of each transport we can use
        targets = []
        timeouts = refusals = 0
        for t in allowed:
            found, why = await self._srv(f"{SRV_PREFIX[t]}.{host}", t, cache_only)
            targets += found
            if why[0] in (TIMEOUT, SERVFAIL):
                timeouts += 1
                failure = _worse(failure, why)
            elif why[1].endswith(NOT_OFFERED):
                refusals += 1
                failure = why
        if targets:
            return Resolution(text, tuple(_unique(targets)))
        if timeouts == len(allowed) or refusals:
            return Resolution(text, state=failure[0], reason=failure[1])
        # §4.2: no SRV: A/AAAA at the default port
        return await self._hosts(text, host, default_transport, DEFAULT_PORT[default_transport], cache_only)

    async def _hosts(self, text: str, host: str, transport: str, port: int, cache_only: bool) -> Resolution:
        addresses, failure = await self._addresses(host, cache_only)
        if not addresses:
            return Resolution(text, state=failure[0], reason=failure[1])
        return Resolution(text, tuple(Target(transport, a, port, host.rstrip(".")) for a in addresses))

    async def _srv(self, name: str, transport: str, cache_only: bool) -> tuple[list[Target], tuple[str, str]]:
        answer = await self._lookup(name, "SRV", cache_only)
        if answer.state != OK:
            return [], (answer.state, f"SRV {name.rstrip('.')}: {answer.reason}")
        records = [r for r in answer.records if r[3] != "."]
        if not records:
            return [], (NO_RECORDS, f"SRV {name.rstrip('.')}: {NOT_OFFERED}")
        targets: list[Target] = []
        failure = (NO_RECORDS, f"SRV {name.rstrip('.')}: no address for any target")
        for _priority, _weight, port, target in self._srv_order(records):
            addresses, why = await self._addresses(target, cache_only)
            if not addresses:
                failure = _worse(failure, why)
            targets += [Target(transport, a, port, target.rstrip(".")) for a in addresses]
        return targets, ((OK, "") if targets else failure)

    def _srv_order(self, records: list[tuple[int, int, int, str]]) -> list[tuple[int, int, int, str]]:
        """RFC 2782: lowest priority first; within a priority, weighted random order."""
        ordered = []
        for priority in sorted({r[0] for r in records}):
            group = [r for r in records if r[0] == priority]
            # Zero-weight records first, so that they get a small chance (RFC 2782).
            group.sort(key=lambda r: r[1] != 0)
            while group:
                total = sum(r[1] for r in group)
                if total == 0:
                    pick = 0
                else:
                    point = self.rng.randint(0, total)
                    running = 0
                    pick = len(group) - 1
                    for i, r in enumerate(group):
                        running += r[1]
                        if running >= point:
                            pick = i
                            break
                ordered.append(group.pop(pick))
        return ordered

    async def _addresses(self, host: str, cache_only: bool) -> tuple[list[str], tuple[str, str]]:
        addresses: list[str] = []
        failure = (NO_RECORDS, "")
        for rdtype in self.families:
            answer = await self._lookup(host, rdtype, cache_only)
            if answer.state == OK:
                addresses += answer.records
                continue
            failure = _worse(failure, (answer.state, f"{rdtype} {host.rstrip('.')}: {answer.reason}"))
            if answer.state == NXDOMAIN:
                break  # the name does not exist: no other type will
        if not addresses and not failure[1]:
            failure = (NO_RECORDS, f"no address records for {host.rstrip('.')}")
        return addresses, failure

    # -- the cache --------------------------------------------------------------------
    async def _lookup(self, name: str, rdtype: str, cache_only: bool) -> _Answer:
        key = (_fqdn(name), rdtype)
        hit = self._cache.get(key)
        if hit is not None:
            if hit.expires > self.clock():
                self.hits += 1
                return hit
            del self._cache[key]
        if cache_only:
            raise _CacheMiss(key)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _fetch(self, key: tuple[str, str]) -> _Answer:
        name, rdtype = key
        self.queries += 1
        answer = await self._query(name, rdtype)
        if len(self._cache) >= self.max_entries:
            self._evict()
        self._cache[key] = answer
        return answer

    def _evict(self) -> None:
        now = self.clock()
        for k in [k for k, v in self._cache.items() if v.expires <= now]:
            del self._cache[k]
        while len(self._cache) >= self.max_entries:
            del self._cache[next(iter(self._cache))]  # oldest inserted

    async def _query(self, name: str, rdtype: str) -> _Answer:
        now = self.clock()
        try:
            answer = await self._dns.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            ttl = self._negative_ttl(_soa_ttl(r for r in exc.responses().values()))
            return _Answer(now + ttl, state=NXDOMAIN, reason="no such domain")
        except dns.exception.Timeout:
            return _Answer(now + self.failure_ttl, state=TIMEOUT, reason=f"no answer within {self.timeout:g} s")
        except dns.resolver.NoNameservers as exc:
            return _Answer(now + self.failure_ttl, state=SERVFAIL, reason=_first_line(exc))
        except (dns.exception.DNSException, OSError) as exc:
            return _Answer(now + self.failure_ttl, state=ERROR, reason=_first_line(exc))
        if answer.rrset is None:
            ttl = self._negative_ttl(_soa_ttl([answer.response]))
            return _Answer(now + ttl, state=NO_RECORDS, reason=f"no {rdtype} records")
        ttl = min(float(_min_ttl(answer)), self.max_ttl)
        return _Answer(now + ttl, _records(answer.rrset, rdtype))

    def _negative_ttl(self, soa_ttl: float | None) -> float:
        return self.negative_ttl if soa_ttl is None else min(soa_ttl, self.negative_ttl)


def _min_ttl(answer: dns.resolver.Answer) -> int:
    chaining = getattr(answer, "chaining_result", None)
    if chaining is not None:
        return chaining.minimum_ttl
    return answer.rrset.ttl if answer.rrset is not None else 0  # pragma: no cover - older dnspython


def _soa_ttl(responses: Iterable) -> float | None:
    """RFC 2308 §5: a negative answer lives min(SOA TTL, SOA MINIMUM)."""
    best = None
    for response in responses:
        for rrset in getattr(response, "authority", ()):
            if rrset.rdtype == dns.rdatatype.SOA:
                for soa in rrset:
                    ttl = min(rrset.ttl, soa.minimum)
                    best = ttl if best is None else min(best, ttl)
    return best


def _records(rrset, rdtype: str) -> tuple:
    if rdtype == "NAPTR":
        return tuple(
            (r.order, r.preference, r.flags.decode("ascii", "replace"), r.service.decode("ascii", "replace"),
             r.regexp.decode("ascii", "replace"), r.replacement.to_text())
            for r in rrset
        )
    if rdtype == "SRV":
        return tuple((r.priority, r.weight, r.port, r.target.to_text()) for r in rrset)
    return tuple(r.address for r in rrset)


def _unique(targets: list[Target]) -> list[Target]:
    seen: set[tuple[str, str, int]] = set()
    out = []
    for t in targets:
        key = (t.transport, t.address, t.port)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


__all__ = ["ERROR", "NO_RECORDS", "NXDOMAIN", "OK", "SERVFAIL", "TIMEOUT", "Resolution", "Resolver",
           "Target", "parse_nameserver"]

"""The registrar core's public API: start here.

:class:`RegistrarCore` mirrors Kamailio's registrar and usrloc functions under
Pythonic names:

=================================  ==========================================
Kamailio                           sipconsole
=================================  ==========================================
``save(table, flags)``             ``await core.save(request, flags, table=...)``
``unregister(table, aor[, ruid])`` ``await core.unregister(aor, ruid, table=...)``
``reg_fetch_contacts(t, uri, p)``  ``core.fetch_contacts(aor, table=...)`` -> Profile
``lookup(table)``                  ``core.lookup(uri, table=...)`` (q-ordered)
``registered(table)``              ``core.registered(uri, table=...)``
``reg_from_user(table, uri)``      ``core.from_registered_device(request, source)``
=================================  ==========================================

The console and the control socket (``sipconsole ctl``) use exactly this API.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import events as ev
from .audit import Actor, audited
from .auth import Authenticator, NonceFactory, Refusal, Subscribers, authorised_for, load_key
from .client_transactions import ClientTransactions
from .config import Config
from .events import EventBus, Subscription
from .location import DEFAULT_TABLE, Contact, LocationService, store_for
from .location.service import REMOVED_ADMIN
from .qualify import QualifyService
from .redirect import answer
from .keepalive import is_crlf_keepalive, stun_binding_response
from .registrar import GLOBAL, POLICY_SINGLE_CONTACT, Registrar, RegisterRejected, reply
from .security import ADMIT, BAN, IpGuard, is_scanner, sipsec
from .sip import Request, Response, SipError, SipURI, parse_message, parse_uri
from .source import Source
from .stateless import salvage_reply
from .stats import Stats
from .transactions import Reply, TransactionTable, transaction_key

log = logging.getLogger(__name__)

POLICY_CALLER_CHECK = "caller_check"


def reply_address(request: Request, source: Source) -> tuple[str, int]:
    """RFC 3261 §18.2.2 with RFC 3581 rport: where a UDP response goes."""
    via = request.vias[0]
    host = via.received or source.ip
    rport = via.rport
    if rport:
        return host, int(rport)
    return host, via.port or 5060


class NotFound(LookupError):
    """An AOR or contact that the location table does not hold."""


@dataclass(frozen=True, slots=True)
class Profile:
    """A read-only snapshot of one AOR's contacts: Kamailio's $ulc(profile=>attr)."""

    aor: str
    contacts: tuple[Contact, ...]
    table: str = DEFAULT_TABLE

    @property
    def count(self) -> int:
        return len(self.contacts)

    def __getitem__(self, index: int) -> Contact:
        return self.contacts[index]

    def __iter__(self):
        return iter(self.contacts)

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        return {"aor": self.aor, "count": self.count,
                "contacts": [c.to_dict(now) for c in self.contacts]}


def normalise_aor(text: str) -> str:
    """``alice@example.com`` or ``sip:alice@example.com`` -> the canonical AOR key."""
    text = text.strip()
    if ":" not in text.split("@")[0]:
        text = "sip:" + text
    try:
        uri = parse_uri(text)
    except SipError:
        raise NotFound(f"not a valid AOR: {text}") from None
    if not isinstance(uri, SipURI):
        raise NotFound(f"not a SIP AOR: {text}")
    return uri.aor


class RegistrarCore:
    """The embedded registrar: location service, REGISTER logic, redirect answers, events."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time,
                 memory_only: bool = False) -> None:
        self.config = config
        self._limits = config.limits  # a property that builds a Limits: once, not per message
        self.events = EventBus(clock)
        self.stats = Stats(started=clock())
        store = None if memory_only else store_for(config.db)
        self.location = LocationService(store, self.events, clock=clock)
        self.to_tag = secrets.token_hex(6)
        self.registrar = Registrar(config, self.location, self.to_tag)
        self.transactions = TransactionTable()
        self.listening: list[str] = []
        self.subscribers = Subscribers(self.location)
        self.guard = IpGuard(config.ip_budget, config.ban_time, config.trusted)
        self.authenticator: Authenticator | None = None
        self._scanner_ips: set[str] = set()
        self._sweeper: asyncio.Task[None] | None = None
        # How to send a request: (local socket name, TCP conid, (host, port), bytes) -> sent?
        self.sender: Callable[[str, int | None, tuple[str, int], bytes], bool] | None = None
        # Requests we send (qualify's OPTIONS) are client transactions (RFC 3261 §17.1.2).
        self.client_transactions = ClientTransactions(self._send_request)
        # Who wants the responses to requests we send: the client transactions.
        self.response_sinks: list[Callable[[Response, Source], object]] = [self.client_transactions.receive]
        # OPTIONS keepalives and reachability; Server starts it once the sockets listen.
        self.qualify = QualifyService.from_config(self, config)

    async def start(self) -> None:
        await self.location.start()
        await self.subscribers.load()
        if self.config.auth:
            key = load_key(self.config.auth_key_path)
            self.authenticator = Authenticator(
                self.subscribers, NonceFactory(key, clock=self.location.clock), key,
                algorithms=self.config.auth_algorithms, fail_budget=self.config.auth_fail_budget, ban_time=self.config.ban_time,
                clock=self.location.clock)
            if not len(self.subscribers):
                log.warning("authentication is on and there are no subscribers: add one with "
                            "`sipconsole user add alice@example.com` (or run with --auth off in a lab)")
        self._sweeper = asyncio.create_task(self._sweep_bans())

    async def stop(self) -> None:
        await self.qualify.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.location.stop()

    async def _sweep_bans(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for ip in self.guard.expired_bans():
                self._security("unban", Source("udp", ip, 0, ""))

    # -- Kamailio's functions ----------------------------------------------------------
    async def save(self, request: Request, flags: int = 0, *, table: str = DEFAULT_TABLE,
                   source: Source | None = None) -> Response:
        """Process a REGISTER (Kamailio save()); returns the reply, and sends nothing itself:
        the transports send it, and with flag 0x02 (no reply) the caller decides when,
        e.g. with :meth:`send_reply`."""
        source = source or Source("udp", "127.0.0.1", 0, "api")
        return await _awaited(lambda done: self.registrar.save(table, request, flags, source, done))

    def _send_request(self, local: str, conid: int | None, addr: tuple[str, int], data: bytes) -> bool:
        """The client transactions' sender: the transports' hook once they listen."""
        return self.sender is not None and self.sender(local, conid, addr, data)

    def send_reply(self, request: Request, source: Source, response: Response) -> bool:
        """Kamailio reg_send_reply(): send a reply kept back by save() flag 0x02 (no reply)."""
        if self.sender is None:
            return False
        return self.sender(source.local, source.conid, reply_address(request, source), bytes(response))

    async def unregister(self, aor: str, ruid: str | None = None, *, ruids: list[str] | None = None,
                         table: str = DEFAULT_TABLE, actor: Actor | None = None) -> list[Contact]:
        """Remove every contact of ``aor``, or the one with ``ruid`` (or those in ``ruids``),
        in one transaction; returns what went. Audited (``actor``: who asked; None = api)."""
        key = normalise_aor(aor)
        wanted = set(ruids or ()) | ({ruid} if ruid is not None else set())
        with audited(self.events, actor, "unregister", key, ruid=",".join(sorted(wanted)) or None,
                     table=_unless_default(table)) as outcome:
            await self.location.locks.acquire((table, key))
            try:
                contacts = self.location.contacts(table, key)
                if wanted:
                    contacts = [c for c in contacts if c.ruid in wanted]
                if not contacts:
                    what = f"contact {', '.join(sorted(wanted))} of {key}" if wanted else key
                    raise NotFound(f"{what} is not registered in table {table}")
                await self.location.apply(table, [], [(c, REMOVED_ADMIN) for c in contacts])
                outcome["removed"] = len(contacts)
                return contacts
            finally:
                self.location.locks.release((table, key))

    def fetch_contacts(self, aor: str, *, table: str = DEFAULT_TABLE) -> Profile:
        """Kamailio reg_fetch_contacts(): a snapshot profile of the AOR's contacts."""
        key = normalise_aor(aor)
        return Profile(key, tuple(self.location.contacts(table, key)), table)

    def lookup(self, uri: str | SipURI, *, table: str = DEFAULT_TABLE,
               prefer_reachable: bool | None = None) -> list[Contact]:
        """The destination set for ``uri``, highest q first (newest first among equals).

        With qualify on (or ``prefer_reachable``), reachable contacts come first, then
        unknown, then unreachable; q order holds within each group.
        """
        key = uri.aor if isinstance(uri, SipURI) else normalise_aor(uri)
        contacts = self.location.contacts(table, key)
        ordered = sorted(contacts, key=lambda c: (-(1.0 if c.q is None else c.q), -c.modified))
        if self.qualify.enabled if prefer_reachable is None else prefer_reachable:
            ordered = self.qualify.order(ordered)
        return ordered

    def registered(self, uri: str | SipURI, *, table: str = DEFAULT_TABLE) -> bool:
        return bool(self.lookup(uri, table=table))

    def from_registered_device(self, request: Request, source: Source, table: str = DEFAULT_TABLE) -> bool:
        """Kamailio reg_from_user(): does the request come from a registered contact of its From AOR?"""
        uri = request.from_.uri
        if not isinstance(uri, SipURI):
            return False
        return any(c.received == source.address for c in self.location.contacts(table, uri.aor))

    def known_aor(self, aor: str, table: str = DEFAULT_TABLE) -> bool:
        """An AOR with contacts, a subscriber, or one that registered since start."""
        user, _, host = aor.rpartition("@")
        return self.location.known(table, aor) or (bool(user) and self.subscribers.exists(user, host))

    # -- policies ------------------------------------------------------------------
    def single_contact(self, aor: str | None = None, *, table: str = DEFAULT_TABLE) -> bool:
        """The single-contact policy in force for ``aor`` (or the table-wide default)."""
        return self.registrar.single_contact(table, normalise_aor(aor) if aor else GLOBAL)

    async def set_single_contact(self, on: bool | None, aor: str | None = None, *,
                                 table: str = DEFAULT_TABLE, actor: Actor | None = None) -> None:
        """Switch single-contact globally, or for one AOR (None drops the AOR's override). Audited."""
        key = normalise_aor(aor) if aor else GLOBAL
        value = None if on is None else ("on" if on else "off")
        with audited(self.events, actor, "policy.single-contact", key or "global", value=value or "inherit",
                     table=_unless_default(table)):
            await self.location.set_policy(table, key, POLICY_SINGLE_CONTACT, value)

    def single_contact_overrides(self, table: str = DEFAULT_TABLE) -> dict[str, bool]:
        return {aor: v == "on" for (t, aor), v in self.location.policies(POLICY_SINGLE_CONTACT).items()
                if t == table and aor != GLOBAL}

    @property
    def caller_check(self) -> bool:
        value = self.location.policy(DEFAULT_TABLE, GLOBAL, POLICY_CALLER_CHECK)
        return self.config.caller_check if value is None else value == "on"

    async def set_caller_check(self, on: bool, *, actor: Actor | None = None) -> None:
        """Switch the caller check ("403 Please register first") on or off. Audited."""
        value = "on" if on else "off"
        with audited(self.events, actor, "policy.caller-check", "global", value=value):
            await self.location.set_policy(DEFAULT_TABLE, GLOBAL, POLICY_CALLER_CHECK, value)

    # -- subscribers and reachability (operator actions: audited) -------------------------
    async def add_subscriber(self, user: str, password: str, *, replace: bool = False,
                             actor: Actor | None = None) -> str:
        """Add USER@DOMAIN (or, with ``replace``, set its password); returns it as stored."""
        with audited(self.events, actor, "subscriber.passwd" if replace else "subscriber.add", user):
            return await self.subscribers.add(user, password, replace=replace)

    async def remove_subscriber(self, user: str, *, actor: Actor | None = None) -> str:
        with audited(self.events, actor, "subscriber.remove", user):
            return await self.subscribers.remove(user)

    async def qualify_now(self, ruid: str | None = None, *, aor: str | None = None, wait: bool = True,
                          table: str = DEFAULT_TABLE, actor: Actor | None = None) -> dict[str, dict[str, Any]]:
        """Send OPTIONS now to one contact (ruid), an AOR's contacts, or all (QualifyService.qualify_now)."""
        with audited(self.events, actor, "qualify", ruid or aor or "all", table=_unless_default(table)) as outcome:
            states = await self.qualify.qualify_now(ruid, aor=aor, table=table, wait=wait)
            outcome["contacts"] = len(states)
            return states

    # -- operations ------------------------------------------------------------------
    def dump(self, table: str = DEFAULT_TABLE, offset: int = 0, limit: int | None = None) -> list[Profile]:
        """Every AOR with contacts (or the page ``offset:offset+limit`` of the AORs)."""
        now = self.location.clock()
        profiles = []
        aors = self.location.aors(table)
        if offset or limit is not None:
            aors = itertools.islice(aors, offset, None if limit is None else offset + limit)
        for aor in aors:
            contacts = self.location.contacts(table, aor, now)
            if contacts:
                profiles.append(Profile(aor, tuple(contacts), table))
        return profiles

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        return self.events.subscribe(maxsize)

    def snapshot_stats(self) -> dict[str, Any]:
        now = self.location.clock()
        aors, contacts = self.location.counts()
        s = self.stats
        return {
            "uptime": now - s.started,
            "listening": list(self.listening),
            "registered_users": aors,
            "location_contacts": contacts,
            "accepted_regs": s.accepted_regs,
            "rejected_regs": s.rejected_regs,
            "challenged": s.challenged,
            "keepalives": s.keepalives,
            "expired_contacts": self.location.expired_total,
            "parse_errors": s.parse_errors,
            "security": dict(s.security),
            "banned_ips": sorted(self.guard.bans),
            "auth": self.authenticator is not None,
            "subscribers": len(self.subscribers),
            "retransmissions": s.retransmissions,
            "transactions": len(self.transactions),
            "transactions_evicted": self.transactions.evicted,
            "requests": dict(s.requests),
            "responses": dict(s.responses),
            "register_rate": s.rate_series(now),
            "single_contact": self.single_contact(),
            "caller_check": self.caller_check,
            "storage_error": self.location.storage_error,
            "tables": self.location.tables(),
            **self.qualify.stats(),
        }

    # -- SIP entry point for the transports ----------------------------------------------
    def receive(self, data: bytes, source: Source, respond: Callable[[Reply | None], None]) -> None:
        """One framed message in; ``respond`` (which must not raise) is called once with the
        reply and where to send it (None: send nothing), at once or when the change the
        message made is durable."""
        try:
            self._receive(data, source, respond)
        except Exception:
            log.exception("unexpected error handling a message from %s", source.address)
            respond(None)

    def _receive(self, data: bytes, source: Source, respond: Callable[[Reply | None], None]) -> None:
        verdict = self.guard.admit(source.ip)
        if verdict is not ADMIT:
            if verdict is BAN:
                self._security("ban", source)
            respond(None)
            return
        if data and data[0] < 0x20 and self._keepalive(data, source, respond):  # no SIP starts so
            return
        try:
            message = parse_message(data, self._limits)
        except SipError as exc:
            self.stats.parse_errors += 1
            salvaged = salvage_reply(data, exc, self.to_tag)
            respond(None if salvaged is None else (salvaged, (source.ip, source.port)))
            return
        if isinstance(message, Response):
            for sink in self.response_sinks:
                sink(message, source)
            respond(None)
            return
        if message.method == "ACK" or (
                self.config.drop_scanners and self._dropped_as_scanner(message, source)):
            respond(None)
            return
        message.stamp_source(source.ip, source.port)
        address = reply_address(message, source)  # taken now: the request need not outlive dispatch
        if source.proto != "udp":
            # A reliable transport never retransmits (RFC 3261 §17.2.2: Timer J is 0 s), so
            # there is no transaction state to keep: 32 s of responses is UDP's cost alone.
            self._dispatch(message, source, lambda response: respond((bytes(response), address)))
            return
        key = transaction_key(message)
        previous = self.transactions.lookup(key)
        if previous is not None:
            self.stats.retransmissions += 1
            respond((previous, address) if previous else None)
            return
        self.transactions.begin(key)

        def answered(response: Response) -> None:
            payload = bytes(response)
            self.transactions.complete(key, payload)
            respond((payload, address))

        try:
            self._dispatch(message, source, answered)
        except BaseException:
            self.transactions.forget(key)
            raise

    def _keepalive(self, data: bytes, source: Source, respond: Callable[[Reply | None], None]) -> bool:
        """RFC 5626 keepalives: a bare CRLF is dropped, a STUN Binding request (UDP) answered,
        both counted; False for anything else (a message after CRLFs is parsed as usual)."""
        stun = stun_binding_response(data, source.ip, source.port) if source.proto == "udp" else None
        if stun is None and not is_crlf_keepalive(data):
            return False
        self.stats.keepalives += 1
        respond(None if stun is None else (stun, (source.ip, source.port)))
        return True

    async def handle(self, data: bytes, source: Source) -> Reply | None:
        """:meth:`receive` for coroutines: the reply (None: nothing to send)."""
        return await _awaited(lambda done: self.receive(data, source, done))

    def _authenticate(self, request: Request, source: Source) -> Refusal | None:
        """Digest-authenticate a REGISTER (when auth is on); None means go ahead."""
        if self.authenticator is None:
            return None
        to = request.to.uri
        if not isinstance(to, SipURI):
            return None  # the registrar answers 400 for a non-SIP To
        realm = to.host.lower()
        outcome = self.authenticator.check(request, realm, source.ip)
        refusal = outcome.refusal
        if refusal is None and not authorised_for(request, outcome.username or "", realm):
            refusal = Refusal(403, "Forbidden", [("P-Registrar-Error", "Not authorised for this AOR")],
                              failure="wrong-aor", user=outcome.username or "")
        if refusal is not None and refusal.failure:
            self._security(refusal.failure, source, refusal.user)
            if refusal.failure == "user-banned" and self.guard.ban(source.ip):
                self._security("ban", source, refusal.user)  # the address, not the user
        return refusal

    def _security(self, event: str, source: Source, user: str = "") -> None:
        """A ban, a failed authentication, a scanner: a SIPSEC log line and an event."""
        self.stats.security[event] += 1
        sipsec(event, source.ip, source.port, user)
        self.events.publish(ev.SECURITY, event=event, ip=source.ip, port=source.port, user=user)

    def _dropped_as_scanner(self, request: Request, source: Source) -> bool:
        """A scanner's User-Agent: drop silently, and say so once per address (they send thousands)."""
        user_agent = request.headers.get("User-Agent")
        if not is_scanner(user_agent):
            return False
        self.stats.security["scanner"] += 1
        if source.ip not in self._scanner_ips and len(self._scanner_ips) < 10_000:
            self._scanner_ips.add(source.ip)
            sipsec("scanner", source.ip, source.port, user_agent or "")
            self.events.publish(ev.SECURITY, event="scanner", ip=source.ip, port=source.port, user=user_agent or "")
        return True

    def _dispatch(self, request: Request, source: Source, done: Callable[[Response], None]) -> None:
        method = request.method
        self.stats.requests[method] += 1
        # What the request.handled event tells, taken now (a REGISTER's request is let go
        # while its commit is on); nothing when nobody listens.
        note = _Note.of(request, source) if self.events.active else None
        if method != "REGISTER":
            self._answered(method, note, answer(self, request, source, DEFAULT_TABLE), done)
            return
        registrar = self.registrar
        saved = functools.partial(self._answered, method, note, done=done)
        if self.authenticator is None:
            registrar.save(DEFAULT_TABLE, request, 0, source, saved)
            return
        try:  # RFC 3261 §10.3: the domain (step 1) and Require (step 2) come before authentication
            aor = registrar.check(request)
        except (RegisterRejected, SipError) as exc:
            saved(registrar.refusal(request, exc))
            return
        refusal = self._authenticate(request, source)
        if refusal is not None:
            response = reply(request, refusal.status, refusal.reason, refusal.headers, self.to_tag)
            self._answered(method, note, response, done, refusal.status == 401 and refusal.failure is None)
            return
        registrar.save_checked(DEFAULT_TABLE, aor, request, 0, source, saved)

    def _answered(self, method: str, note: _Note | None, response: Response,
                  done: Callable[[Response], None], challenged: bool = False) -> None:
        """Count and publish a request's outcome, then hand its response on; ``challenged``:
        a 401 asking for (fresh) credentials, counted apart from real rejections."""
        if method == "REGISTER":
            self.stats.count_register(response.status == 200, challenged, self.location.clock())
        self.stats.responses[str(response.status)] += 1
        if note is not None:
            self.events.publish(ev.REQUEST_HANDLED, method=method, aor=note.aor, source=note.source,
                                status=response.status, reason=response.reason, user_agent=note.user_agent)
        done(response)


@dataclass(slots=True)  # one per request while someone listens: not frozen (cheaper to make)
class _Note:
    """The request side of a request.handled event."""

    aor: str
    source: str
    user_agent: str

    def __init__(self, aor: str, source: str, user_agent: str) -> None:
        self.aor = aor  # written out: compiled (setup.py)
        self.source = source
        self.user_agent = user_agent

    @classmethod
    def of(cls, request: Request, source: Source) -> _Note:
        uri = request.to.uri if request.method == "REGISTER" else request.uri
        return cls(uri.aor, source.address, request.headers.get("User-Agent") or "")


def _unless_default(table: str) -> str | None:
    """A table worth naming in an audit line (the default one goes without saying)."""
    return None if table == DEFAULT_TABLE else table


async def _awaited(start: Callable[[Callable[[Any], None]], None]) -> Any:
    """Await what a callback-style call hands its callback (``start`` passes it on)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    start(functools.partial(_resolve, future))
    return await future


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    """A callback's value into a future (unless its awaiter has gone)."""
    if not future.done():
        future.set_result(value)


__all__ = ["NotFound", "Profile", "RegistrarCore", "normalise_aor"]

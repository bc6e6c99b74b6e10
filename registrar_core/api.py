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
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .aor import NotFound, normalise_aor
from .audit import Actor, audited
from .auth import Authenticator, NonceFactory, Subscribers, load_key
from .awaitable import awaited
from .client_transactions import ClientTransactions
from .config import Config
from .events import SUBSCRIBER_CHANGED, CompactSubscription, EventBus, Subscription
from .journal import HISTORY_LIMIT, Entry
from .location import DEFAULT_TABLE, Contact, LocationService, NodeIdentity, NodeState, is_postgres, store_for
from .location.service import REMOVED_ADMIN
from .location.store import SubscriberChange
from .pipeline import Pipeline, reply_address
from .policy_trim import preview, trim
from .qualify import QualifyService
from .redirect import IN_DIALOG, REDIRECTED, RedirectServer
from .reg_notifier import RegEvents
from .registrar import GLOBAL, POLICY_MAX_CONTACTS, POLICY_SINGLE_CONTACT, Registrar
from .security import IpGuard
from .sip import Request, Response, SipURI
from .source import Source
from .stats import Stats
from .transactions import Reply, TransactionTable

log = logging.getLogger(__name__)

POLICY_CALLER_CHECK = "caller_check"


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


class RegistrarCore:
    """The embedded registrar: location service, REGISTER logic, redirect answers, events."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time,
                 memory_only: bool = False) -> None:
        self.config = config
        self.events = EventBus(clock)
        self.stats = Stats(started=clock())
        identity = NodeIdentity(config.node, tuple(str(spec) for spec in config.listen),
                                lambda: self.stats.accepted_regs, prune_flows=not config.keep_flow_contacts)
        store = None if memory_only else store_for(config.db, identity)
        self.location = LocationService(store, self.events, clock=clock, journal_retention=config.journal_retention,
                                        journal_max_rows=config.journal_max_rows)
        self.location.shared = store is not None and is_postgres(config.db)
        self.to_tag = secrets.token_hex(6)
        self.registrar = Registrar(config, self.location, self.to_tag)
        self.listening: list[str] = []
        self.subscribers = Subscribers(self.location)
        self.location.on_subscribers = self._subscribers_followed
        self.guard = IpGuard(config.ip_budget, config.ban_time, config.trusted)
        redirect = RedirectServer(self, self.to_tag, self.location.clock, DEFAULT_TABLE)
        self.pipeline = Pipeline(config, self.registrar, redirect.handle, self.events, self.stats,
                                 self.guard, self.location.clock)
        for method in (*REDIRECTED, *IN_DIALOG):
            self.pipeline.handle_method(method, redirect.handle)
        self._sweeper: asyncio.Task[None] | None = None
        # How to send a request: (local socket name, TCP conid, (host, port), bytes) -> sent?
        self.sender: Callable[[str, int | None, tuple[str, int], bytes], bool] | None = None
        # Requests we send (qualify's OPTIONS) are client transactions (RFC 3261 §17.1.2).
        self.client_transactions = ClientTransactions(self._send_request)
        # The responses to requests we send go to the client transactions (the pipeline hands them on).
        self.response_sinks = self.pipeline.response_sinks
        self.response_sinks.append(self.client_transactions.receive)
        # OPTIONS keepalives and reachability; Server starts it once the sockets listen.
        self.qualify = QualifyService.from_config(self, config)
        # SUBSCRIBE to the reg event of an AOR (RFC 3680); other events get 489.
        self.reg_events = RegEvents(config, self.location, self.pipeline, self.client_transactions,
                                    self.location.clock, self.gruus_of)
        self.pipeline.handle_method("SUBSCRIBE", self.reg_events.handle)

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
        await self.reg_events.stop()
        await self.qualify.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.location.stop()

    async def _sweep_bans(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for ip in self.guard.expired_bans():
                self.pipeline.security("unban", Source("udp", ip, 0, ""))

    # -- Kamailio's functions ----------------------------------------------------------
    async def save(self, request: Request, flags: int = 0, *, table: str = DEFAULT_TABLE,
                   source: Source | None = None) -> Response:
        """Process a REGISTER (Kamailio save()); returns the reply, and sends nothing itself:
        the transports send it, and with flag 0x02 (no reply) the caller decides when,
        e.g. with :meth:`send_reply`."""
        source = source or Source("udp", "127.0.0.1", 0, "api")
        return await awaited(lambda done: self.registrar.save(table, request, flags, source, done))

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
                who = actor or Actor.this_process()
                await self.location.apply(table, [], [(c, REMOVED_ADMIN) for c in contacts],
                                          note=f"by {who.kind} uid={who.uid} pid={who.pid}")
                outcome["removed"] = len(contacts)
                return contacts
            finally:
                self.location.locks.release((table, key))

    async def history(self, aor: str, *, since: float = 0.0, limit: int = HISTORY_LIMIT,
                      table: str = DEFAULT_TABLE) -> list[Entry]:
        """The contact journal of ``aor`` from ``since`` (epoch seconds) on, oldest first: every
        binding registered, changed and removed, with the reason (journal.py)."""
        rows = await self.location.history(table, normalise_aor(aor), since, limit)
        return [Entry(*row) for row in rows]

    def fetch_contacts(self, aor: str, *, table: str = DEFAULT_TABLE) -> Profile:
        """Kamailio reg_fetch_contacts(): a snapshot profile of the AOR's contacts."""
        key = normalise_aor(aor)
        return Profile(key, tuple(self.location.contacts(table, key)), table)

    def lookup(self, uri: str | SipURI, *, table: str = DEFAULT_TABLE,
               prefer_reachable: bool | None = None) -> list[Contact]:
        """The destination set for ``uri``, highest q first (newest first among equals); a
        GRUU (a SipURI with ``gr``, RFC 5627) gives only the contacts of its instance.

        With qualify on (or ``prefer_reachable``), reachable contacts come first, then
        unknown, then unreachable; q order holds within each group.
        """
        if isinstance(uri, SipURI):
            contacts = self._reached(uri, table)
        else:
            contacts = self.location.contacts(table, normalise_aor(uri))
        ordered = sorted(contacts, key=lambda c: (-(1.0 if c.q is None else c.q), -c.modified))
        if self.qualify.enabled if prefer_reachable is None else prefer_reachable:
            ordered = self.qualify.order(ordered)
        return ordered

    def _reached(self, uri: SipURI, table: str) -> list[Contact]:
        """The contacts a Request-URI reaches: its AOR's, or for a GRUU (RFC 5627) only its
        instance's (none for a temp-gruu we did not issue or whose Call-ID has changed)."""
        gruu = self.registrar.gruus.target(uri) if uri.params else None
        if gruu is None:
            return self.location.contacts(table, uri.aor)
        return gruu.select(self.location.contacts(table, gruu.aor))

    def gruus_of(self, contact: Contact) -> tuple[str, str] | None:
        """(pub-gruu, a new temp-gruu) of a binding, None without +sip.instance: for the reg
        event package's <gr:pub-gruu>/<gr:temp-gruu> (RFC 5628)."""
        return self.registrar.gruus.of(contact)

    def registered(self, uri: str | SipURI, *, table: str = DEFAULT_TABLE) -> bool:
        return bool(self.lookup(uri, table=table))

    def from_registered_device(self, request: Request, source: Source, table: str = DEFAULT_TABLE) -> bool:
        """Kamailio reg_from_user(): does the request come from a registered contact of its From AOR?"""
        uri = request.from_.uri
        if not isinstance(uri, SipURI):
            return False
        return any(c.received == source.address for c in self.location.contacts(table, uri.aor))

    # -- policies ------------------------------------------------------------------
    def single_contact(self, aor: str | None = None, *, table: str = DEFAULT_TABLE) -> bool:
        """The single-contact policy in force for ``aor`` (or the table-wide default)."""
        return self.registrar.single_contact(table, normalise_aor(aor) if aor else GLOBAL)

    async def set_single_contact(self, on: bool | None, aor: str | None = None, *,
                                 table: str = DEFAULT_TABLE, trim: bool = False,
                                 actor: Actor | None = None) -> list[Contact]:
        """Switch single-contact globally, or for one AOR (None drops the AOR's override). New
        REGISTERs obey it; with ``trim`` the AORs it now covers keep only their newest binding
        (the others removed now, reason replaced). Returns what went. Audited."""
        value = None if on is None else ("on" if on else "off")
        return await self._set_trimmed(POLICY_SINGLE_CONTACT, value, aor, table, trim, actor)

    def single_contact_overrides(self, table: str = DEFAULT_TABLE) -> dict[str, bool]:
        return {aor: v == "on" for (t, aor), v in self.location.policies(POLICY_SINGLE_CONTACT).items()
                if t == table and aor != GLOBAL}

    def max_contacts(self, aor: str | None = None, *, table: str = DEFAULT_TABLE) -> int:
        """The max-contacts limit in force for ``aor`` (or the table-wide one); 0 = none."""
        return self.registrar.max_contacts(table, normalise_aor(aor) if aor else GLOBAL)

    async def set_max_contacts(self, limit: int | None, aor: str | None = None, *,
                               table: str = DEFAULT_TABLE, trim: bool = False,
                               actor: Actor | None = None) -> list[Contact]:
        """Set max-contacts globally or for one AOR (0: no limit; None: the AOR follows the
        global limit, the global one the configured max-contacts again). New REGISTERs obey it,
        existing bindings stay (as Kamailio) unless ``trim``: then those over it go now, closest
        to expiry first (reason evicted). Stored with the policies: every node sharing the
        database applies it. Returns what went. Audited."""
        if limit is not None and limit < 0:
            raise ValueError("max-contacts must be 0 (no limit) or more")
        return await self._set_trimmed(POLICY_MAX_CONTACTS, None if limit is None else str(limit), aor, table,
                                       trim, actor)

    def max_contacts_overrides(self, table: str = DEFAULT_TABLE) -> dict[str, int]:
        return {aor: int(v) for (t, aor), v in self.location.policies(POLICY_MAX_CONTACTS).items()
                if t == table and aor != GLOBAL}

    async def policy_preview(self, name: str, value: str | None, aor: str | None = None, *,
                             table: str = DEFAULT_TABLE) -> dict[str, list[Contact]]:
        """{AOR: the contacts it would lose} if policy ``name`` (``max_contacts``: "N";
        ``single_contact``: "on"/"off"; None: inherit) were set for ``aor`` (None: globally)
        and trimmed: max-contacts the ones closest to expiry first, single-contact all but the
        newest. Changes nothing."""
        return await preview(self.location, self.registrar, table, name, value, normalise_aor(aor) if aor else None)

    async def _set_trimmed(self, name: str, value: str | None, aor: str | None, table: str, trim_now: bool,
                           actor: Actor | None) -> list[Contact]:
        key = normalise_aor(aor) if aor else GLOBAL
        with audited(self.events, actor, "policy." + name.replace("_", "-"), key or "global",
                     value=value or "inherit", trim=True if trim_now else None,
                     table=_unless_default(table)) as outcome:
            await self.location.set_policy(table, key, name, value)
            if not trim_now:
                return []
            over = await preview(self.location, self.registrar, table, name, value, key or None)
            removed = await trim(self.location, self.registrar, table, name, list(over))
            outcome["removed"] = len(removed)
            return removed

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
        """Add USER@DOMAIN (or, with ``replace``, set its password); returns it as stored.
        Audited, and published as subscriber.changed (every console's list follows)."""
        with audited(self.events, actor, "subscriber.passwd" if replace else "subscriber.add", user):
            stored = await self.subscribers.add(user, password, replace=replace)
        self.events.publish(SUBSCRIBER_CHANGED, user=stored, action="password" if replace else "added")
        return stored

    async def remove_subscriber(self, user: str, *, actor: Actor | None = None) -> str:
        with audited(self.events, actor, "subscriber.remove", user):
            removed = await self.subscribers.remove(user)
        self.events.publish(SUBSCRIBER_CHANGED, user=removed, action="removed")
        return removed

    def _subscribers_followed(self, changes: Sequence[SubscriberChange], complete: bool) -> None:
        """Subscribers changed through another registrar on the shared database: applied here,
        and published as subscriber.changed, as if changed here."""
        for user, action in self.subscribers.follow(changes, complete=complete):
            self.events.publish(SUBSCRIBER_CHANGED, user=user, action=action)

    def subscriber_list(self) -> list[str]:
        """Every subscriber as USER@DOMAIN, sorted by domain, then user."""
        return self.subscribers.list()

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

    def reg_subscriptions(self, aor: str | None = None) -> list[dict[str, Any]]:
        """The live reg event subscriptions (of ``aor``, or all): watcher, source, expires
        (seconds left), version and NOTIFYs answered."""
        return self.reg_events.subscriptions(normalise_aor(aor) if aor else None)

    def aors(self, table: str = DEFAULT_TABLE) -> list[str]:
        """The AOR keys of the table now (in no order)."""
        return list(self.location.aors(table))

    def aor_count(self, table: str = DEFAULT_TABLE) -> int:
        return self.location.aor_count(table)

    def contacts_of(self, key: str, *, table: str = DEFAULT_TABLE, now: float | None = None) -> list[Contact]:
        """The live contacts of an AOR key as :meth:`aors` gives it (no parsing: a dump of
        250,000 AORs asks for each)."""
        return self.location.contacts(table, key, now)

    def now(self) -> float:
        """The core's clock (what contacts' expiry is measured against)."""
        return self.location.clock()

    def reachability(self, contact: dict[str, Any], *, history: bool = False) -> dict[str, Any]:
        """A contact dict with its qualify state, RTT, last check, failures and flapping added;
        with ``history`` also "history": its last RTTs and state changes (QualifyService.history)."""
        self.qualify.annotate(contact)
        if history:
            contact["history"] = self.qualify.history(str(contact.get("ruid")))
        return contact

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        return self.events.subscribe(maxsize)

    def subscribe_compact(self, maxsize: int = 10_000) -> CompactSubscription:
        """What a console reads (events.CompactSubscription): cheaper to the registrar per request."""
        return self.events.subscribe_compact(maxsize)

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
            **self.reg_events.stats(),
        }

    async def nodes(self) -> list[NodeState]:
        """The registrars sharing the location table: addresses, up or down, REGISTERs per
        second (``ctl nodes``, the console's header). A table only this one uses: itself."""
        store = self.location.store
        shared = await store.nodes() if store is not None else []
        if shared:
            return shared
        now = self.location.clock()
        return [NodeState(self.config.node, tuple(self.listening), self.stats.started, 0.0,
                          self.stats.accepted_regs, float(self.stats.rate_series(now, 1)[0]), True)]

    # -- SIP in, for embedders and tests (the transports call pipeline.receive) ----------
    async def handle(self, data: bytes, source: Source) -> Reply | None:
        """One message through the pipeline: the reply and where it goes (None: nothing to send)."""
        return await awaited(lambda done: self.pipeline.receive(data, source, done))

    @property
    def authenticator(self) -> Authenticator | None:
        """Digest authentication of REGISTER (None: auth is off)."""
        return self.pipeline.authenticator

    @authenticator.setter
    def authenticator(self, value: Authenticator | None) -> None:
        self.pipeline.authenticator = value

    @property
    def transactions(self) -> TransactionTable:
        return self.pipeline.transactions


def _unless_default(table: str) -> str | None:
    """A table worth naming in an audit line (the default one goes without saying)."""
    return None if table == DEFAULT_TABLE else table


__all__ = ["NotFound", "Profile", "RegistrarCore", "normalise_aor"]

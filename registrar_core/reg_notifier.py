"""The reg event notifier (RFC 3680 over RFC 6665): SUBSCRIBE with ``Event: reg`` to an AOR,
then a NOTIFY with full state and a partial one on every change of its bindings.

Who may watch an AOR: a ``--trusted`` peer, or whoever digest-authenticates as that AOR's
user (with authentication off, as every REGISTER, anyone). A stranger gets the same 401 for
every AOR, and a trusted peer the same 200 and ``init`` state for an AOR nobody registered as
for a subscriber without contacts: watching does not tell existence.

Cost: the location service calls :meth:`RegEvents.changed` only while this table holds a
subscription (``LocationService.watch``), and then does one dict lookup per changed binding.
A REGISTER of an AOR nobody watches costs nothing more when nobody watches anything.

NOTIFYs are client transactions (client_transactions.py: retransmitted over UDP, Timer F),
sent where the SUBSCRIBE came from, over its connection for TCP, TLS and WebSocket (as a
reply would go: right behind NAT), one at a time per dialog (RFC 6665 §4.2.2): changes
made meanwhile wait and go in the next. A NOTIFY answered with an error (481 included) or
not at all ends the subscription. Subscriptions are not stored: stopping the registrar
ends each with a NOTIFY ``terminated;reason=deactivated`` and the watcher subscribes again
(README "reg event" says why).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import replace

from .client_transactions import TIMER_F, ClientTransaction, ClientTransactions
from .config import Config
from .location import DEFAULT_TABLE, Contact, LocationService
from .pipeline import Answer, Pipeline
from .reg_subscriptions import Subscription, SubscriptionTable
from .reginfo import (
    ACTIVE,
    CONTENT_TYPE,
    INIT,
    REGISTERED,
    REFRESHED,
    TERMINATED,
    ContactInfo,
    document,
    refresh_event,
    removal_event,
)
from .registrar import SERVER, reply, unsupported
from .sip import Headers, Request, Response, SipError, SipURI
from .source import Source, parse_address

log = logging.getLogger(__name__)

DEFAULT_EXPIRES = 3761  # RFC 3680 §6's suggestion
MIN_EXPIRES = 60  # shorter: 423 with Min-Expires (RFC 6665 §4.2.1.1)
MAX_EXPIRES = 7200  # longer is shortened
MAX_PER_AOR = 100  # subscriptions of one AOR: each REGISTER of it sends that many NOTIFYs
STOP_WAIT = 2.0  # seconds stop() waits for the watchers to answer their terminating NOTIFY


class RegEvents:
    """The SUBSCRIBE handler (the pipeline's method table) and the NOTIFY sender."""

    def __init__(self, config: Config, location: LocationService, pipeline: Pipeline,
                 transactions: ClientTransactions, clock: Callable[[], float],
                 gruus: Callable[[Contact], tuple[str, str] | None]) -> None:
        self.config = config
        self.gruus = gruus  # an active binding's GRUUs for <gr:pub-gruu>/<gr:temp-gruu> (gruu.py)
        self.location = location
        self.pipeline = pipeline
        self.transactions = transactions
        self.clock = clock
        self.table = SubscriptionTable()
        self.min_expires = MIN_EXPIRES
        self.max_per_aor = MAX_PER_AOR
        self.notify_timeout = TIMER_F
        self.counters = {"notify_sent": 0, "notify_failed": 0, "dropped": 0}
        self._dirty: set[Subscription] = set()  # with changes to notify at the next flush
        self._flush_at: asyncio.Handle | None = None
        self._closing: set[ClientTransaction] = set()  # terminating NOTIFYs not answered yet

    # -- SUBSCRIBE ------------------------------------------------------------------------
    def handle(self, request: Request, source: Source, answer: Answer) -> None:
        try:
            response, sub = self._subscribe(request, source)
        except SipError as exc:
            response, sub = reply(request, exc.status, exc.reason, [], self.pipeline.to_tag), None
        answer(response, response.status == 401)
        if sub is not None:
            self._mark(sub)  # RFC 6665 §4.2.1: a NOTIFY follows every accepted SUBSCRIBE

    def _subscribe(self, request: Request, source: Source) -> tuple[Response, Subscription | None]:
        tag = self.pipeline.to_tag
        event = request.headers.get("Event") or ""
        if event.partition(";")[0].strip().lower() != "reg":
            return reply(request, 489, "Bad Event", [("Allow-Events", "reg")], tag), None
        uri = request.uri
        if not isinstance(uri, SipURI) or uri.scheme not in ("sip", "sips") or uri.user is None:
            return reply(request, 416, "Unsupported URI Scheme", [], tag), None
        extensions = unsupported(request)
        if extensions:
            return reply(request, 420, "Bad Extension", [("Unsupported", ", ".join(extensions))], tag), None
        if self.config.domain and uri.host.lower() not in self.config.domain:
            return reply(request, 404, "Not Found", [], tag), None
        refusal = self._refusal(request, source, uri)
        if refusal is not None:
            return refusal, None
        if not _accepts_reginfo(request.headers.values("Accept")):
            return reply(request, 406, "Not Acceptable", [("Accept", CONTENT_TYPE)], tag), None
        expires = request.expires
        expires = DEFAULT_EXPIRES if expires is None else min(expires, MAX_EXPIRES)
        if 0 < expires < self.min_expires:
            return reply(request, 423, "Interval Too Brief", [("Min-Expires", str(self.min_expires))], tag), None
        contacts = request.contacts
        if isinstance(contacts, str) or len(contacts) != 1 or not isinstance(contacts[0].uri, SipURI):
            return reply(request, 400, "Bad Request", [("Warning", '399 sipconsole "one SIP Contact, please"')],
                         tag), None
        remote_tag = request.from_.tag or ""
        local_tag = request.to.tag
        if local_tag is None:
            if len(self.table.by_aor.get(uri.aor, ())) >= self.max_per_aor and request.expires != 0:
                return reply(request, 403, "Forbidden", [("Warning", f'399 sipconsole "{self.max_per_aor} '
                                                                     'watchers of this AOR already"')], tag), None
            sub = self._new(request, source, uri.aor, contacts[0].uri, remote_tag, event)
        else:
            found = self.table.get((request.call_id, local_tag, remote_tag))
            if found is None or found.ended or found.final:
                return reply(request, 481, "Subscription Does Not Exist", [], tag), None
            if request.cseq[0] <= found.remote_cseq:
                return reply(request, 500, "Server Internal Error", [("Retry-After", "1")], tag), None
            sub = found
            sub.remote_cseq = request.cseq[0]
            sub.remote_target = contacts[0].uri
            # NOTIFYs follow the watcher: a new connection (TCP), a new NAT binding (UDP).
            sub.local, sub.conid, sub.transport = source.local, source.conid, source.proto
            sub.addr = (source.ip, source.port)
            sub.full_due = True  # a refresh gets full state
        now = self.clock()
        sub.expires_at = now + expires
        if expires == 0:
            self._end(sub, "timeout")
        else:
            self._arm(sub, expires)
        headers = [("Expires", str(expires)), ("Contact", _our_contact(source.local)), ("Allow-Events", "reg")]
        return reply(request, 200, "OK", headers, sub.local_tag), sub

    def _refusal(self, request: Request, source: Source, uri: SipURI) -> Response | None:
        """None when the source may watch ``uri``'s AOR: trusted, authentication off, or
        credentials of that AOR's user; otherwise the challenge or refusal to send."""
        pipeline = self.pipeline
        authenticator = pipeline.authenticator
        if authenticator is None or pipeline.guard.trusted(source.ip):
            return None
        realm = uri.host.lower()
        outcome = authenticator.check(request, realm, source.ip)
        refusal = outcome.refusal
        if refusal is None:
            if outcome.username is not None and f"{outcome.username}@{realm}" == uri.aor:
                return None
            pipeline.security("wrong-aor", source, outcome.username or "")
            return reply(request, 403, "Forbidden", [], pipeline.to_tag)
        if refusal.failure:
            pipeline.security(refusal.failure, source, refusal.user)
            if refusal.failure == "user-banned" and pipeline.guard.ban(source.ip):
                pipeline.security("ban", source, refusal.user)
        return reply(request, refusal.status, refusal.reason, refusal.headers, pipeline.to_tag)

    def _new(self, request: Request, source: Source, aor: str, target: SipURI, remote_tag: str,
             event: str) -> Subscription:
        to = request.headers.get("To") or ""
        sub = Subscription(
            aor=aor, watcher=str(request.from_.uri), event=event.strip(), call_id=request.call_id,
            local_tag=secrets.token_hex(6), remote_tag=remote_tag, local_uri=to,
            remote_uri=request.headers.get("From") or "", remote_target=target,
            route_set=tuple(request.headers.values("Record-Route")), local=source.local,
            conid=source.conid, addr=(source.ip, source.port), transport=source.proto,
            remote_cseq=request.cseq[0], expires_at=0.0)
        if request.expires != 0:  # a fetch (Expires: 0) gets its one NOTIFY and is never listed
            self.table.add(sub)
            self.location.watch = self.changed
        return sub

    def _arm(self, sub: Subscription, expires: float) -> None:
        if sub.timer is not None:
            sub.timer.cancel()
        sub.timer = asyncio.get_running_loop().call_later(expires, self._end, sub, "timeout")

    def _end(self, sub: Subscription, reason: str) -> None:
        """Take ``sub`` out of the table; its last NOTIFY says terminated;reason=``reason``."""
        self._forget(sub)
        sub.final = reason
        self._mark(sub)

    def _forget(self, sub: Subscription) -> None:
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        self.table.remove(sub)
        if not len(self.table):
            self.location.watch = None  # nobody watches: REGISTERs pay nothing

    # -- location changes -> NOTIFY ---------------------------------------------------------
    def changed(self, table: str, puts: list[tuple[Contact, bool]], removes: list[tuple[Contact, str]]) -> None:
        """The location service's hook, before it applies a change (so a refresh still sees
        the expiry it replaces). Never raises: the change is committed already. A change of
        an AOR nobody watches costs a failed lookup per binding, nothing more."""
        if table != DEFAULT_TABLE:
            return
        watched = self.table.by_aor
        for contact, _ in puts:
            if contact.aor in watched:
                break
        else:
            for contact, _ in removes:
                if contact.aor in watched:
                    break
            else:
                return
        try:
            self._changed(puts, removes)
        except Exception:
            log.exception("reg event: notifying a change of %s failed", (puts or removes)[0][0].aor)

    def _changed(self, puts: list[tuple[Contact, bool]], removes: list[tuple[Contact, str]]) -> None:
        watched = self.table.by_aor
        now = self.clock()
        for contact, reason in removes:
            if contact.aor in watched:
                self._note(contact.aor, ContactInfo.of(contact, TERMINATED, removal_event(reason), now))
        for contact, is_new in puts:
            if contact.aor in watched:
                event = REGISTERED if is_new else self._refresh_event(contact)
                self._note(contact.aor, ContactInfo.of(contact, ACTIVE, event, now, self.gruus(contact)))

    def _refresh_event(self, contact: Contact) -> str:
        # now=0.0: every binding held, an expired one not yet purged too (it is being refreshed)
        for old in self.location.contacts(DEFAULT_TABLE, contact.aor, 0.0):
            if old.ruid == contact.ruid:
                return refresh_event(old.expires, contact.expires)
        return REFRESHED

    def _note(self, aor: str, info: ContactInfo) -> None:
        for sub in self.table.by_aor[aor].values():
            before = sub.pending.get(info.id)
            if before is not None and before.event == REGISTERED and info.state == ACTIVE:
                info = replace(info, event=REGISTERED)  # the watcher has not been told it came yet
            sub.pending[info.id] = info
            self._mark(sub)

    def _mark(self, sub: Subscription) -> None:
        """Send what ``sub`` has to say in the next loop iteration: all the changes of one
        REGISTER (a replaced contact and its successor) go in one NOTIFY, and after the
        replies of this one (a TCP connection writes its replies at the end of an iteration:
        a watcher that registers too hears 200 before NOTIFY)."""
        self._dirty.add(sub)
        if self._flush_at is None:
            loop = asyncio.get_running_loop()
            self._flush_at = loop.call_soon(loop.call_soon, self._flush)

    def _flush(self) -> None:
        self._flush_at = None
        dirty, self._dirty = self._dirty, set()
        for sub in dirty:
            self._send_next(sub)

    def _send_next(self, sub: Subscription) -> None:
        if sub.outstanding is not None or sub.ended:
            return  # its answer sends what is due
        now = self.clock()
        if sub.final:
            sub.ended = True
            state = f"terminated;reason={sub.final}"
            full = True
        elif sub.full_due or sub.pending:
            state = f"active;expires={max(1, int(sub.expires_at - now + 0.5))}"
            full = sub.full_due
        else:
            return
        live = self.location.contacts(DEFAULT_TABLE, sub.aor, now)
        if full:
            contacts = [ContactInfo.of(c, ACTIVE, REGISTERED, now, self.gruus(c)) for c in live]
            reg_state = ACTIVE if live else INIT
        else:
            contacts = list(sub.pending.values())
            reg_state = ACTIVE if live else (TERMINATED if any(c.state == TERMINATED for c in contacts) else INIT)
        sub.full_due = False
        sub.pending.clear()
        sub.version += 1
        sub.local_cseq += 1
        body = document(sub.aor, sub.version, full, reg_state, contacts)
        tx = self._send(sub, state, body)
        if tx is None:
            self._drop(sub, "cannot send" if sub.conid is None else "its connection is closed")
        elif sub.ended:
            self._closing.add(tx)
        else:
            sub.outstanding = tx

    def _send(self, sub: Subscription, state: str, body: bytes) -> ClientTransaction | None:
        branch = "z9hG4bKr" + secrets.token_hex(8)
        _, host, port = parse_address(sub.local)
        host = f"[{host}]" if ":" in host else host
        fields = [("Via", f"SIP/2.0/{sub.transport.upper()} {host}:{port};branch={branch};rport")]
        fields += [("Route", route) for route in sub.route_set]
        fields += [
            ("Max-Forwards", "70"),
            ("From", f"{sub.local_uri};tag={sub.local_tag}"),
            ("To", sub.remote_uri),
            ("Call-ID", sub.call_id),
            ("CSeq", f"{sub.local_cseq} NOTIFY"),
            ("Contact", _our_contact(sub.local)),
            ("Event", sub.event),
            ("Subscription-State", state),
            SERVER,
            ("Content-Type", CONTENT_TYPE),
            ("Content-Length", str(len(body))),
        ]
        data = bytes(Request(Headers(fields), body, method="NOTIFY", uri=sub.remote_target))
        tx = self.transactions.start(data, branch=branch, method="NOTIFY", local=sub.local, conid=sub.conid,
                                     addr=sub.addr, transport=sub.transport, on_done=self._answered,
                                     timeout=self.notify_timeout, context=sub)
        if tx is not None:
            self.counters["notify_sent"] += 1
        return tx

    def _answered(self, tx: ClientTransaction, response: Response | None) -> None:
        sub: Subscription = tx.context
        self._closing.discard(tx)
        if sub.outstanding is tx:
            sub.outstanding = None
        if response is None or response.status >= 300:
            self.counters["notify_failed"] += 1
            why = f"{response.status} {response.reason}" if response is not None else tx.error
            if not sub.ended:
                self._drop(sub, why)
            return
        sub.notified += 1
        self._send_next(sub)

    def _drop(self, sub: Subscription, why: str) -> None:
        """The watcher is gone (481, an error, no answer): no more NOTIFYs to it."""
        log.info("reg subscription of %s by %s (%s) dropped: %s", sub.aor, sub.watcher,
                 sub.addr[0], why)
        self.counters["dropped"] += 1
        sub.ended = True
        self._forget(sub)

    # -- operations -------------------------------------------------------------------------
    def subscriptions(self, aor: str | None = None) -> list[dict[str, object]]:
        now = self.clock()
        return [sub.to_dict(now) for sub in self.table.of(aor)]

    def stats(self) -> dict[str, int]:
        """For ``ctl stats``: live subscriptions, NOTIFYs sent and failed, watchers dropped."""
        return {"reg_subscriptions": len(self.table), "reg_notify_sent": self.counters["notify_sent"],
                "reg_notify_failed": self.counters["notify_failed"],
                "reg_subscriptions_dropped": self.counters["dropped"]}

    async def stop(self) -> None:
        """End every subscription with terminated;reason=deactivated (they are not stored:
        the watchers subscribe again) and give the watchers a moment to answer."""
        for sub in self.table.of():
            self._end(sub, "deactivated")
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush()
        deadline = asyncio.get_running_loop().time() + STOP_WAIT
        while self._closing and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)


def _accepts_reginfo(accept: list[str]) -> bool:
    """No Accept means the package's default type (RFC 6665 §4.1.2)."""
    if not accept:
        return True
    kinds = {value.partition(";")[0].strip().lower() for value in accept}
    return bool(kinds & {CONTENT_TYPE, "application/*", "*/*"})


def _our_contact(local: str) -> str:
    """Our Contact for a dialog: the socket that took the SUBSCRIBE (``udp:127.0.0.1:5060``)."""
    proto, host, port = parse_address(local)
    host = f"[{host}]" if ":" in host else host
    return f"<sip:{host}:{port};transport={proto}>"


__all__ = ["DEFAULT_EXPIRES", "MAX_EXPIRES", "MIN_EXPIRES", "RegEvents"]

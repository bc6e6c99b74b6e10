"""REGISTER processing, every step of RFC 3261 §10.3, with Kamailio's save() semantics."""

from __future__ import annotations

import email.utils
import itertools
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .config import Config
from .gruu import Gruus
from .location import (
    SAVE_MEMORY_ONLY,
    SAVE_NO_EXPIRES_RANDOM,
    SAVE_SINGLE_CONTACT,
    Contact,
    LocationService,
    StorageError,
)
from .location.service import REMOVED_EVICTED, REMOVED_REPLACED, REMOVED_UNREGISTERED
from .sip import NameAddr, Request, Response, SipError, SipURI, build_response, response_from, response_head
from .sip.headers import is_digits, parse_delta
from .sip.message import bodiless_response
from .sip.uri import Params, format_params
from .source import Source

# Final: folded into the compiled code, or a C variable, not a look-up in the module's dict
# at every use (see location/contact.py, SAVE_MEMORY_ONLY).
SUPPORTED: Final = ("path", "outbound", "gruu")
_SUPPORTED_VALUE: Final = ", ".join(SUPPORTED)
_SUPPORTED: Final = ("Supported", _SUPPORTED_VALUE)
POLICY_SINGLE_CONTACT: Final = "single_contact"
POLICY_MAX_CONTACTS: Final = "max_contacts"  # a limit "N" ("0": none); the config's max-contacts is the default
GLOBAL: Final = ""  # the AOR key of table-wide policy values


_RUID_PREFIX: Final = f"uloc-{secrets.token_hex(4)}-"
_ruid_counter: Final = itertools.count(1)


def new_ruid() -> str:
    """A unique contact id, Kamailio style: a per-boot random prefix and a counter."""
    return f"{_RUID_PREFIX}{next(_ruid_counter):x}"


class _HttpDate:
    """The Date header value of the latest second asked for: formatted once per second, not per
    reply (a compiled object's two fields, cheaper than a call through functools.lru_cache)."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def at(self, second: int) -> str:
        if second != self.second:
            self.text = email.utils.formatdate(second, usegmt=True)
            self.second = second
        return self.text


_HTTP_DATE: Final = _HttpDate()


@dataclass(slots=True, init=False)
class _Wanted:
    """One Contact of a REGISTER, validated."""

    contact: NameAddr
    addr: str
    expires: int
    q: float | None
    params: str
    instance: str
    regid: int

    def __init__(self, contact: NameAddr, addr: str, expires: int, q: float | None, params: str,
                 instance: str, regid: int) -> None:  # written out: compiled (setup.py)
        self.contact = contact
        self.addr = addr
        self.expires = expires
        self.q = q
        self.params = params
        self.instance = instance
        self.regid = regid

    @property
    def key(self) -> tuple[str, int] | str:
        return (self.instance, self.regid) if self.instance else self.addr


class RegisterRejected(Exception):
    """A REGISTER is answered with an error; ``headers`` go into the reply."""

    def __init__(self, status: int, reason: str, explanation: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = [("P-Registrar-Error", explanation), *(headers or ())]


SERVER: Final = ("Server", "sipconsole")


def reply(request: Request, status: int, reason: str, headers: list[tuple[str, str]], to_tag: str) -> Response:
    return build_response(request, status, reason, [*headers, SERVER], to_tag=to_tag)


@dataclass(slots=True, init=False)
class _Replies:
    """What the replies to one REGISTER need, taken from it before its commit: while the
    commit is on, hundreds of requests wait, and each holds these strings, not its message."""

    head: list[tuple[str, str]]  # Via, From, To with our tag, Call-ID, CSeq
    paths: list[str]  # echoed when the UA supports path (RFC 3327)
    outbound: bool  # the UA supports outbound (RFC 5626)
    flow_timer: int  # Flow-Timer for an outbound registration over a connection; 0: none
    gruus: Gruus | None  # the UA supports gruu (RFC 5627): pub-gruu and temp-gruu in the Contacts

    def __init__(self, head: list[tuple[str, str]], paths: list[str], outbound: bool, flow_timer: int,
                 gruus: Gruus | None) -> None:
        self.head = head  # written out: compiled (setup.py)
        self.paths = paths
        self.outbound = outbound
        self.flow_timer = flow_timer
        self.gruus = gruus

    @classmethod
    def to(cls, request: Request, to_tag: str, flow_timer: int, gruus: Gruus) -> _Replies:
        head = response_head(request, to_tag)
        if request.headers.first("supported") is None:  # no extension to answer: no set made
            return _Replies(head, [], False, flow_timer, None)
        supported = _supported(request)
        paths = request.headers.listed("path") if "path" in supported else []
        return _Replies(head, paths, "outbound" in supported, flow_timer,
                        gruus if "gruu" in supported else None)  # compiled, a native call (cls(...): a generic one)

    def ok(self, bindings: list[Contact], now: float) -> Response:
        gruus = self.gruus
        fields = self.head.copy()  # then names spelled canonically here: no check per field
        for c in bindings:
            fields.append(("Contact", format_binding(c, now) if gruus is None
                           else format_binding(c, now) + gruus.contact_params(c)))
        for p in self.paths:
            fields.append(("Path", p))
        if self.outbound and any(c.regid for c in bindings):
            fields.append(("Require", "outbound"))
            if self.flow_timer:  # RFC 5626 §5.4: keepalives within this keep the flow open
                fields.append(("Flow-Timer", str(self.flow_timer)))
        fields.append(_SUPPORTED)
        fields.append(("Date", _HTTP_DATE.at(int(now))))
        fields.append(SERVER)
        return bodiless_response(fields, 200, "OK")

    def failed(self, status: int, reason: str, headers: list[tuple[str, str]]) -> Response:
        return response_from(self.head, status, reason, [*headers, SERVER])


class _Save:
    """One REGISTER from its AOR's lock to its reply. An object, not closures: compiled (mypyc),
    a closure keeps its enclosing function's variables alive, the request among them (every
    REGISTER waiting for its group commit held its whole parsed message), and one object is
    fewer allocations than the closures and their environments were (six a REGISTER)."""

    def __init__(self, registrar: Registrar, table: str, aor: str, request: Request, flags: int,
                 source: Source, done: Callable[[Response], None]) -> None:
        self.registrar = registrar
        self.table = table
        self.aor = aor
        self.key = (table, aor)
        self.request: Request | None = request  # until its changes are made: then only what the reply needs
        self.flags = flags
        self.source = source
        self.done = done
        self.now = 0.0
        self.replies: _Replies | None = None
        self.answered = False

    def __call__(self) -> None:
        """With the AOR's lock held (KeyedLock.run), until the REGISTER is answered, exactly
        once: at once, or once its change is durable, or here when it raised before."""
        try:
            self.registrar._save_locked(self)
        except BaseException:
            if not self.answered:
                self.registrar.location.locks.release(self.key)
            raise

    def committed(self, error: StorageError | None) -> None:
        """The outcome of the change: the 200 with the AOR's bindings now, or a 500."""
        replies = self.replies
        assert replies is not None
        self.answered = True
        location = self.registrar.location
        try:
            if error is None:
                response = replies.ok(location.contacts(self.table, self.aor, self.now), self.now)
            else:
                response = replies.failed(500, "Server Internal Error", [
                    ("P-Registrar-Error", "Location table could not be saved"), ("Retry-After", "5")])
        finally:
            location.locks.release(self.key)
        self.done(response)

    def refused(self, response: Response) -> None:
        self.answered = True
        self.registrar.location.locks.release(self.key)
        self.done(response)


def format_binding(contact: Contact, now: float) -> str:
    q = "" if contact.q is None else f";q={contact.q:.3f}".rstrip("0").rstrip(".")
    return f"<{contact.addr}>{contact.params};expires={contact.expires_in(now)}{q}"


class Registrar:
    """Applies REGISTER requests to a LocationService."""

    def __init__(self, config: Config, location: LocationService, to_tag: str) -> None:
        self.config = config
        self.node = config.node  # recorded in every binding made here (once: a hostname look-up)
        # What every REGISTER reads of the (frozen) config, held by this compiled class: an
        # attribute of Config, which is not compiled, is a generic look-up by name.
        self.default_expires = config.default_expires
        self.min_expires = config.min_expires
        self.max_expires = config.max_expires
        self.expires_range = config.expires_range
        self.single_contact_default = config.single_contact
        self.max_contacts_default = config.max_contacts
        self.domains = config.domain  # read by check(): the 401 and every REGISTER
        self.location = location
        self.to_tag = to_tag
        self.new_ruid: Callable[[], str] = new_ruid  # tests give counted ones
        # RFC 5626 §4.4.1: the UA sends a keepalive every 80-100 % of Flow-Timer; half the idle
        # timeout leaves room, 120 s is the RFC's interval for connections.
        self.flow_timer = int(min(120.0, config.tcp_idle_timeout / 2))
        self.gruus = Gruus(config.auth_key_path)  # RFC 5627; its key is read when first needed

    def single_contact(self, table: str, aor: str) -> bool:
        value = self.location.policy(table, aor, POLICY_SINGLE_CONTACT)
        if value is None:
            value = self.location.policy(table, GLOBAL, POLICY_SINGLE_CONTACT)
        return self.single_contact_default if value is None else value == "on"

    def max_contacts(self, table: str, aor: str) -> int:
        """The max-contacts limit for ``aor``: its own, else the table-wide one (both set at
        runtime, policy_trim.py), else the configured default; 0 = no limit."""
        value = self.location.policy(table, aor, POLICY_MAX_CONTACTS)
        if value is None:
            value = self.location.policy(table, GLOBAL, POLICY_MAX_CONTACTS)
        return self.max_contacts_default if value is None else int(value)

    def save(self, table: str, request: Request, flags: int, source: Source,
             done: Callable[[Response], None]) -> None:
        """Kamailio's save(table, flags): process one REGISTER; ``done`` gets the reply,
        at once or (when bindings change) once the change is durable."""
        try:
            aor = self.check(request)
        except (RegisterRejected, SipError) as exc:
            done(self.refusal(request, exc))
            return
        self.save_checked(table, aor, request, flags, source, done)

    def save_checked(self, table: str, aor: str, request: Request, flags: int, source: Source,
                     done: Callable[[Response], None]) -> None:
        """:meth:`save` for a REGISTER that :meth:`check` passed (and that ``aor`` came from):
        the core authenticates between the two, as RFC 3261 §10.3 orders it."""
        save = _Save(self, table, aor, request, flags, source, done)
        self.location.locks.run(save.key, save)

    def refusal(self, request: Request, exc: RegisterRejected | SipError) -> Response:
        if isinstance(exc, RegisterRejected):
            return reply(request, exc.status, exc.reason, exc.headers, self.to_tag)
        return reply(request, exc.status, exc.reason, [("P-Registrar-Error", exc.reason)], self.to_tag)

    def check(self, request: Request) -> str:
        """The checks that come before authentication (RFC 3261 §10.3 steps 1-2: a domain we
        do not serve gets 404, an unknown Require 420), plus the To and Path checks that need
        no credentials either; returns the AOR or raises."""
        return self.checked_to(request).aor

    def checked_to(self, request: Request) -> SipURI:
        """:meth:`check`, returning the To's URI: the 401 needs its host, not the AOR (whose
        canonical form is about 1,200 instructions). The headers looked up by key: a REGISTER
        seldom has Require or Path, and seeing that they are absent is two dict look-ups."""
        headers = request.headers
        if headers.first("require") is not None or headers.first("proxy-require") is not None:
            extensions = unsupported(request)
            if extensions:
                raise RegisterRejected(420, "Bad Extension", "Unsupported extension required",
                                       [("Unsupported", ", ".join(extensions))])
        uri = request.to.uri
        if not isinstance(uri, SipURI) or uri.scheme not in ("sip", "sips"):
            raise RegisterRejected(400, "Bad Request", "To must be a sip or sips URI")
        domains = self.domains
        if domains and uri.host.lower() not in domains:
            raise RegisterRejected(404, "Not Found", "Domain not served here")
        if headers.first("path") is not None and "path" not in _supported(request):
            raise RegisterRejected(420, "Bad Extension", "Path without Supported: path",
                                   [("Unsupported", "path")])
        return uri

    def _save_locked(self, save: _Save) -> None:
        """With the AOR's lock held: work out the changes and commit them; ``save`` answers
        (and releases the lock) when they are durable, or at once when refused."""
        request = save.request
        assert request is not None
        save.request = None
        table, aor, flags, source = save.table, save.aor, save.flags, save.source
        now = save.now = self.location.clock()
        try:
            puts, removes = self._changes(table, aor, request, flags, source, now)
            save.replies = _Replies.to(request, self.to_tag, self.flow_timer if source.conid is not None else 0,
                                       self.gruus)
        except (RegisterRejected, SipError) as exc:
            save.refused(self.refusal(request, exc))
            return
        # A store other registrars write too keeps the AOR's limit itself (their bindings may
        # not be in memory yet); only a new binding can break it.
        limit = self._limit(table, aor, flags) if self.location.shared and any(n for _, n in puts) else None
        self.location.submit(table, puts, removes, save.committed, memory_only=bool(flags & SAVE_MEMORY_ONLY),
                             limit=limit)

    def _limit(self, table: str, aor: str, flags: int) -> tuple[int, str] | None:
        """The AOR's most bindings and the reason to remove those beyond: single-contact's 1
        (the rest replaced), else max-contacts (the oldest evicted), else None."""
        if flags & SAVE_SINGLE_CONTACT or self.single_contact(table, aor):
            return 1, REMOVED_REPLACED
        limit = self.max_contacts(table, aor)
        return (limit, REMOVED_EVICTED) if limit else None

    def _changes(self, table: str, aor: str, request: Request, flags: int, source: Source,
                 now: float) -> tuple[list[tuple[Contact, bool]], list[tuple[Contact, str]]]:
        """RFC 3261 §10.3 steps 6-8: the bindings to write and the ones to remove."""
        existing = self.location.contacts(table, aor, now)
        callid = request.call_id
        cseq = request.cseq[0]
        contacts = request.contacts
        puts: list[tuple[Contact, bool]] = []
        removes: list[tuple[Contact, str]] = []
        if isinstance(contacts, str):  # "*"
            if request.expires != 0 or len(request.headers.listed("contact")) != 1:
                raise RegisterRejected(400, "Bad Request", "* used with other contacts or non-zero expires")
            removes = [(c, REMOVED_UNREGISTERED) for c in existing if _newer(c, callid, cseq)]
        elif contacts:
            wanted = [self._wanted(c, request, aor) for c in contacts]
            by_key = {c.key(): c for c in existing}
            path = tuple(request.headers.listed("path"))
            user_agent = request.headers.first("user-agent") or ""
            methods = ",".join(request.headers.listed("allow"))
            expires_factor = self._expires_factor(flags)  # 1.0 unless default-expires-range is set
            for w in wanted:
                old = by_key.get(w.key)
                if old is not None and not _newer(old, callid, cseq):
                    continue  # the same CSeq again (a retransmission, or replayed after a restart): no update
                if w.expires == 0:
                    if old is not None:
                        removes.append((old, REMOVED_UNREGISTERED))
                    continue
                contact = Contact(
                    ruid=old.ruid if old else self.new_ruid(), aor=aor, addr=w.addr,
                    expires=now + (w.expires if expires_factor == 1.0 else round(w.expires * expires_factor)),
                    callid=callid, cseq=cseq,
                    q=w.q, params=w.params, path=path, received=source.address,
                    socket=source.local, user_agent=user_agent, methods=methods,
                    flags=SAVE_MEMORY_ONLY if flags & SAVE_MEMORY_ONLY else 0,
                    instance=w.instance, regid=w.regid, conid=source.conid, modified=now, node=self.node,
                )
                puts.append((contact, old is None))
            if flags & SAVE_SINGLE_CONTACT or self.single_contact(table, aor):
                puts, removes = _single(existing, puts, removes)
            self._check_max_contacts(self.max_contacts(table, aor), existing, puts, removes)
        return puts, removes

    def _wanted(self, contact: NameAddr, request: Request, aor: str) -> _Wanted:
        uri = contact.uri
        if not isinstance(uri, SipURI):
            raise RegisterRejected(400, "Bad Request", "Contact must be a SIP URI")
        expires_param, q_text, instance_param, regid_text, params = _contact_params(contact.params)
        if expires_param is not None:
            expires = parse_delta(expires_param, "contact expires")
        elif request.expires is not None:
            expires = request.expires
        else:
            expires = self.default_expires
        if 0 < expires < self.min_expires:
            if self.config.min_expires_mode == "reject":
                raise RegisterRejected(423, "Interval Too Brief", "Expires below the minimum",
                                       [("Min-Expires", str(self.min_expires))])
            expires = self.min_expires
        if self.max_expires and expires > self.max_expires:
            expires = self.max_expires
        q: float | None = None
        if q_text is not None:
            try:
                q = float(q_text)
            except ValueError:
                raise RegisterRejected(400, "Bad Request", "Invalid q value") from None
            if not 0.0 <= q <= 1.0:
                raise RegisterRejected(400, "Bad Request", "q value out of range")
        instance = instance_param or ""
        if len(instance) >= 2 and instance[0] == instance[-1] == '"':
            instance = instance[1:-1]  # as Kamailio's $ulc(instance): <urn:uuid:...>
        if instance and expires and self._loops(uri, aor):
            raise RegisterRejected(403, "Forbidden", "Contact is the AOR or one of its GRUUs: requests would loop")
        regid = 0
        if instance and regid_text is not None and "outbound" in _supported(request):
            if not is_digits(regid_text) or not 1 <= int(regid_text) <= 2**31 - 1:
                raise RegisterRejected(400, "Bad Request", "Invalid reg-id (RFC 5626: 1 to 2^31-1)")
            regid = int(regid_text)
        return _Wanted(contact, uri.raw or str(uri), expires, q, params, instance, regid)

    def _loops(self, uri: SipURI, aor: str) -> bool:
        """RFC 5627 §5.1: an instance's contact that is its AOR itself, or a GRUU of it, would send
        every request for it back to the AOR (a 403, not a binding)."""
        if uri.param("gr") is not None:
            target = self.gruus.target(uri)
            return target is not None and target.aor == aor
        return not uri.params and uri.port is None and uri.aor == aor

    def _expires_factor(self, flags: int) -> float:
        spread = self.expires_range
        if not spread or flags & SAVE_NO_EXPIRES_RANDOM:
            return 1.0
        return 1.0 - random.uniform(0, spread / 100)

    def _check_max_contacts(self, limit: int, existing: list[Contact], puts: list[tuple[Contact, bool]],
                            removes: list[tuple[Contact, str]]) -> None:
        """Over max-contacts: refuse the REGISTER, or with evict-oldest add to ``removes`` (the
        same commit) the bindings closest to expiry that this REGISTER neither refreshes nor
        removes; refused still when those are too few (it brings more than the limit)."""
        if not limit:
            return
        count = len(existing) - len(removes) + sum(1 for _, is_new in puts if is_new)
        if count <= limit:
            return
        if self.config.max_contacts_mode == "evict-oldest":
            touched = {c.ruid for c, _ in removes} | {c.ruid for c, _ in puts}
            oldest = sorted((c for c in existing if c.ruid not in touched), key=_expires)[:count - limit]
            if len(oldest) == count - limit:
                removes.extend((c, REMOVED_EVICTED) for c in oldest)
                return
        status = self.config.max_contacts_status
        reason = "Service Unavailable" if status == 503 else "Forbidden"
        raise RegisterRejected(status, reason, f"Too many registered contacts (max {limit})")


def _contact_params(params: Params) -> tuple[str | None, str | None, str | None, str | None, str]:
    """A Contact's expires, q, +sip.instance and reg-id parameters (the first of each: "" for a
    flag, None when absent, as NameAddr.param) and its parameters but expires and q, as written
    again: one pass, not a search (and a lower-cased name) for each, none without parameters."""
    expires: str | None = None
    q: str | None = None
    instance: str | None = None
    regid: str | None = None
    kept: list[tuple[str, str | None]] = []
    for name, value in params:
        key = name.lower()
        text = "" if value is None else value
        if key == "expires":
            expires = text if expires is None else expires
            continue
        if key == "q":
            q = text if q is None else q
            continue
        if key == "+sip.instance" and instance is None:
            instance = text
        elif key == "reg-id" and regid is None:
            regid = text
        kept.append((name, value))
    return expires, q, instance, regid, format_params(tuple(kept)) if kept else ""


def _expires(contact: Contact) -> float:
    return contact.expires


def unsupported(request: Request) -> list[str]:
    """The option tags of Require and Proxy-Require that we do not support (RFC 3261 §8.2.2.3: 420)."""
    required = [*request.headers.listed("require"), *request.headers.listed("proxy-require")]
    return [o for o in required if o.lower() not in SUPPORTED]


def _supported(request: Request) -> set[str]:
    return {v.lower() for v in request.headers.listed("supported")}


def _newer(binding: Contact, callid: str, cseq: int) -> bool:
    """RFC 3261 §10.3 steps 6-7: on the same Call-ID only a higher CSeq changes a binding.
    An equal CSeq is the request already applied (retransmitted, or resent after a crash):
    False, a no-op 200. A lower one arrived out of order: "the update MUST be aborted and the
    request fails", with the 500 that step 7 gives any failure (no Retry-After: the same
    request would fail again); nothing of the REGISTER is applied."""
    if binding.callid != callid or cseq > binding.cseq:
        return True
    if cseq < binding.cseq:
        raise RegisterRejected(500, "Server Internal Error",
                               f"Out of order: CSeq {cseq} is lower than the binding's {binding.cseq} for this Call-ID")
    return False


def _single(existing: list[Contact], puts: list[tuple[Contact, bool]],
            removes: list[tuple[Contact, str]]) -> tuple[list[tuple[Contact, bool]], list[tuple[Contact, str]]]:
    """Save flag 0x04: the REGISTER's first contact becomes the AOR's only binding."""
    if not puts:
        return puts, removes
    keep = puts[0]
    gone = {c.ruid for c, _ in removes}
    removes = removes + [(c, REMOVED_REPLACED) for c in existing if c.ruid != keep[0].ruid and c.ruid not in gone]
    return [keep], removes

"""The request pipeline: what happens to every message a transport hands the core.

Strategy (h11 style: sans-IO steps, callbacks, no task per message). One message flows
top to bottom through the methods of :class:`Pipeline`, in this order:

1. **receive**: framed bytes, their :class:`Source` and the transport's ``respond``
   callback, called exactly once (the reply and where it goes, or None: send nothing).
2. **guard**: the per-IP budget and bans (security.py); RFC 5626 keepalives (a bare CRLF,
   a STUN Binding request) are answered here and go no further.
3. **parse**: sip/ turns the bytes into a Request (malformed: a stateless 400 from what
   can be salvaged, stateless.py); a Response goes to the response sinks (qualify's
   OPTIONS); ACKs and scanners are dropped. Under auth, a REGISTER without credentials is
   answered before this step, its 401 from a minimal parse (:meth:`Pipeline._challenge`).
4. **transaction**: over UDP the server transaction table (transactions.py) answers a
   retransmission with the response already sent; TCP never retransmits, so keeps none,
   and a REGISTER without credentials under auth gets its challenge statelessly.
5. **handler**: the method table picks the handler: REGISTER goes to :meth:`register`
   (RFC 3261 §10.3: check, authenticate, save in registrar.py), the other methods to the
   redirect server (redirect.py). A new method plugs in with :meth:`handle_method`.
6. **reply**: :meth:`answered` counts the outcome, publishes request.handled (only while
   someone listens), and the serialised response goes back through ``respond``, into the
   transaction table first over UDP.

A handler answers through its ``answer`` callback, at once or when the change it made is
durable (a REGISTER's group commit), so a REGISTER waiting for its commit holds only its
answer (one small object, :class:`_Answered`), never a task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mypy_extensions import i64

from . import events as ev
from .auth import Authenticator, Refusal, authorised_for
from .config import Config
from .events import EventBus
from .keepalive import is_crlf_keepalive, stun_binding_response
from .location import DEFAULT_TABLE
from .registrar import SERVER, Registrar, RegisterRejected, reply
from .security import ADMIT, BAN, IpGuard, is_scanner, sipsec
from .sip import Headers, Request, Response, SipError, SipURI, parse_message
from .sip.message import has_empty, parse_head, parse_parsed_head, parse_request_line, response_head, serialise
from .sip.uri import URI
from .source import Source
from .stateless import salvage_reply
from .stats import Stats
from .transactions import Reply, TransactionTable, transaction_key

log = logging.getLogger(__name__)

Respond = Callable[[Reply | None], None]  # the transport's callback: the reply and where it goes


class Answer(Protocol):
    """How a handler answers: the response, and whether it is a 401 asking for (fresh)
    credentials, counted apart from real rejections."""

    def __call__(self, response: Response, challenged: bool = False) -> None: ...


Handler = Callable[[Request, Source, Answer], None]


def reply_address(request: Request, source: Source) -> tuple[str, int]:
    """RFC 3261 §18.2.2 with RFC 3581 rport: where a UDP response goes."""
    via = request.vias[0]
    host = via.received or source.ip
    rport = via.rport
    if rport:
        return host, int(rport)
    return host, via.port or 5060


def stamped_reply_address(request: Request, source: Source) -> tuple[str, int]:
    """Stamp the request's top Via with its source (:meth:`Request.stamp_source`) and return
    :func:`reply_address`: the source itself when an rport was filled (received is then the
    source's IP and rport its port), without reading the Via's parameters back and calling
    ``int()`` on the port just written (compiled, about 1,000 instructions a request)."""
    if request.stamp_source(source.ip, source.port):
        return source.ip, source.port
    return reply_address(request, source)


class Pipeline:
    """receive -> guard -> parse -> transaction -> handler -> reply (see the module's strategy)."""

    def __init__(self, config: Config, registrar: Registrar, fallback: Handler, events: EventBus,
                 stats: Stats, guard: IpGuard, clock: Callable[[], float]) -> None:
        self.config = config
        self._limits = config.limits  # a property that builds a Limits: once, not per message
        self._drop_scanners = config.drop_scanners  # every request: a compiled attribute, not Config's
        self.registrar = registrar
        self.events = events
        self.stats = stats
        self.guard = guard
        self.clock = clock
        self.to_tag = registrar.to_tag
        self.transactions = TransactionTable()
        self.authenticator: Authenticator | None = None  # set by RegistrarCore.start() when auth is on
        # Who wants the responses to requests we send (qualify's OPTIONS); set by that service.
        self.response_sinks: list[Callable[[Response, Source], object]] = []
        self._fallback = fallback  # methods nobody registered: the redirect server answers 501
        self._handlers: dict[str, Handler] = {"REGISTER": self.register}
        self._scanner_ips: set[str] = set()
        # User-Agent -> is it a scanner's: the regex costs 2 us on a phone's usual 60-character
        # User-Agent, on every request; the phones behind a registrar send a handful of them.
        self._scanner_verdicts: dict[str, bool] = {}

    def handle_method(self, method: str, handler: Handler) -> None:
        """Route requests of ``method`` to ``handler`` (step 5)."""
        self._handlers[method] = handler

    # 1. receive --------------------------------------------------------------------------
    def receive(self, data: bytes, source: Source, respond: Respond) -> None:
        """One framed message in; ``respond`` (which must not raise) is called once with the
        reply and where to send it (None: send nothing), at once or when the change the
        message made is durable."""
        try:
            self._receive(data, source, respond)
        except Exception:
            log.exception("unexpected error handling a message from %s", source.address)
            respond(None)

    def _receive(self, data: bytes, source: Source, respond: Respond) -> None:
        # 2. guard
        verdict = self.guard.admit(source.ip)
        if verdict is not ADMIT:
            if verdict is BAN:
                self.security("ban", source)
            respond(None)
            return
        if data and data[0] < 0x20 and self._keepalive(data, source, respond):  # no SIP starts so
            return
        # Under auth, a REGISTER's head is split first: a REGISTER without credentials is
        # answered from it (its 401), any other goes on with it to the full parse.
        head: tuple[str, Headers, bytes] | None = None
        authenticator = self.authenticator
        if authenticator is not None and data.startswith(b"REGISTER "):
            try:
                head = parse_head(data, self._limits)
            except SipError:
                pass  # the full parse below gives the answer
            else:
                if self._challenge(authenticator, head, source, respond):
                    return
        # 3. parse
        try:
            message = parse_message(data, self._limits) if head is None else parse_parsed_head(head)
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
                self._drop_scanners and self._dropped_as_scanner(message, source)):
            respond(None)
            return
        address = stamped_reply_address(message, source)  # taken now: the request need not outlive its handler
        # 4. transaction
        if source.proto != "udp" or self._challenged(message):
            # A reliable transport never retransmits (RFC 3261 §17.2.2: Timer J is 0 s), so
            # there is no transaction state to keep: 32 s of responses is UDP's cost alone.
            self._dispatch(message, source, _Answered(self, message.method, "", address, respond))
            return
        key = transaction_key(message)
        previous = self.transactions.lookup(key)
        if previous is not None:
            self.stats.retransmissions += 1
            respond((previous, address) if previous else None)
            return
        shard = self.transactions.begin(key)
        try:
            self._dispatch(message, source, _Answered(self, message.method, key, address, respond, shard))
        except BaseException:
            self.transactions.forget(key)
            raise

    def _challenged(self, request: Request) -> bool:
        """A REGISTER without credentials while auth is on: answered at once and changing
        nothing (a 401, or the 404/420/400 that precede it), so it is answered statelessly,
        as Kamailio's sl does: a retransmission gets a fresh 401 (RFC 3261 §8.2.7), which the
        UAC's completed transaction absorbs, and half a digest registration's transactions
        (the responses kept 32 s) are never stored."""
        return (self.authenticator is not None and request.method == "REGISTER"
                and request.headers.first("authorization") is None)

    def _challenge(self, authenticator: Authenticator, head: tuple[str, Headers, bytes], source: Source,
                   respond: Respond) -> bool:
        """The 401 to a REGISTER without credentials from a minimal parse, as Kamailio's auth_db
        answers it: the header fields, then only what the 401 echoes or needs (the request line,
        Via, To, Call-ID, CSeq, the framing) and the checks RFC 3261 §10.3 puts before
        authentication (Require, the To's scheme and domain, Path). From, Max-Forwards, Expires
        and the Contacts are left to the REGISTER that answers the challenge, which is parsed in
        full and gets every check: a 401 stores nothing and is the same for everyone, so a
        request those checks would refuse is refused one round trip later. False, and nothing
        done: the full path answers (credentials, an unusual shape, a failed check: the answer
        it always gave), with ``head``, the message's head as :func:`parse_head` split it, which
        nothing here changes."""
        start, headers, _ = head
        if headers.found("authorization") is not None:  # credentials: parsed in full
            return False
        try:
            method, target = parse_request_line(start)
            vias = headers.found("via")  # by lookup key, the index's own entries: no copies
            if (method != "REGISTER" or vias is None or has_empty(vias) or not _one(headers, "to")
                    or not _one(headers, "call-id") or not _one(headers, "cseq")):
                return False
            request = Request(headers, b"", method, target)
            if not request.vias or request.cseq[1] != method:
                return False
            to = self.registrar.checked_to(request)
        except (SipError, RegisterRejected, ValueError):
            return False
        if self._drop_scanners and self._dropped_as_scanner(request, source):
            respond(None)
            return True
        address = stamped_reply_address(request, source)
        self.stats.count_request(method)
        note = _Note(request, source) if self.events.active else None
        challenge = authenticator.challenge(to.host.lower())  # the realm, as _authenticate takes it
        # The bytes of bytes(reply(request, 401, ...)), written at once: no Response to build.
        fields = response_head(request, self.to_tag)
        fields += challenge.headers
        fields += _UNAUTHORIZED_TAIL
        self.answered(method, note, 401, "Unauthorized", True)
        respond((serialise("SIP/2.0 401 Unauthorized", fields, b""), address))
        return True

    def _keepalive(self, data: bytes, source: Source, respond: Respond) -> bool:
        """RFC 5626 keepalives: a bare CRLF is dropped, a STUN Binding request (UDP) answered,
        both counted; False for anything else (a message after CRLFs is parsed as usual)."""
        stun = stun_binding_response(data, source.ip, source.port) if source.proto == "udp" else None
        if stun is None and not is_crlf_keepalive(data):
            return False
        self.stats.keepalives += 1
        respond(None if stun is None else (stun, (source.ip, source.port)))
        return True

    def _dropped_as_scanner(self, request: Request, source: Source) -> bool:
        """A scanner's User-Agent: drop silently, and say so once per address (they send thousands)."""
        user_agent = request.headers.first("user-agent")
        if not user_agent:
            return False
        verdicts = self._scanner_verdicts
        scanner = verdicts.get(user_agent)
        if scanner is None:
            scanner = is_scanner(user_agent)
            if len(verdicts) >= 10_000:  # many distinct ones (a spray): start afresh, stay bounded
                verdicts.clear()
            verdicts[user_agent] = scanner
        if not scanner:
            return False
        self.stats.security["scanner"] += 1
        if source.ip not in self._scanner_ips and len(self._scanner_ips) < 10_000:
            self._scanner_ips.add(source.ip)
            sipsec("scanner", source.ip, source.port, user_agent)
            self.events.publish(ev.SECURITY, event="scanner", ip=source.ip, port=source.port, user=user_agent)
        return True

    # 5. handler --------------------------------------------------------------------------
    def _dispatch(self, request: Request, source: Source, answer: _Answered) -> None:
        method = request.method
        self.stats.count_request(method)
        # What the request.handled event tells, read when the event is made (a console makes
        # it for the few requests a frame it shows); nothing when nobody listens.
        if self.events.active:
            answer.note = _Note(request, source)
        self._handlers.get(method, self._fallback)(request, source, answer)

    def register(self, request: Request, source: Source, answer: Answer) -> None:
        """REGISTER, RFC 3261 §10.3 in order: the domain (step 1) and Require (step 2) are
        checked before authentication, then the bindings are saved (registrar.py)."""
        registrar = self.registrar
        if self.authenticator is None:
            registrar.save(DEFAULT_TABLE, request, 0, source, answer)
            return
        try:
            aor = registrar.check(request)
        except (RegisterRejected, SipError) as exc:
            answer(registrar.refusal(request, exc))
            return
        refusal = self._authenticate(self.authenticator, request, source)
        if refusal is not None:
            response = reply(request, refusal.status, refusal.reason, refusal.headers, self.to_tag)
            answer(response, refusal.status == 401 and refusal.failure is None)
            return
        registrar.save_checked(DEFAULT_TABLE, aor, request, 0, source, answer)

    def _authenticate(self, authenticator: Authenticator, request: Request, source: Source) -> Refusal | None:
        """Digest-authenticate a REGISTER; None means go ahead."""
        to = request.to.uri
        if not isinstance(to, SipURI):
            return None  # the registrar answers 400 for a non-SIP To
        realm = to.host.lower()
        outcome = authenticator.check(request, realm, source.ip)
        refusal = outcome.refusal
        if refusal is None and not authorised_for(request, outcome.username or "", realm):
            refusal = Refusal(403, "Forbidden", [("P-Registrar-Error", "Not authorised for this AOR")],
                              failure="wrong-aor", user=outcome.username or "")
        if refusal is not None and refusal.failure:
            self.security(refusal.failure, source, refusal.user)
            if refusal.failure == "user-banned" and self.guard.ban(source.ip):
                self.security("ban", source, refusal.user)  # the address, not the user
        return refusal

    def security(self, event: str, source: Source, user: str = "") -> None:
        """A ban, a failed authentication, a scanner: a SIPSEC log line and an event."""
        self.stats.security[event] += 1
        sipsec(event, source.ip, source.port, user)
        self.events.publish(ev.SECURITY, event=event, ip=source.ip, port=source.port, user=user)

    # 6. reply ----------------------------------------------------------------------------
    def answered(self, method: str, note: _Note | None, status: int, reason: str, challenged: bool) -> None:
        """Count and publish a request's outcome (a 401 made as bytes too); ``challenged``: a 401
        asking for (fresh) credentials, counted apart from real rejections."""
        if method == "REGISTER":
            self.stats.count_register(status == 200, challenged, self.clock())
        self.stats.by_status[status] += 1  # a status code: 100-699
        if note is not None:
            self.events.handled(method, note, status, reason)


class _Answered:
    """A request's ``answer`` (step 6): counts its outcome, keeps a UDP transaction's response
    for the retransmissions (``key``; "" keeps none) and sends it. One object per request
    where a ``functools.partial`` of a bound method and a closure were four (compiled, a
    closure is an object and its environment)."""

    def __init__(self, pipeline: Pipeline, method: str, key: str, address: tuple[str, int],
                 respond: Respond, shard: i64 = -1) -> None:
        self.pipeline = pipeline
        self.method = method
        self.key = key
        self.shard = shard  # the key's shard in the transaction table, as begin() found it
        self.address = address
        self.respond = respond
        self.note: _Note | None = None  # set by _dispatch while someone listens for request.handled

    def __call__(self, response: Response, challenged: bool = False) -> None:
        pipeline = self.pipeline
        pipeline.answered(self.method, self.note, response.status, response.reason, challenged)
        payload = response.serialised()
        if self.key:
            pipeline.transactions.complete(self.key, payload, self.shard)
        self.respond((payload, self.address))


def _one(headers: Headers, key: str) -> bool:
    """``headers`` have exactly one field of lookup key ``key`` (the index holds its value, not a list)."""
    return isinstance(headers.found(key), str)


_UNAUTHORIZED_TAIL = (SERVER, ("Content-Length", "0"))  # as reply() ends a 401


@dataclass(slots=True, init=False)  # one per request while someone listens: not frozen (cheaper to make)
class _Note:
    """The request side of a request.handled event, taken when the request comes (its
    parts, not the request: that is let go once answered) and made into strings only if the
    event is made (a console makes it for the few requests a frame it shows)."""

    uri: URI
    origin: Source
    user_agent: str

    def __init__(self, request: Request, origin: Source) -> None:
        self.uri = request.to.uri if request.method == "REGISTER" else request.uri  # written out: compiled
        self.origin = origin
        self.user_agent = request.headers.get("User-Agent") or ""

    @property
    def aor(self) -> str:
        return self.uri.aor

    @property
    def source(self) -> str:
        return self.origin.address

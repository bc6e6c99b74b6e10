"""Digest authentication of requests, with the defences of security-and-reliability.md §3-§4:
the same 401 before any subscriber lookup, a dummy HA1 for unknown users, stateless nonces
with nonce-count replay protection, stale=true for genuine old nonces, and a failed-auth
budget per user *and source address*: a stranger's wrong guesses never lock the real user
out from the phone's own address."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import deque
from dataclasses import dataclass

from ..sip import AbsoluteURI, Request, SipURI
from .digest import (ALGORITHMS, DigestError, challenge_parts, ha1_index, ha2, matches, parse_authorization,
                     response_from_ha2)
from .nonce import FORGED, STALE, NonceFactory
from .subscribers import Subscribers


@dataclass(slots=True, init=False)  # one per challenge: not frozen, whose __init__ goes through object.__setattr__
class Refusal:
    """The reply to send instead of processing the request."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    failure: str | None  # a security event worth logging: "auth-failed", "user-banned", ...
    user: str  # the username the client claimed, for that log line

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None,
                 failure: str | None = None, user: str = "") -> None:  # written out: compiled (setup.py)
        self.status = status
        self.reason = reason
        self.headers = [] if headers is None else headers
        self.failure = failure
        self.user = user


@dataclass(init=False)
class AuthOutcome:
    username: str | None
    refusal: Refusal | None

    def __init__(self, username: str | None = None, refusal: Refusal | None = None) -> None:
        self.username = username  # written out: compiled (setup.py)
        self.refusal = refusal


class Authenticator:
    def __init__(self, subscribers: Subscribers, nonces: NonceFactory, key: bytes, *,
                 algorithms: tuple[str, ...] = ALGORITHMS, fail_budget: int = 5, fail_window: float = 60.0, ban_time: float = 300.0,
                 clock=time.time) -> None:
        self.subscribers = subscribers
        self._ha1s = subscribers.table  # (username, domain) -> HA1s, the subscribers' own dict
        self.nonces = nonces
        self.algorithms = algorithms
        self._dummy_key = hashlib.sha256(b"dummy-ha1" + key).digest()
        self.fail_budget = fail_budget
        self.fail_window = fail_window
        self.ban_time = ban_time
        self.clock = clock
        # (source ip, username, realm) -> times of recent failures; -> until when refused.
        self._failures: dict[tuple[str, str, str], deque[float]] = {}
        self._locked: dict[tuple[str, str, str], float] = {}
        # realm -> the text around the nonce of each WWW-Authenticate (fresh, stale=true).
        self._fresh: dict[str, list[tuple[str, str]]] = {}
        self._stale: dict[str, list[tuple[str, str]]] = {}
        # Request-URI -> (method, algorithm, H(method:uri)): every REGISTER of a domain goes to
        # the same Request-URI, so its H(A2) is one MD5 made once instead of per request.
        self._ha2: dict[str, tuple[str, str, str]] = {}

    def challenge(self, realm: str, *, stale: bool = False, failure: str | None = None,
                  user: str = "") -> Refusal:
        """401 with one WWW-Authenticate per algorithm, the preferred first (RFC 8760 §2.4)."""
        written = self._stale if stale else self._fresh
        parts = written.get(realm)
        if parts is None:
            if len(written) >= 1024:  # realms are To hosts: many distinct ones are a spray, stay bounded
                written.clear()
            parts = written[realm] = [challenge_parts(realm, alg, stale=stale) for alg in self.algorithms]
        nonce = self.nonces.make(realm)
        headers = [("WWW-Authenticate", before + nonce + after) for before, after in parts]
        return Refusal(401, "Unauthorized", headers, failure, user)

    def check(self, request: Request, realm: str, source_ip: str) -> AuthOutcome:
        """Authenticate ``request``, which came from ``source_ip``, against ``realm`` (the AOR's domain)."""
        creds = None
        try:
            for value in request.headers.get_all("Authorization"):
                found = parse_authorization(value)
                if found is not None and (found.realm == realm or found.realm.lower() == realm):
                    creds = found
                    break
        except DigestError as exc:
            return AuthOutcome(refusal=Refusal(400, "Bad Request", [("P-Registrar-Error", str(exc))]))
        if creds is None or creds.algorithm not in self.algorithms:
            return AuthOutcome(refusal=self.challenge(realm))
        if creds.uri != (request.uri.raw or str(request.uri)):
            return AuthOutcome(refusal=Refusal(400, "Bad Request",
                                               [("P-Registrar-Error", "Digest uri differs from the Request-URI")]))
        nid = self.nonces.check(creds.nonce, realm)
        key = (source_ip, creds.username, realm)
        if nid == FORGED:
            return AuthOutcome(refusal=self._failed(key))
        if nid == STALE:
            return AuthOutcome(refusal=self.challenge(realm, stale=True))
        nc = _nc(creds.nc)
        if creds.qop != "auth" or nc is None or not creds.cnonce:
            return AuthOutcome(refusal=self._failed(key))
        if not self.nonces.nc_fresh(nid, nc):
            return AuthOutcome(refusal=self.challenge(realm, stale=True))
        if self._locked:  # nobody locked out (the usual case): no clock read
            left = self._locked.get(key, 0.0) - self.clock()
            if left > 0:
                return AuthOutcome(refusal=self._try_later(left, creds.username))
        ha1s = self._ha1s.get((creds.username, realm))
        known = None if ha1s is None else ha1s[ha1_index(creds.algorithm)]
        ha1 = known if known is not None else self._dummy_ha1(creds.username, realm, creds.algorithm)
        expected = response_from_ha2(creds.algorithm, ha1, creds.nonce, creds.nc or "", creds.cnonce, creds.qop,
                                     self._ha2_of(creds.algorithm, request.method, creds.uri))
        if not matches(expected, creds.response) or known is None:  # compared either way: the same work
            return AuthOutcome(refusal=self._failed(key))
        self.nonces.accept_nc(nid, nc)
        if self._failures:
            self._failures.pop(key, None)
        return AuthOutcome(username=creds.username)

    def _ha2_of(self, algorithm: str, method: str, uri: str) -> str:
        """H(method:uri), remembered per URI (bounded: URIs are the client's to choose)."""
        known = self._ha2.get(uri)
        if known is not None and known[0] == method and known[1] == algorithm:
            return known[2]
        value = ha2(algorithm, method, uri)
        if len(self._ha2) >= 1024:
            self._ha2.clear()
        self._ha2[uri] = (method, algorithm, value)
        return value

    def _dummy_ha1(self, username: str, realm: str, algorithm: str) -> str:
        """A stable fake HA1: unknown users cost the same work as known ones."""
        digest = hmac.new(self._dummy_key, f"{username}:{realm}:{algorithm}".encode(), "sha256").hexdigest()
        return digest[:32] if algorithm == "MD5" else digest

    def _failed(self, key: tuple[str, str, str]) -> Refusal:
        """One failed authentication of ``key`` (source ip, username, realm). Past the budget
        that user is refused from that address only ("user-banned": the core bans the address
        too, unless it is a trusted peer); from every other address it keeps registering."""
        now = self.clock()
        if len(self._failures) + len(self._locked) > 100_000:  # many addresses or names: keep what is recent
            self._failures = {k: f for k, f in self._failures.items() if f and f[-1] >= now - self.fail_window}
            self._locked = {k: until for k, until in self._locked.items() if until > now}
        failures = self._failures.setdefault(key, deque())
        failures.append(now)
        while failures and failures[0] < now - self.fail_window:
            failures.popleft()
        if len(failures) >= self.fail_budget:
            self._locked[key] = now + self.ban_time
            del self._failures[key]
            return self._try_later(self.ban_time, key[1])
        return self.challenge(key[2], failure="auth-failed", user=key[1])

    def _try_later(self, seconds: float, username: str) -> Refusal:
        """Kamailio's "403 Try later", with the Retry-After that tells a phone when."""
        return Refusal(403, "Try later", [("Retry-After", str(max(1, math.ceil(seconds))))], "user-banned", username)


def authorised_for(request: Request, username: str, realm: str) -> bool:
    """RFC 3261 §10.3 step 4: the authenticated user registers its own AOR only."""
    to = request.to.uri
    if not _owned(to, username, realm):
        return False
    from_ = request.from_.uri
    return from_ is to or _owned(from_, username, realm)  # the parser shares a From written as the To


def _owned(uri: SipURI | AbsoluteURI, username: str, realm: str) -> bool:
    """Is ``uri`` the AOR of ``username`` in ``realm`` (lower case)? The host in any case."""
    if not isinstance(uri, SipURI) or uri.user != username:
        return False
    host = uri.host
    return host == realm or host.lower() == realm


def _nc(text: str | None) -> int | None:
    if text is None or len(text) != 8:
        return None
    try:
        value = int(text, 16)
    except ValueError:
        return None
    return value or None  # nc=0 is never valid

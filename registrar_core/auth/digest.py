"""HTTP Digest for SIP (RFC 3261 §22, RFC 7616, RFC 8760): sans-IO, pure functions."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The default challenge: MD5 only. Clients still in the field fail on SHA-256 (baresip 1.0
# even when MD5 is offered first; sipsak and sipp 3.6 when SHA-256 comes first); SHA-256 and
# SHA-512-256 are a configuration away (config auth_algorithms, first offered first: RFC 8760 §2.4).
ALGORITHMS = ("MD5",)
try:  # CPython's own MD5: hashlib's (OpenSSL) sets up an EVP context per hash, 40 % of a short one
    from _md5 import md5 as _md5
except ImportError:  # an interpreter built without it
    _md5 = hashlib.md5
# The hash constructors themselves: hashlib.new looks the name up on every call.
_HASHES: dict[str, Callable[[bytes], Any]] = {
    "MD5": _md5, "SHA-256": hashlib.sha256, "SHA-512-256": functools.partial(hashlib.new, "sha512_256")}


class DigestError(ValueError):
    """Credentials that cannot even be checked (malformed, incomplete)."""


def hash_hex(algorithm: str, text: str) -> str:
    return _HASHES[algorithm](text.encode("utf-8")).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    return hash_hex(algorithm, f"{username}:{realm}:{password}")


def ha2(algorithm: str, method: str, uri: str) -> str:
    """H(A2) for qop=auth (RFC 7616 §3.4.3): the same for every request of one method to one URI."""
    return hash_hex(algorithm, f"{method}:{uri}")


def response(algorithm: str, ha1_hex: str, nonce: str, nc: str, cnonce: str, qop: str,
             method: str, uri: str) -> str:
    """The request-digest for qop=auth (RFC 7616 §3.4.1)."""
    return response_from_ha2(algorithm, ha1_hex, nonce, nc, cnonce, qop, ha2(algorithm, method, uri))


def response_from_ha2(algorithm: str, ha1_hex: str, nonce: str, nc: str, cnonce: str, qop: str,
                      ha2_hex: str) -> str:
    """:func:`response` with H(A2) already known (the registrar remembers it per Request-URI)."""
    return hash_hex(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2_hex}")


def matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.lower().encode())


@dataclass(slots=True, init=False)  # one per authenticated request: not frozen (cheaper to make); never mutated
class Credentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nc: str | None
    cnonce: str | None
    opaque: str | None

    def __init__(self, username: str, realm: str, nonce: str, uri: str, response: str, algorithm: str,
                 qop: str | None, nc: str | None, cnonce: str | None,
                 opaque: str | None) -> None:  # written out: compiled (setup.py)
        self.username = username
        self.realm = realm
        self.nonce = nonce
        self.uri = uri
        self.response = response
        self.algorithm = algorithm
        self.qop = qop
        self.nc = nc
        self.cnonce = cnonce
        self.opaque = opaque


def parse_authorization(value: str) -> Credentials | None:
    """Digest credentials from an Authorization header; None for another scheme.

    The parameters are taken from the list of pairs by an if-chain into locals: a dict of
    them cost a third of the parse (a hashed insert per parameter, a look-up per field)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    username = realm = nonce = uri = digest = algorithm = qop = nc = cnonce = opaque = None
    others: set[str] | None = None  # the names of other parameters: a duplicate is refused too
    for name, text in _params(rest):
        if name == "username" and username is None:
            username = text
        elif name == "realm" and realm is None:
            realm = text
        elif name == "nonce" and nonce is None:
            nonce = text
        elif name == "uri" and uri is None:
            uri = text
        elif name == "response" and digest is None:
            digest = text
        elif name == "algorithm" and algorithm is None:
            algorithm = text
        elif name == "cnonce" and cnonce is None:
            cnonce = text
        elif name == "qop" and qop is None:
            qop = text
        elif name == "nc" and nc is None:
            nc = text
        elif name == "opaque" and opaque is None:
            opaque = text
        elif name in _FIELDS or (others is not None and name in others):
            raise DigestError(f"duplicate Digest parameter {name}")
        else:
            if others is None:
                others = set()
            others.add(name)
    if not (username and realm and nonce and uri and digest):
        found = {"username": username, "realm": realm, "nonce": nonce, "uri": uri, "response": digest}
        missing = [k for k, v in found.items() if not v]
        raise DigestError(f"Digest credentials lack {', '.join(missing)}")
    algorithm = "MD5" if algorithm is None else algorithm.upper()
    if algorithm not in _HASHES:
        raise DigestError(f"unsupported algorithm {algorithm}")
    return Credentials(username, realm, nonce, uri, digest, algorithm, qop, nc, cnonce, opaque)


_FIELDS = frozenset(("username", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "qop", "nc", "opaque"))
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


def _params(text: str) -> list[tuple[str, str]]:
    """``a="x, y", b=z`` -> [("a", "x, y"), ("b", "z")]; names lower-cased, quoted-pairs unescaped.

    Written with str.find rather than a regular expression: a REGISTER's credentials carry
    about ten parameters, and a regex that steps through quoted strings one character at a
    time was a fifth of an authenticated REGISTER's CPU. Each string operation costs about
    200 instructions compiled, so a parameter gets as few as it can: the backslash is looked
    for once in the whole text (a phone never escapes) and the character after ``=`` is read
    once."""
    params: list[tuple[str, str]] = []
    i, n = 0, len(text)
    escapes = "\\" in text
    while True:
        equals = text.find("=", i)
        if equals < 0:
            if text[i:].strip(" \t,"):
                raise DigestError("malformed Digest parameters")
            return params
        name = text[i:equals].lstrip(" \t,").strip().lower()  # the separators before it, in one call
        i = equals + 1
        first = text[i] if i < n else ""
        if first != '"' and (first == " " or first == "\t"):  # whitespace after "=": seldom
            while first == " " or first == "\t":
                i += 1
                first = text[i] if i < n else ""
        if first == '"':
            start = i + 1
            if escapes:
                value, i = _quoted(text, start)
            else:
                close = text.find('"', start)
                if close < 0:
                    raise DigestError("unterminated quoted string")
                value = text[start:close]
                i = close + 1
        else:
            comma = text.find(",", i)
            end = n if comma < 0 else comma
            value = text[i:end].strip()
            i = end
        params.append((name, value))


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The quoted string opened before ``start``, unescaped, and the index after its closing quote."""
    k = start
    escaped = False
    while True:
        close = text.find('"', k)
        if close < 0:
            raise DigestError("unterminated quoted string")
        backslash = text.find("\\", k, close)
        if backslash < 0:
            break
        escaped = True
        k = backslash + 2  # the escaped character, a quote maybe, is part of the value
    value = text[start:close]
    return (_QUOTED_PAIR.sub(r"\1", value) if escaped else value), close + 1


def challenge_parts(realm: str, algorithm: str, *, stale: bool = False) -> tuple[str, str]:
    """A WWW-Authenticate value offering qop=auth, as the text before and after its nonce:
    written once per realm, a challenge is then two concatenations around a fresh nonce."""
    after = f'", qop="auth", algorithm={algorithm}'
    return f'Digest realm="{realm}", nonce="', (after + ", stale=true" if stale else after)

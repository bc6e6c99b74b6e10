"""HTTP Digest for SIP (RFC 3261 §22, RFC 7616, RFC 8760): sans-IO, pure functions."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mypy_extensions import i64

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


def ha1_index(algorithm: str) -> int:
    """Where a subscriber's HA1 for ``algorithm`` is among its HA1s (subscribers.ha1_set's order)."""
    return 0 if algorithm == "MD5" else 1 if algorithm == "SHA-256" else 2


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
    """``given`` (a response, hex in either case) is ``expected``, compared in constant time."""
    try:
        return hmac.compare_digest(expected, given.lower())  # str: no encoding needed when ASCII
    except TypeError:  # non-ASCII: not a hex digest
        return False


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

    The parameters are read one at a time into locals by an if-chain on their field number (a
    dict of them cost a third of the parse: a hashed insert per parameter, a look-up per field;
    a list of pairs, the tuples and their release). A name is lower-cased only when it is not
    already one of the fields as written (phones write them in lower case)."""
    if value.startswith("Digest ") and 32 < ord(value[-1]) < 127:  # as written by phones: nothing to strip
        rest = value[7:]
    else:
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() != "digest":
            return None
    username = realm = nonce = uri = digest = algorithm = qop = nc = cnonce = opaque = None
    others: set[str] | None = None  # the names of other parameters: a duplicate is refused too
    escapes = "\\" in rest  # looked for once: a phone never escapes
    i: i64 = 0
    while True:
        name, text, i = _param(rest, i, escapes)
        if i < 0:
            break
        field = _field(name)
        if field < 0:
            name = name.lower()
            field = _field(name)
        if field == 0 and username is None:
            username = text
        elif field == 1 and realm is None:
            realm = text
        elif field == 2 and nonce is None:
            nonce = text
        elif field == 3 and uri is None:
            uri = text
        elif field == 4 and digest is None:
            digest = text
        elif field == 5 and algorithm is None:
            algorithm = text
        elif field == 6 and cnonce is None:
            cnonce = text
        elif field == 7 and qop is None:
            qop = text
        elif field == 8 and nc is None:
            nc = text
        elif field == 9 and opaque is None:
            opaque = text
        elif field >= 0 or (others is not None and name in others):
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


def _field(name: str) -> int:
    """The field number of a Digest parameter name as parse_authorization keeps it, -1 for another.
    By length first: one or two comparisons a name instead of up to ten."""
    size = len(name)
    if size == 8:
        return 0 if name == "username" else 4 if name == "response" else -1
    if size == 5:
        return 1 if name == "realm" else 2 if name == "nonce" else -1
    if size == 3:
        return 3 if name == "uri" else 7 if name == "qop" else -1
    if size == 9:
        return 5 if name == "algorithm" else -1
    if size == 6:
        return 6 if name == "cnonce" else 9 if name == "opaque" else -1
    if size == 2:
        return 8 if name == "nc" else -1
    return -1


_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


def _param(text: str, i: i64, escapes: bool) -> tuple[str, str, i64]:
    """The parameter from ``i`` on in ``a="x, y", b=z``: (name as written, value unquoted, the
    index after it); ("", "", -1) when only separators are left. ``escapes``: a backslash is
    somewhere in ``text``.

    Written with str.find and single characters read as ints rather than a regular expression
    (a regex stepping through quoted strings was a fifth of an authenticated REGISTER's CPU;
    re.findall costs more than this whole parse) or a string method per separator: compiled,
    ``ord(text[i])`` is a few instructions, a string operation about 200. The separators before
    the name are skipped as ``lstrip(" \\t,")`` would, anything else around it as ``strip()``.
    The indices and characters are native integers (i64): no tagged checks, no ``+`` calls."""
    n: i64 = len(text)
    c: i64
    while i < n:
        c = ord(text[i])
        if c != 32 and c != 44 and c != 9:  # " ", ",", tab
            break
        i += 1
    if i >= n:
        return "", "", -1
    equals: i64 = text.find("=", i)
    if equals < 0:
        raise DigestError("malformed Digest parameters")
    name = text[i:equals]
    # Only a character outside 33-126 can be one strip() removes: tested inline (a call per
    # test was 5 % of an authorized REGISTER in pure Python).
    if not 32 < ord(text[i]) < 127 or (equals > i and not 32 < ord(text[equals - 1]) < 127):
        name = name.strip()
    i = equals + 1
    c = ord(text[i]) if i < n else 0
    while c == 32 or c == 9:  # whitespace after "=": seldom
        i += 1
        c = ord(text[i]) if i < n else 0
    if c == 34:  # '"'
        start: i64 = i + 1
        if escapes:
            return _quoted(name, text, start)
        close: i64 = text.find('"', start)
        if close < 0:
            raise DigestError("unterminated quoted string")
        return name, text[start:close], close + 1
    comma: i64 = text.find(",", i)
    end: i64 = n if comma < 0 else comma
    value = text[i:end]
    if end > i and (not 32 < c < 127 or not 32 < ord(text[end - 1]) < 127):
        value = value.strip()
    return name, value, end


def _quoted(name: str, text: str, start: i64) -> tuple[str, str, i64]:
    """(name, the quoted string opened before ``start`` unescaped, the index after its closing quote)."""
    k: i64 = start
    escaped = False
    while True:
        close: i64 = text.find('"', k)
        if close < 0:
            raise DigestError("unterminated quoted string")
        backslash: i64 = text.find("\\", k, close)
        if backslash < 0:
            break
        escaped = True
        k = backslash + 2  # the escaped character, a quote maybe, is part of the value
    value = text[start:close]
    return name, (_QUOTED_PAIR.sub(r"\1", value) if escaped else value), close + 1


def challenge_parts(realm: str, algorithm: str, *, stale: bool = False) -> tuple[str, str]:
    """A WWW-Authenticate value offering qop=auth, as the text before and after its nonce:
    written once per realm, a challenge is then two concatenations around a fresh nonce."""
    after = f'", qop="auth", algorithm={algorithm}'
    return f'Digest realm="{realm}", nonce="', (after + ", stale=true" if stale else after)

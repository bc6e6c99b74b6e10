"""HTTP Digest for SIP (RFC 3261 §22, RFC 7616, RFC 8760): sans-IO, pure functions."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

# Preference order: the first is offered first in the challenges (RFC 8760 §2.4).
ALGORITHMS = ("SHA-256", "MD5")
_HASHES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}


class DigestError(ValueError):
    """Credentials that cannot even be checked (malformed, incomplete)."""


def hash_hex(algorithm: str, text: str) -> str:
    return hashlib.new(_HASHES[algorithm], text.encode("utf-8")).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    return hash_hex(algorithm, f"{username}:{realm}:{password}")


def response(algorithm: str, ha1_hex: str, nonce: str, nc: str, cnonce: str, qop: str,
             method: str, uri: str) -> str:
    """The request-digest for qop=auth (RFC 7616 §3.4.1)."""
    ha2 = hash_hex(algorithm, f"{method}:{uri}")
    return hash_hex(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.lower().encode())


@dataclass(frozen=True, slots=True)
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


def parse_authorization(value: str) -> Credentials | None:
    """Digest credentials from an Authorization header; None for another scheme."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params = _parse_params(rest)
    missing = [k for k in ("username", "realm", "nonce", "uri", "response") if not params.get(k)]
    if missing:
        raise DigestError(f"Digest credentials lack {', '.join(missing)}")
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in _HASHES:
        raise DigestError(f"unsupported algorithm {algorithm}")
    return Credentials(
        username=params["username"], realm=params["realm"], nonce=params["nonce"], uri=params["uri"],
        response=params["response"], algorithm=algorithm, qop=params.get("qop"),
        nc=params.get("nc"), cnonce=params.get("cnonce"), opaque=params.get("opaque"),
    )


def _parse_params(text: str) -> dict[str, str]:
    """``a="x, y", b=z`` -> {"a": "x, y", "b": "z"}; quoted-pairs unescaped."""
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            raise DigestError("malformed Digest parameters")
        name = text[i:eq].strip().lower()
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            out = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(text[i])
                i += 1
            if i >= n:
                raise DigestError("unterminated quoted string")
            value = "".join(out)
            i += 1
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        if name in params:
            raise DigestError(f"duplicate Digest parameter {name}")
        params[name] = value
    return params


def challenge(realm: str, nonce: str, algorithm: str, *, stale: bool = False, opaque: str | None = None) -> str:
    """A WWW-Authenticate value offering qop=auth."""
    parts = [f'Digest realm="{realm}"', f'nonce="{nonce}"', 'qop="auth"', f"algorithm={algorithm}"]
    if opaque:
        parts.append(f'opaque="{opaque}"')
    if stale:
        parts.append("stale=true")
    return ", ".join(parts)

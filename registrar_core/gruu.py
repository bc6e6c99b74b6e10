"""GRUU (RFC 5627): addresses that reach one registered device (instance) alone. Sans-IO.

A REGISTER with ``Supported: gruu`` gets, for each binding with ``+sip.instance``, two URIs as
quoted parameters of its Contact in the 200 (§5.2):

- ``pub-gruu``: the AOR with ``;gr=`` and the instance id (the URN without its angle brackets,
  §3.1.1): the same on every REGISTER, and it shows the AOR.
- ``temp-gruu``: ``sip:tgruu.TOKEN@DOMAIN;gr`` (§3.1.2), which hides the AOR. TOKEN is the AOR's
  user part, the instance id (a ``urn:uuid:`` as its 16 bytes) and a digest of the
  registration's Call-ID, encrypted, and authenticated together with DOMAIN, with keys derived
  from the registrar's auth key (``--auth-key``): nothing is stored, and every node
  given the same key file recognises it. A random IV makes each REGISTER's temp-gruu new while
  the earlier ones stay valid (§5.4); each selects its instance only while one of the
  instance's bindings has that Call-ID, so a REGISTER with a new Call-ID (the device restarted)
  ends every temp-gruu issued before it (§5.4).

The cipher: SHAKE-256 of key and IV as the keystream, keyed BLAKE2b over domain, IV and
ciphertext as the MAC (encrypt-then-MAC), both in hashlib: tokens of 50-odd bytes need no
crypto dependency, and issuing one costs a few microseconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from .auth.nonce import load_key
from .location import Contact
from .sip import SipURI

TEMP_PREFIX = "tgruu."  # the user part of every temp-gruu starts with it (RFC 5627 §3.1.2's example)
_PARAM_SAFE = "!*'()[]/:&+$"  # RFC 3261 §25.1 paramchar, besides what quote() keeps (unreserved)
_UUID_URN = "urn:uuid:"
_CANONICAL_UUID_URN = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_IV = 12
_CALLID = 8
_TAG = 12


def instance_id(instance: str) -> str:
    """The instance id of a stored ``+sip.instance`` (``<urn:uuid:...>``): the URN inside."""
    if len(instance) >= 2 and instance[0] == "<" and instance[-1] == ">":
        return instance[1:-1]
    return instance


def pub_gruu(aor: str, instance: str) -> str:
    """The public GRUU of ``instance`` (as stored) registered under ``aor`` (RFC 5627 §3.1.1)."""
    return f"sip:{aor};gr={quote(instance_id(instance), safe=_PARAM_SAFE)}"


def _callid_digest(callid: str) -> bytes:
    return hashlib.blake2b(callid.encode("utf-8", "surrogateescape"), digest_size=_CALLID).digest()


def _xor(data: bytes, key: bytes, iv: bytes) -> bytes:
    """``data`` XOR the keystream of (key, iv): encrypts and decrypts."""
    stream = hashlib.shake_256(key + iv).digest(len(data))
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def _packed(instance: str) -> bytes:
    """An instance id in a token: a ``urn:uuid:`` (what phones send) as its 16 bytes, keeping
    temp-gruus short; any other text as it is."""
    if _CANONICAL_UUID_URN.fullmatch(instance):  # lower-case hex: the round trip is exact
        return b"\x01" + bytes.fromhex(instance[len(_UUID_URN):].replace("-", ""))
    return b"\x00" + instance.encode("utf-8", "surrogateescape")


def _unpacked(data: bytes) -> str:
    if data[:1] == b"\x01" and len(data) == 17:
        return _UUID_URN + str(uuid.UUID(bytes=data[1:]))
    return data[1:].decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class GruuTarget:
    """What a GRUU in a Request-URI names: the instance ``instance`` of ``aor``, and for a
    temp-gruu the digest of the Call-ID it was issued under (b"" for a pub-gruu)."""

    aor: str
    instance: str
    callid: bytes = b""

    def select(self, contacts: list[Contact]) -> list[Contact]:
        """Those of the AOR's ``contacts`` the GRUU reaches: the instance's, and for a temp-gruu
        only while one of them is still registered under its Call-ID."""
        if not self.instance:
            return []
        mine = [c for c in contacts if c.instance and instance_id(c.instance) == self.instance]
        if self.callid and not any(_callid_digest(c.callid) == self.callid for c in mine):
            return []
        return mine


NOWHERE = GruuTarget("", "")  # a temp-gruu we did not issue (forged, tampered, another key): reaches nothing


class Gruus:
    """Issues and recognises GRUUs with keys derived from the auth key file, read on first use
    (a registrar whose phones never ask for GRUUs never reads it)."""

    def __init__(self, key_path: Path) -> None:
        self._key_path = key_path
        self._keys: tuple[bytes, bytes] | None = None

    def _cipher_keys(self) -> tuple[bytes, bytes]:
        if self._keys is None:
            key = load_key(self._key_path)
            self._keys = (hmac.digest(key, b"sipconsole gruu encryption", "sha256"),
                          hmac.digest(key, b"sipconsole gruu authentication", "sha256"))
        return self._keys

    def of(self, contact: Contact) -> tuple[str, str] | None:
        """(pub-gruu, a new temp-gruu) of a binding; None without ``+sip.instance`` (no GRUU)."""
        if not contact.instance:
            return None
        return pub_gruu(contact.aor, contact.instance), self.temp_gruu(contact)

    def contact_params(self, contact: Contact) -> str:
        """The ``;pub-gruu="...";temp-gruu="..."`` a 200 adds to the binding's Contact (RFC 5627 §5.2)."""
        gruus = self.of(contact)
        return "" if gruus is None else f';pub-gruu="{gruus[0]}";temp-gruu="{gruus[1]}"'

    def temp_gruu(self, contact: Contact) -> str:
        """A new temp-gruu of the binding's instance, valid while it keeps its Call-ID."""
        encryption, authentication = self._cipher_keys()
        user, _, domain = contact.aor.rpartition("@")
        plain = b"\n".join((_callid_digest(contact.callid) + user.encode("utf-8", "surrogateescape"),
                            _packed(instance_id(contact.instance))))
        iv = secrets.token_bytes(_IV)
        sealed = iv + _xor(plain, encryption, iv)
        token = sealed + _tag(authentication, domain, sealed)
        return f"sip:{TEMP_PREFIX}{base64.urlsafe_b64encode(token).rstrip(b'=').decode()}@{domain};gr"

    def target(self, uri: SipURI) -> GruuTarget | None:
        """What the Request-URI ``uri`` names if it is a GRUU (a ``gr`` parameter); None if it is not."""
        gr = uri.param("gr")
        if gr is None:
            return None
        if gr:
            return GruuTarget(uri.aor, unquote(gr))
        return self._opened(uri) or NOWHERE

    def _opened(self, uri: SipURI) -> GruuTarget | None:
        """The temp-gruu ``uri`` decrypted, if we issued it (its MAC holds) for its host's domain."""
        user = uri.user or ""
        if not user.startswith(TEMP_PREFIX):
            return None
        text = user[len(TEMP_PREFIX):]
        try:
            token = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except ValueError:  # not base64, or not ASCII
            return None
        if len(token) < _IV + _CALLID + _TAG:
            return None
        sealed, tag = token[:-_TAG], token[-_TAG:]
        encryption, authentication = self._cipher_keys()
        domain = uri.aor.rpartition("@")[2]
        if not hmac.compare_digest(_tag(authentication, domain, sealed), tag):
            return None
        plain = _xor(sealed[_IV:], encryption, sealed[:_IV])
        aor_user, newline, instance = plain[_CALLID:].partition(b"\n")
        if not newline:
            return None
        aor = f"{aor_user.decode('utf-8', 'surrogateescape')}@{domain}" if aor_user else domain
        return GruuTarget(aor, _unpacked(instance), plain[:_CALLID])


def _tag(key: bytes, domain: str, sealed: bytes) -> bytes:
    """The MAC of a token (keyed BLAKE2b): over the domain it is valid in, the IV and the
    ciphertext (a NUL between: no host holds one)."""
    return hashlib.blake2b(domain.encode("utf-8", "surrogateescape") + b"\0" + sealed, key=key,
                           digest_size=_TAG).digest()

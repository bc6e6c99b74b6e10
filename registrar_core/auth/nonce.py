"""Stateless nonces: MAC-signed tokens with an expiry and the boot id, plus nonce-count tracking.

Layout (hex, 64 characters): exp(4) | boot(4) | nid(8) | BLAKE2s-128(key; exp|boot|nid|realm).
A valid MAC from an earlier boot, or past its expiry, is *stale* (the client retries at once
with a fresh nonce); a bad MAC is forged.

The nid counts the nonces made since boot, as Kamailio's nonce index does (auth module,
``nc_array_size``): the highest accepted nonce count of each of the last ``NC_WINDOW`` nonces
lives in a fixed array at ``nid % NC_WINDOW``, so that replay protection costs one array slot
per nonce instead of a dictionary entry (a string key, a tuple) per challenge answered. A
nonce that has left the window is stale, as one past its expiry. The last ``RECENT`` nonces
made are kept by their text, with their id, realm and expiry: the REGISTER that answers a
challenge finds its nonce there instead of decoding it and computing the MAC again (the MAC
still decides for every other).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import secrets
import struct
import time
from array import array
from pathlib import Path
from typing import Final

NONCE_LIFETIME = 300  # seconds, as Kamailio's nonce_expire
MAX_DRIFT = 3  # a nonce dated further in the future is stale
# Nonces whose counts are tracked (4 bytes each, allocated once): the last million made, more
# than 300 s of challenges at 3,000 a second; under a heavier storm older nonces go stale early.
NC_WINDOW = 1 << 20
# The last nonces made, kept with their id, realm and expiry (about 200 bytes each): the answer
# to a challenge comes a round trip later, and a nonce found there needs neither its hex
# decoded nor its MAC computed again (as HMAC-SHA256 that was a quarter of the credentials'
# check); an older one, or one spelled otherwise, is checked by its MAC as before.
RECENT = 1 << 13
# What NonceFactory.check answers besides a valid nonce's id (>= 0). Final: compiled, a
# constant in the code that compares with them, not a look-up in this module's dict.
STALE: Final = -1
FORGED: Final = -2


def load_key(path: Path) -> bytes:
    """The nonces' MAC key kept on disk (mode 0600), made on first use."""
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


_BODY = struct.Struct("!IIQ")  # exp, boot, nid


def _unpack_body(body: bytes) -> tuple[int, int, int]:
    """The nonce's exp, boot and nid, typed: compiled, they are then compared as C integers."""
    expires, boot, nid = _BODY.unpack(body)
    return expires, boot, nid


NONCE_LENGTH: Final = 64  # characters: 32 bytes in hex
_FROM_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")


def _raw(text: str) -> bytes:
    """The nonce's 32 bytes; ValueError when it is not a nonce's text. Hex of exactly that
    length (bytes.fromhex skips whitespace: no other spelling decodes to a nonce's bytes), or the
    base64url of 43 characters that versions before 2026-12-07 wrote: a phone that comes back
    after an upgrade with such a nonce gets stale=true, as for any nonce of an earlier boot, not
    a failed authentication."""
    if len(text) == NONCE_LENGTH:
        raw = bytes.fromhex(text)
    else:
        data = text.encode("ascii").translate(_FROM_URLSAFE)
        raw = binascii.a2b_base64(data + b"=" * (-len(data) % 4))
    if len(raw) != 32:
        raise ValueError("not a nonce")
    return raw


class NonceMac:
    """The nonce's MAC: BLAKE2s keyed with our key, 16 bytes (RFC 7693 §2.5: keyed BLAKE2 is a
    MAC by design, no HMAC construction needed). The keyed state is made once and copied per
    message: one state and one compression where HMAC-SHA256 took two of each, in every 401
    (0.53 -> 0.25 us a MAC). A nonce is only ever checked by the process that made it (the
    boot id), so the MAC is no format shared with anything else."""

    def __init__(self, key: bytes) -> None:
        if len(key) > 32:  # BLAKE2s takes keys of up to 32 bytes
            key = hashlib.sha256(key).digest()
        self._keyed = hashlib.blake2s(key=key, digest_size=16)

    def digest(self, message: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(message)
        return mac.digest()


class NonceFactory:
    def __init__(self, key: bytes, *, lifetime: int = NONCE_LIFETIME, clock=time.time,
                 window: int = NC_WINDOW, recent: int = RECENT) -> None:
        self._mac_of = NonceMac(key)
        self.lifetime = lifetime
        self.clock = clock
        self.boot = secrets.randbits(32)
        self._next = 0  # the nid of the next nonce made
        self._window = window
        self._nc = array("I", [0]) * window  # highest accepted nc of the nonce nid, at nid % window
        self._recent = recent
        self._made = [""] * recent  # the nonce nid as made, at nid % recent
        self._made_realm = [""] * recent  # and the realm it was made for
        self._made_expires = [0] * recent  # and its expiry
        self._made_nid: dict[str, int] = {}  # each of those nonces -> its nid

    def _mac(self, body: bytes, realm: str) -> bytes:
        return self._mac_of.digest(body + realm.encode())

    def make(self, realm: str) -> str:
        nid = self._next
        self._next = nid + 1
        self._nc[nid % self._window] = 0  # the slot's previous nonce has left the window
        expires = int(self.clock()) + self.lifetime
        body = _BODY.pack(expires, self.boot, nid)
        # Hex: one call (compiled, base64url was four: encode, cut, translate, decode, about
        # 2,000 instructions a 401). Its characters are base64url's too; 21 more of them.
        nonce = (body + self._mac(body, realm)).hex()
        slot = nid % self._recent
        made = self._made_nid
        old = self._made[slot]
        if old:
            del made[old]
        made[nonce] = nid
        self._made[slot] = nonce
        self._made_realm[slot] = realm
        self._made_expires[slot] = expires
        return nonce

    def check(self, nonce: str, realm: str) -> int:
        """The nonce's id (>= 0) when it is ours, for ``realm``, and current; else STALE or FORGED."""
        nid = self._made_nid.get(nonce, -1)
        if nid >= 0 and self._made_realm[nid % self._recent] == realm:  # public values: == is fine
            return self._current(self._made_expires[nid % self._recent], self.boot, nid)
        try:
            raw = _raw(nonce)
        except ValueError:  # binascii.Error and UnicodeEncodeError are ValueErrors
            return FORGED
        body = raw[:16]
        expires, boot, nid = _unpack_body(body)
        if not hmac.compare_digest(raw[16:], self._mac(body, realm)):
            return FORGED
        return self._current(expires, boot, nid)

    def _current(self, expires: int, boot: int, nid: int) -> int:
        """``nid`` if a genuine nonce with these fields is current, else STALE."""
        now = int(self.clock())  # whole seconds, as expires: the same answers, compared as C integers
        if (boot != self.boot or expires <= now or expires > now + self.lifetime + MAX_DRIFT
                or not self._next - self._window <= nid < self._next):
            return STALE
        return nid

    def nc_fresh(self, nid: int, nc: int) -> bool:
        """Is ``nc`` above every count already accepted with the nonce ``nid`` (a current one)?"""
        return nc > self._nc[nid % self._window]

    def accept_nc(self, nid: int, nc: int) -> None:
        """Record ``nc`` once the digest has verified (never before: that would let anyone poison it)."""
        self._nc[nid % self._window] = nc

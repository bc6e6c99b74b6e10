"""Non-INVITE server transactions (RFC 3261 §17.2.2), reduced to what a registrar needs:
a retransmitted request gets the same response again and is not processed twice."""

from __future__ import annotations

import time
from typing import Final

from mypy_extensions import i64

from .sip import Request

MAGIC_COOKIE = "z9hG4bK"
TIMER_J = 32.0  # 64*T1: how long a completed transaction absorbs retransmissions
Reply = tuple[bytes, tuple[str, int]]  # a response and where it goes
IN_PROGRESS = b""  # the table's value while a transaction has no response yet
# Transactions remembered at most. At 30,000 REGISTER/s Timer J alone would keep about a
# million (600 MB, 650 bytes each) during a registration storm; past this bound the oldest go
# early. A retransmission of one of those is processed again, which changes nothing: the
# same Call-ID and CSeq never update a binding (RFC 3261 §10.3 step 7), the reply lists the
# current bindings, and a retransmitted challenge gets a fresh nonce.
MAX_TRANSACTIONS = 200_000
# The table's dicts (a power of two): at the bound, about 800 keys each.
SHARDS: Final = 256
SHARD_MASK: Final[i64] = SHARDS - 1
SHARD_SHIFT: Final[i64] = 48  # bits 48-55 of the hash pick the shard


def _shard(key: str) -> i64:
    """The key's shard, from high bits of its hash: a dict places keys by the low bits, and
    keys that shared those would crowd a few slots of their shard's dict. (Compiled, hash()
    makes an int object for the half of the hashes that do not fit a tagged int: as an i64 it
    is at least not shifted and masked by generic long operations.)"""
    return (i64(hash(key)) >> SHARD_SHIFT) & SHARD_MASK


def transaction_key(request: Request) -> str:
    """RFC 3261 §17.2.3 matching; RFC 2543 fallback when the branch lacks the cookie.

    One string (its parts hold no spaces), so that the table holds no per-request
    containers for the garbage collector to walk."""
    via = request.vias[0]
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    port = via.port
    if branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
        # One f-string: no sent-by string apart; the port formatted as an int (compiled, "port or ''"
        # is an object formatted through a generic str()).
        if port is None:
            return f"{branch} {via.host}: {method}"
        return f"{branch} {via.host}:{port} {method}"
    return (f"{request.call_id} {request.cseq[0]} {method} {request.from_.tag or ''} "
            f"{via.host}:{via.port or ''} {branch}")


class TransactionTable:
    """Responses of recent transactions, forgotten Timer J after the request came.

    Keys are strings and values response bytes (a retransmission carries the same Via,
    so where the response goes is worked out from it again). Timer J counts from arrival
    rather than from the response (milliseconds apart). Beyond ``max_entries`` the oldest
    are forgotten early (``evicted`` counts them).

    The entries are spread over ``SHARDS`` small dicts by the key's hash (a str caches it, so
    the dict probe that follows does not hash again). Why: a dict under churn (one insertion
    and one deletion per request) rebuilds itself whenever its free slots run out, and one
    dict of 200,000 keys took 10-26 ms to do so, a stall of the event loop and of every
    datagram queued behind it; a shard of about 800 keys rebuilds in well under a millisecond.
    Arrival order is a ring of ``max_entries`` slots in three lists (key, deadline, shard),
    made at start (about 5 MB, frozen out of the collector by ``Server.start``): compiled, a
    list's item is set natively where a deque's append is a method call.
    """

    def __init__(self, lifetime: float = TIMER_J, clock=time.monotonic,
                 max_entries: int = MAX_TRANSACTIONS) -> None:
        self._shards: list[dict[str, bytes]] = [{} for _ in range(SHARDS)]
        self._ring_keys: list[str] = [""] * max_entries
        self._ring_deadlines: list[float] = [0.0] * max_entries
        self._ring_shards: list[i64] = [0] * max_entries  # small ints: no object made
        self._oldest = 0  # the ring's slot of the oldest entry
        self._queued = 0  # entries in the ring
        # The key of the last lookup and its shard: the pipeline begins the transaction it
        # has just looked up.
        self._looked_up = ""
        self._looked_up_shard: i64 = 0
        self._lifetime = lifetime
        self._clock = clock
        self._max_entries = max_entries
        self.evicted = 0

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards)

    def lookup(self, key: str) -> bytes | None:
        """None for a new transaction; IN_PROGRESS or the final response for a known one."""
        shard = _shard(key)
        self._looked_up, self._looked_up_shard = key, shard
        return self._shards[shard].get(key)

    def begin(self, key: str) -> i64:
        """Note a new transaction as in progress; returns its shard, for :meth:`complete`."""
        now = self._clock()
        keys, deadlines, key_shards, shards = self._ring_keys, self._ring_deadlines, self._ring_shards, self._shards
        size, oldest, queued = self._max_entries, self._oldest, self._queued
        while queued and (deadlines[oldest] <= now or queued >= size):
            # Timer J has fired, or the ring is full: the oldest goes.
            if shards[key_shards[oldest]].pop(keys[oldest], None) and deadlines[oldest] > now:
                self.evicted += 1  # completed and early: a retransmission of it would be processed again
            keys[oldest] = ""  # the key string is freed now, not when the slot comes round again
            oldest = oldest + 1 if oldest + 1 < size else 0
            queued -= 1
        shard = self._looked_up_shard if key is self._looked_up else _shard(key)
        shards[shard][key] = IN_PROGRESS
        slot = oldest + queued if oldest + queued < size else oldest + queued - size
        keys[slot], deadlines[slot], key_shards[slot] = key, now + self._lifetime, shard
        self._oldest, self._queued = oldest, queued + 1
        return shard

    def complete(self, key: str, response: bytes, shard: i64 = -1) -> None:
        """The transaction's final response; ``shard``: what :meth:`begin` returned (the pipeline
        keeps it: compiled, the key's hash as an i64 goes through a long object, 200-400
        instructions), or -1 to work it out again."""
        entries = self._shards[_shard(key) if shard < 0 else shard]
        if key in entries:  # not when evicted meanwhile: it has left the ring
            entries[key] = response

    def forget(self, key: str) -> None:
        self._shards[_shard(key)].pop(key, None)

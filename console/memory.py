"""After the initial load of a large table: give freed memory back, and keep the loaded rows
out of the garbage collector's full passes (which would otherwise stall the event loop)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache


#: The collector's thresholds once a table is loaded: a young pass every 10,000 allocations, a
#: middle one every 5 young ones, whose survivors are then frozen (:func:`_freeze_survivors`), so
#: that the oldest generation stays empty and a full pass is no dearer than a middle one.
#: A pass costs what it scans: with a young pass every 100,000 allocations (``serve``'s
#: GC_THRESHOLDS) each scanned about 100,000 live objects (the table's freshly drawn rows, their
#: Textual strips and caches, the traffic pane's requests) for 125-150 ms of CPU, and a key press
#: that met one waited as long; now a young pass takes about 10 ms and a middle one 35, for the
#: same CPU in all (bench_console.py, "garbage collector during the key presses"). Python's
#: defaults (700, 10, 10) made a console under 1,000 REG/s run 19 full passes in 50 s, 128 ms
#: each: what survived the young passes piled up in the oldest generation, scanned whole.
THRESHOLDS = (10_000, 5, 10)


def release() -> None:
    """Collect the reply's garbage, return free heap pages to the OS (glibc), freeze the survivors,
    and keep each later pass short (:data:`THRESHOLDS`, :func:`_freeze_survivors`).

    ``gc.freeze()`` moves every object alive now to a permanent generation: the 100,000
    rows just loaded are never scanned again by a full collection, each of which would
    otherwise cost a pause of the registrar and the console proportional to the table.
    """
    global _frozen_base
    gc.collect(1)  # the young objects only: the old ones are the registrar's, frozen or long-lived
    _trim()
    gc.freeze()
    _frozen_base = gc.get_freeze_count()
    gc.set_threshold(*THRESHOLDS)
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    """After a middle (or full) pass, freeze what survived it. Left in the collector's care, it
    would be scanned by every later middle pass, then by full ones: a stall that grows with what
    the console keeps (the rows drawn, their strips, the traffic pane's requests). Frozen objects
    are still freed when their last reference goes; only a cycle among them that dies later waits
    for :func:`reclaim_if_due`, as with :func:`keep` and :func:`release`'s own freeze. bench_console.py
    found no more of that than before: after its key presses, the cyclic garbage a full pass finds once
    ``gc.unfreeze()`` is called was 63k objects with this, 87k without (most of it frozen by the
    load's own freeze)."""
    if phase == "stop" and info["generation"] >= 1:
        gc.freeze()


def keep() -> None:
    """Freeze what was just built: a new order of the whole table (100,000 keys) holds no cycles
    and lives until it is replaced (then freed as usual). Left young, the next young pass would
    scan all of it, 100 ms or more added to the key press that sorted."""
    gc.freeze()


#: The frozen population may grow by this share since the last load or reclaim before a reclaim.
RECLAIM_GROWTH = 0.5
#: ... and the operator must have pressed no key for this long (seconds): the full pass stalls the loop.
RECLAIM_IDLE = 30.0
#: How often the console asks :func:`reclaim_if_due` (seconds): the question costs two calls.
RECLAIM_CHECK = 60.0

_frozen_base: int | None = None  # the frozen population after the last load or reclaim; None: no load yet
_last_key = float("-inf")  # no key yet


def key_seen() -> None:
    """The operator pressed a key: no reclaim for :data:`RECLAIM_IDLE` seconds."""
    global _last_key
    _last_key = time.monotonic()


def reclaim_if_due(now: float | None = None) -> bool:
    """Reclaim the cycles that died frozen, once the frozen population has grown by
    :data:`RECLAIM_GROWTH` and no key came for :data:`RECLAIM_IDLE` seconds: True if it ran.

    :func:`_freeze_survivors` freezes every ~50,000 allocations, so what dies in a cycle after
    that (a closed screen's Textual nodes and styles: 189-665 objects per 50 s in bench_console)
    would stay for good in a console left running for days. ``gc.unfreeze()``, a full pass, a
    trim and ``gc.freeze()`` free it, bounding it to a share of what is frozen. That pass scans
    everything the console holds: at 100,000 contacts (bench_console.py, 3 runs, a shared machine)
    514-758 ms wall, 351-401 ms of CPU, finding 62-64k unreachable objects; hence only when idle.
    At 1,000 REG/s with keys pressed the frozen count grew from 505k to 728k in about 80 s, most of
    it not garbage (tuples and dicts a full pass would stop tracking: the reclaim brought it to
    476k): a growth of half, not a quarter, lets an idle console under such traffic reclaim every
    two to three minutes rather than every one or two, while what died frozen stays below half of
    what is frozen.
    """
    if _frozen_base is None or _pausers:  # before the first load, or during one (its release rebases)
        return False
    if gc.get_freeze_count() < _frozen_base * (1 + RECLAIM_GROWTH):
        return False
    if (time.monotonic() if now is None else now) - _last_key < RECLAIM_IDLE:
        return False
    reclaim()
    return True


def reclaim() -> int:
    """Unfreeze, collect everything, trim, freeze again, and take what is frozen as the new base:
    the number of unreachable objects found (bench_console.py times it)."""
    global _frozen_base
    gc.unfreeze()
    found = gc.collect()
    _trim()
    gc.freeze()
    _frozen_base = gc.get_freeze_count()
    return found


def _trim() -> None:
    """Give the heap's free pages back to the OS (glibc only)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once (find_library runs ldconfig: not on every reload)."""
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


_pausers = 0
_was_enabled = True


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic garbage collection in the block (a paged load: refcounting frees its replies).

    Blocks may overlap (a reload replacing a load that is being cancelled): the collector
    comes back when the last one ends, if it was on before the first.
    """
    global _pausers, _was_enabled
    if _pausers == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _pausers += 1
    try:
        yield
    finally:
        _pausers -= 1
        if _pausers == 0 and _was_enabled:
            gc.enable()

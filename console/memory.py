"""After the initial load of a large table: give freed memory back, and keep the loaded rows
out of the garbage collector's full passes (which would otherwise stall the event loop)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache


#: The collector's thresholds once a table is loaded, as ``serve`` sets them (registrar_core/
#: server.py GC_THRESHOLDS): a young pass every 100,000 allocations, a full one every 200 young
#: ones. Python's defaults (700, 10, 10) made a console under 1,000 REG/s run 19 full passes in
#: 50 s, 128 ms each on average (what it built since the load: the orders of other columns,
#: filtered views, new bindings), the stalls that made the slowest key presses, and spend 7 % of
#: its time collecting (bench_console.py, "garbage collector during the key presses").
THRESHOLDS = (100_000, 20, 10)


def release() -> None:
    """Collect the reply's garbage, return free heap pages to the OS (glibc), freeze the survivors,
    and make the collector's passes rare (:data:`THRESHOLDS`).

    ``gc.freeze()`` moves every object alive now to a permanent generation: the 100,000
    rows just loaded are never scanned again by a full collection, each of which would
    otherwise cost a pause of the registrar and the console proportional to the table.
    """
    gc.collect(1)  # the young objects only: the old ones are the registrar's, frozen or long-lived
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def keep() -> None:
    """Freeze what was just built: a new order of the whole table (100,000 keys) holds no cycles
    and lives until it is replaced (then freed as usual). Left young, the next young pass would
    scan all of it, 100 ms or more added to the key press that sorted."""
    gc.freeze()


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

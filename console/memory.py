"""After the initial load of a large table: give freed memory back, and keep the loaded rows
out of the garbage collector's full passes (which would otherwise stall the event loop)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def release() -> None:
    """Collect the reply's garbage, return free heap pages to the OS (glibc), freeze the survivors.

    ``gc.freeze()`` moves every object alive now to a permanent generation: the 100,000
    rows just loaded are never scanned again by a full collection, each of which would
    otherwise cost a pause of the registrar and the console proportional to the table.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)
    gc.freeze()

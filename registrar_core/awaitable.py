"""One bridge from the callback style of the request path to coroutines.

The REGISTER hot path answers through callbacks (no task per datagram); the public API,
the console and tests await. :func:`awaited` is the one place that joins the two, and
:func:`spawn` the one place a callback-style call starts coroutine work that nobody awaits.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any


async def awaited(start: Callable[[Callable[[Any], None]], None], *, settle: bool = False) -> Any:
    """Await what a callback-style call hands its callback (``start`` passes it on).

    ``settle``: the work, once started, finishes whatever happens to the caller (a commit
    holding an AOR's lock), so a caller cancelled meanwhile still waits for the value and
    the cancellation is delivered again at its next await.
    """
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    start(functools.partial(_resolve, future))
    if not settle:
        return await future
    task = asyncio.current_task()
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if task is None:
                raise
            cancelled = True
            task.uncancel()
    if cancelled:
        task.cancel()  # type: ignore[union-attr]
    return future.result()


def spawn(work: Coroutine[Any, Any, None], held: set[asyncio.Task[None]]) -> None:
    """Run ``work`` as a task kept in ``held`` until it ends: the loop holds tasks only weakly,
    and one that nothing else holds may be collected before it ends (a store's callback-style
    write that must first reopen its database, or report a fault, has no awaiting caller)."""
    task = asyncio.get_running_loop().create_task(work)
    held.add(task)
    task.add_done_callback(held.discard)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    """A callback's value into a future (unless its awaiter has gone)."""
    if not future.done():
        future.set_result(value)

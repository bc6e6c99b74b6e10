"""registrar_core/awaitable.py: the one bridge from a callback-style call to a coroutine."""

from __future__ import annotations

import asyncio

import pytest

from registrar_core.awaitable import awaited


async def test_awaited_returns_what_the_callback_gets_at_once_or_later():
    assert await awaited(lambda done: done(42)) == 42
    loop = asyncio.get_running_loop()
    assert await awaited(lambda done: loop.call_later(0.01, done, "later")) == "later"


async def test_a_second_callback_call_changes_nothing():
    def twice(done):
        done(1)
        done(2)

    assert await awaited(twice) == 1


async def test_without_settle_a_cancelled_caller_leaves_at_once():
    callbacks = []
    task = asyncio.ensure_future(awaited(callbacks.append))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    callbacks[0]("too late")  # the work finishing after its caller left is harmless


async def test_settle_waits_for_the_outcome_and_then_delivers_the_cancellation():
    callbacks = []
    after = []

    async def caller():
        value = await awaited(callbacks.append, settle=True)
        after.append(value)
        await asyncio.sleep(0)  # the cancellation arrives at the next await

    task = asyncio.ensure_future(caller())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done(), "a settled call outlives the caller's cancellation until its outcome"
    callbacks[0]("committed")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after == ["committed"]

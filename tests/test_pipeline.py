"""The request pipeline (registrar_core/pipeline.py) on a real in-process core: the method
table routes a method to a handler registered for it, the handler may answer later through
its callback, and the UDP transaction step and the reply step wrap every handler alike."""

from __future__ import annotations

import asyncio

import pytest

from registrar_core.api import RegistrarCore
from registrar_core.config import build_config
from registrar_core.events import REQUEST_HANDLED
from registrar_core.registrar import reply
from registrar_core.source import Source

from .sipclient import request_bytes

SOURCE = Source("udp", "127.0.0.1", 5062, "udp:127.0.0.1:5060")


@pytest.fixture
async def core():
    core = RegistrarCore(build_config({"auth": False, "ip_budget": 0, "db": ":memory:"}), memory_only=True)
    await core.start()
    yield core
    await core.stop()


async def test_a_method_plugs_in_by_registration_and_retransmissions_never_reach_it(core):
    seen = []

    def subscribe(request, source, answer):
        seen.append((request.method, source.ip))
        answer(reply(request, 202, "Accepted", [("Expires", "600")], core.to_tag))

    core.pipeline.handle_method("SUBSCRIBE", subscribe)
    message = request_bytes("SUBSCRIBE", "sip:bob@example.com", "alice@example.com", local=("127.0.0.1", 5062),
                            extra=["Event: presence"])
    first, address = await core.handle(message, SOURCE)
    again, _ = await core.handle(message, SOURCE)  # a UDP retransmission: same branch
    assert first.startswith(b"SIP/2.0 202 Accepted\r\n") and b"Expires: 600\r\n" in first
    assert again == first and address == ("127.0.0.1", 5062)
    assert seen == [("SUBSCRIBE", "127.0.0.1")]
    stats = core.snapshot_stats()
    assert stats["requests"]["SUBSCRIBE"] == 1 and stats["responses"]["202"] == 1 and stats["retransmissions"] == 1


async def test_a_handler_may_answer_later_and_the_reply_step_publishes_the_outcome(core):
    held = []
    core.pipeline.handle_method("MESSAGE", lambda request, source, answer: held.append((request, answer)))
    events = core.subscribe()
    message = request_bytes("MESSAGE", "sip:bob@example.com", "alice@example.com", local=("127.0.0.1", 5062))
    pending = asyncio.ensure_future(core.handle(message, SOURCE))
    for _ in range(100):
        if held:
            break
        await asyncio.sleep(0.01)
    assert len(held) == 1 and not pending.done()
    request, answer = held[0]
    answer(reply(request, 480, "Temporarily Unavailable", [], core.to_tag))
    data, _ = await asyncio.wait_for(pending, 5)
    assert data.startswith(b"SIP/2.0 480 ")
    handled = [e for e in events.drain() if e.kind == REQUEST_HANDLED]
    assert [(e.data["method"], e.data["status"]) for e in handled] == [("MESSAGE", 480)]


async def test_methods_nobody_registered_get_the_redirect_servers_501(core):
    message = request_bytes("FOO", "sip:bob@example.com", "alice@example.com", local=("127.0.0.1", 5062))
    data, _ = await core.handle(message, SOURCE)
    assert data.startswith(b"SIP/2.0 501 Not Implemented\r\n") and b"Allow: REGISTER, OPTIONS" in data


async def test_scanner_verdicts_hold_for_every_request_of_a_user_agent(core):
    """The verdict per User-Agent is remembered (the regex ran on every request): a scanner's
    requests are dropped every time, a phone's answered every time, in any order."""
    phone = "Linphone-Desktop/5.2.6 (Ubuntu 22.04) LinphoneCore/5.3.0"
    order = [phone, "friendly-scanner", phone, "friendly-scanner", "sipvicious 0.3.4", phone]
    answers = []
    for n, user_agent in enumerate(order):
        message = request_bytes("OPTIONS", "sip:100@example.com", "100@example.com", local=("127.0.0.1", 5062),
                                extra=[f"User-Agent: {user_agent}"])
        answers.append(await core.handle(message, SOURCE))
    assert [a is not None for a in answers] == [True, False, True, False, False, True]
    assert core.snapshot_stats()["security"]["scanner"] == 3

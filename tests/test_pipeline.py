"""The request pipeline (registrar_core/pipeline.py) on a real in-process core: the method
table routes a method to a handler registered for it, the handler may answer later through
its callback, and the UDP transaction step and the reply step wrap every handler alike."""

from __future__ import annotations

import asyncio
import re

import pytest

from registrar_core.api import RegistrarCore
from registrar_core.config import build_config
from registrar_core.events import REQUEST_HANDLED
from registrar_core.pipeline import reply_address, stamped_reply_address
from registrar_core.registrar import reply
from registrar_core.sip import parse_message
from registrar_core.source import Source

from .sipclient import authorization, challenges, register_bytes, request_bytes

SOURCE = Source("udp", "127.0.0.1", 5062, "udp:127.0.0.1:5060")


@pytest.fixture
async def core():
    core = RegistrarCore(build_config({"auth": False, "ip_budget": 0, "db": ":memory:"}), memory_only=True)
    await core.start()
    yield core
    await core.stop()


@pytest.fixture
async def auth_core(tmp_path):
    core = RegistrarCore(build_config({"auth": True, "ip_budget": 0, "db": ":memory:",
                                       "auth_key": str(tmp_path / "auth.key")}), memory_only=True)
    await core.start()
    await core.add_subscriber("alice@example.com", "secret")
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


def _register(*, extra: list[str] | None = None, replace: tuple[str, str] | None = None) -> bytes:
    data = register_bytes("alice@example.com", ["<sip:alice@10.0.0.7:5060>"], local=("127.0.0.1", 5062),
                          extra=extra)
    return data.replace(replace[0].encode(), replace[1].encode(), 1) if replace else data


async def _answer(core, data: bytes, source: Source = SOURCE, parse: bool = True):
    reply_bytes, address = await core.handle(data, source)
    return parse_message(reply_bytes) if parse else None, reply_bytes, address


@pytest.mark.parametrize("via, address", [
    ("SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1;rport", ("127.0.0.1", 40000)),  # the usual shape
    ("SIP/2.0/UDP 10.0.0.1:5070;rport;branch=z9hG4bK1", ("127.0.0.1", 40000)),  # the general path fills it
    ("SIP/2.0/UDP 10.0.0.1:5070;RPort;branch=z9hG4bK1;rport", ("127.0.0.1", 40000)),  # two, both filled
    ("SIP/2.0/UDP 10.0.0.1;rport=1234;branch=z9hG4bK1", ("127.0.0.1", 1234)),  # a value is kept
    ("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1", ("127.0.0.1", 5070)),  # no rport: the sent-by's port
    ("SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1", ("127.0.0.1", 5060)),  # the source's own address, no port
    ("SIP/2.0/UDP phone.example.net;branch=z9hG4bK1;received=10.1.1.1", ("127.0.0.1", 5060)),
])
def test_the_stamped_reply_address_is_the_one_read_back_from_the_stamped_via(via, address):
    """stamped_reply_address answers the source when it filled an rport, without reading the
    Via back: the address RFC 3261 §18.2.2 with RFC 3581 reads from the stamped Via."""
    data = _register(replace=("Via: SIP/2.0/UDP 127.0.0.1:5062;branch=", f"Via: {via}\r\nX-Old-Branch: "))
    source = Source("udp", "127.0.0.1", 40000, "udp:127.0.0.1:5060")
    stamped, read_back = parse_message(data), parse_message(data)
    read_back.stamp_source(source.ip, source.port)
    assert stamped_reply_address(stamped, source) == reply_address(read_back, source) == address
    assert stamped.headers.get_all("Via") == read_back.headers.get_all("Via")


@pytest.mark.parametrize("shape", [
    {},
    {"replace": ("Via: SIP/2.0/UDP 127.0.0.1:5062;", "v: SIP/2.0/UDP 127.0.0.1:5062;")},
    {"replace": ("To: <sip:alice@example.com>", "t: \"Alice\" <sip:alice@Example.COM>;tag=known")},
    {"replace": ("From: ", "f: ")},
    {"replace": ("Call-ID: ", "i: ")},
    {"replace": (";rport\r\n", ";received=10.1.1.1\r\n")},  # no rport, a received to replace
    {"replace": ("Via: SIP/2.0/UDP 127.0.0.1:5062;", "Via: SIP/2.0/TCP phone.example.net;")},  # a host name
    {"replace": (";rport\r\n", ";rport, SIP/2.0/UDP 10.2.2.2:5070;branch=z9hG4bKup\r\n")},  # two in one field
    {"extra": ["Via: SIP/2.0/UDP 10.3.3.3;branch=z9hG4bKfurther"]},  # two Via fields
    {"extra": ["Supported: path, gruu", "Path: <sip:edge.example.com;lr>", "Require: path"]},
])
async def test_a_register_without_credentials_gets_the_full_paths_401_bytes(auth_core, shape):
    """The 401 to a REGISTER without credentials comes from a minimal parse (issue 19.2): the
    bytes are those the full path's reply() makes from the fully parsed, stamped request."""
    data = _register(**shape)
    response, answer, address = await _answer(auth_core, data)
    assert response.status == 401
    request = parse_message(data)
    request.stamp_source(SOURCE.ip, SOURCE.port)
    expected = reply(request, 401, "Unauthorized", [("WWW-Authenticate", v)
                                                     for v in response.headers.get_all("WWW-Authenticate")],
                     auth_core.to_tag)
    assert answer == bytes(expected)
    assert address == (("10.1.1.1", 5062) if "received=10.1.1.1" in data.decode() else ("127.0.0.1", 5062))
    stats = auth_core.snapshot_stats()
    assert (stats["challenged"], stats["requests"]["REGISTER"], stats["responses"]["401"]) == (1, 1, 1)
    assert stats["transactions"] == 0, "answered statelessly"


@pytest.mark.parametrize("flaw, status", [
    (("From: <sip:alice@example.com>", "From: <sip:alice@example.com"), 400),
    (("Expires: 3600", "Expires: soon"), 400),
    (("Max-Forwards: 70", "Max-Forwards: many"), 400),
])
async def test_checks_the_401_does_not_need_are_left_to_the_authorized_register(auth_core, flaw, status):
    """From, Max-Forwards, Expires (and the Contacts) are checked when the credentials come:
    the 401 stores nothing, the authorized REGISTER is parsed in full and refused."""
    _, answer, _ = await _answer(auth_core, _register(replace=flaw), parse=False)
    assert answer.startswith(b"SIP/2.0 401 Unauthorized\r\n")  # echoing the flawed field as sent
    nonce = re.search(rb'nonce="([^"]+)"', answer).group(1).decode()
    challenge = {"realm": "example.com", "nonce": nonce, "algorithm": "MD5"}
    credentials = authorization(challenge, "alice", "secret", "sip:example.com")
    refused = await auth_core.handle(_register(extra=[credentials], replace=flaw), SOURCE)
    if status is None:
        assert refused is None
    else:
        assert refused is not None and refused[0].startswith(f"SIP/2.0 {status} ".encode())
    assert auth_core.fetch_contacts("alice@example.com").count == 0


@pytest.mark.parametrize("flaw, status", [
    (("To: <sip:alice@example.com>", "To: <sip:alice@example.com"), 400),  # the realm comes from To
    (("To: <sip:alice@example.com>", "To: <tel:+15551234>"), 400),
    (("CSeq: 1 REGISTER", "CSeq: 1 INVITE"), 400),
    (("CSeq: 1 REGISTER", "CSeq: 1 REGISTER\r\nCSeq: 2 REGISTER"), 400),
    (("Content-Length: 0", "Content-Length: 10"), 400),
    (("REGISTER sip:example.com SIP/2.0", "REGISTER sip:example.com?x=y SIP/2.0"), 400),
    (("Call-ID: ", "X-Call-ID: "), None),
    (("User-Agent: sipconsole-tests", "Require: foo"), 420),  # RFC 3261 §10.3 step 2 before step 3
])
async def test_what_the_401_uses_is_checked_before_it_as_ever(auth_core, flaw, status):
    """A flaw in what the 401 echoes or needs gets the full path's answer: 400, 420, or none
    (dropped: nothing to answer with)."""
    answered = await auth_core.handle(_register(replace=flaw), SOURCE)
    if status is None:
        assert answered is None
    else:
        assert answered is not None and answered[0].startswith(f"SIP/2.0 {status} ".encode())
        assert b"WWW-Authenticate" not in answered[0]


async def test_credentials_in_any_spelling_are_checked_not_challenged(auth_core):
    response, _, _ = await _answer(auth_core, _register())
    line = authorization(challenges(response)[0], "alice", "secret", "sip:example.com")
    ok, _, _ = await _answer(auth_core, _register(extra=["AUTHORIZATION" + line[len("Authorization"):]]))
    assert ok.status == 200 and auth_core.fetch_contacts("alice@example.com").count == 1


async def test_a_401_is_published_while_someone_listens_and_a_scanners_register_dropped(auth_core):
    events = auth_core.subscribe()
    response, _, _ = await _answer(auth_core, _register())
    assert response.status == 401
    handled = [e.data for e in events.drain() if e.kind == REQUEST_HANDLED]
    assert [(h["method"], h["status"], h["aor"], h["user_agent"]) for h in handled] == [
        ("REGISTER", 401, "alice@example.com", "sipconsole-tests")]
    scanner = _register(replace=("User-Agent: sipconsole-tests", "User-Agent: friendly-scanner"))
    assert await auth_core.handle(scanner, SOURCE) is None
    assert auth_core.snapshot_stats()["challenged"] == 1

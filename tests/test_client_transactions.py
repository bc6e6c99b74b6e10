"""Non-INVITE client transactions (RFC 3261 §17.1.2) over the registrar's real UDP and TCP
sockets: requests leave through the core's sender hook, responses come back through its
response sinks. Timers run on a fake clock the tests move (the layer's ``poll``), except in
the one test of the event-loop timer itself."""

from __future__ import annotations

import asyncio
import time

import pytest

from registrar_core.client_transactions import (
    COMPLETED, PROCEEDING, T1, T2, T4, TERMINATED, TIMEOUT, TIMER_F, TRANSPORT_ERROR, TRYING,
    ClientTransactions,
)
from registrar_core.sip import Request, Response, build_response, parse_message

from .sipclient import TcpPhone, UdpPeer, next_aor, register_bytes, request_bytes, server_address


class Clock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Peer(UdpPeer):
    """A UDP UAS on its own socket. ``answer_on``: the copy of a request it answers with
    ``status`` (None: never answers); ``provisional``: a 1xx sent on the first copy."""

    def __init__(self, status: int | None = 200, *, answer_on: int = 1, provisional: int | None = None) -> None:
        self.status = status
        self.answer_on = answer_on
        self.provisional = provisional
        self.requests: list[tuple[bytes, tuple[str, int]]] = []

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.requests.append((data, addr))
        copies = len(self.requests)
        if self.provisional is not None and copies == 1:
            self.reply(self.provisional)
        if self.status is not None and copies == self.answer_on:
            self.reply(self.status)

    def reply(self, status: int, *, cseq: str | None = None, branch: str | None = None) -> None:
        """Answer the last request (``cseq``/``branch`` replace its CSeq/top Via branch)."""
        data, addr = self.requests[-1]
        request = parse_message(data)
        assert isinstance(request, Request)
        out = bytes(build_response(request, status, "OK" if status == 200 else "Whatever", to_tag="peer"))
        if cseq is not None:
            out = out.replace(b"CSeq: 1 OPTIONS", f"CSeq: {cseq}".encode())
        if branch is not None:
            out = out.replace(request.vias[0].branch.encode(), branch.encode())
        self.transport.sendto(out, addr)

    def close(self) -> None:
        self.transport.close()


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


class Outcomes:
    """The owner's callback: every (transaction, response) reported."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, Response | None]] = []

    def __call__(self, tx, response: Response | None) -> None:
        self.seen.append((tx, response))


@pytest.fixture
async def layer_on(make_server):
    """``await layer_on()``: a registrar, and a client-transaction layer on a fake clock wired
    to its sender and response sinks like the core's own."""
    made = []

    async def make(**kw):
        srv = await make_server()
        clock = Clock()
        layer = ClientTransactions(srv.core.sender, clock=clock, arm_timers=False, **kw)
        srv.core.response_sinks.append(layer.receive)
        made.append((srv, layer))
        return srv, layer, clock

    yield make
    for srv, layer in made:
        srv.core.response_sinks.remove(layer.receive)


def udp_socket(srv) -> str:
    return next(a for a in srv.core.listening if a.startswith("udp:"))


def options_to(peer: Peer, srv, *, transport: str = "UDP") -> tuple[bytes, str]:
    """An OPTIONS from the registrar's socket to ``peer``, and its branch."""
    host, port = server_address(srv)
    data = request_bytes("OPTIONS", f"sip:peer@{peer.address[0]}:{peer.address[1]}", "qualify@example.com",
                         local=(host, port))
    data = data.replace(b"SIP/2.0/UDP", f"SIP/2.0/{transport}".encode())
    request = parse_message(data)
    assert isinstance(request, Request)
    return data, request.vias[0].branch


def start(layer: ClientTransactions, srv, peer: Peer, outcomes: Outcomes, **kw):
    data, branch = options_to(peer, srv)
    tx = layer.start(data, branch=branch, method="OPTIONS", local=udp_socket(srv), conid=None,
                     addr=peer.address, transport="udp", on_done=outcomes, **kw)
    assert tx is not None
    return tx, data


# -- UDP ---------------------------------------------------------------------------------
async def test_silent_peer_timer_e_doubles_to_t2_then_timer_f_times_out(layer_on):
    srv, layer, clock = await layer_on()
    peer, outcomes = await Peer.open(None), Outcomes()
    tx, data = start(layer, srv, peer, outcomes)
    assert tx.state == TRYING and len(layer) == 1
    await until(lambda: len(peer.requests) == 1)
    began = clock.now
    fired_at = []
    while not outcomes.seen:
        upcoming = layer.poll()
        assert upcoming is not None
        clock.now = upcoming
        sent_before = len(peer.requests)
        layer.poll()
        fired_at.append(round(clock.now - began, 3))
        if not outcomes.seen:
            await until(lambda: len(peer.requests) == sent_before + 1)
    # Timer E: T1, then doubling to T2 = 4 s and staying there; Timer F at 64*T1 = 32 s.
    assert fired_at == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
    assert T1 == 0.5 and T2 == 4.0 and TIMER_F == 32.0
    assert len(peer.requests) == 11 and {d for d, _ in peer.requests} == {data}, "the same request each time"
    assert outcomes.seen == [(tx, None)] and tx.error == TIMEOUT, "Timer F reported once, as a timeout"
    assert tx.state == TERMINATED and tx.retransmissions == 10 and len(layer) == 0
    peer.close()


async def test_answer_to_the_third_copy_completes_and_timer_k_absorbs_retransmitted_finals(layer_on):
    srv, layer, clock = await layer_on()
    peer, outcomes = await Peer.open(200, answer_on=3), Outcomes()
    tx, _ = start(layer, srv, peer, outcomes, timeout=3.0)  # a shorter Timer F, as qualify asks
    for step in (T1, T1 + 2 * T1):  # two retransmissions
        clock.now = tx.started + step
        layer.poll()
    await until(lambda: outcomes.seen)
    [(done, response)] = outcomes.seen
    assert done is tx and response.status == 200 and tx.retransmissions == 2 and len(peer.requests) == 3
    assert tx.state == COMPLETED and len(layer) == 1, "UDP: Completed for Timer K"
    peer.reply(200)  # the UAS retransmits its final response: absorbed, not reported again
    peer.reply(200)
    clock.now = tx.started + 3.6  # past Timer F (3 s) and the next Timer E (3.5 s)
    layer.poll()  # Timer E and F of a completed transaction are stale: nothing sent, nothing reported
    await asyncio.sleep(0.1)
    assert len(outcomes.seen) == 1 and len(peer.requests) == 3
    assert tx.state == COMPLETED and len(layer) == 1, "still absorbing until Timer K"
    clock.now = tx.started + 1.5 + T4
    layer.poll()
    assert tx.state == TERMINATED and len(layer) == 0, "Timer K = T4 after the final response"
    peer.close()


async def test_provisional_then_final_response(layer_on):
    srv, layer, clock = await layer_on()
    peer, outcomes = await Peer.open(None, provisional=180), Outcomes()
    tx, _ = start(layer, srv, peer, outcomes)
    await until(lambda: tx.state == PROCEEDING)
    assert outcomes.seen == [], "a 1xx is not an outcome"
    clock.now = tx.started + T1
    assert layer.poll() == pytest.approx(tx.started + T1 + T2), "Proceeding: Timer E at T2"
    await until(lambda: len(peer.requests) == 2)
    peer.reply(486)
    await until(lambda: outcomes.seen)
    assert [(t, r.status) for t, r in outcomes.seen] == [(tx, 486)]
    assert tx.state == COMPLETED and tx.retransmissions == 1
    peer.close()


async def test_responses_match_by_branch_and_cseq_method_only(layer_on):
    srv, layer, clock = await layer_on()
    peer, outcomes = await Peer.open(None), Outcomes()
    tx, _ = start(layer, srv, peer, outcomes)
    await until(lambda: peer.requests)
    peer.reply(200, cseq="1 INVITE")  # same branch, another method: another transaction
    peer.reply(200, branch="z9hG4bKforged")  # another branch
    peer.reply(503)
    await until(lambda: outcomes.seen)
    assert [(t, r.status) for t, r in outcomes.seen] == [(tx, 503)]
    wrong = parse_message(bytes(build_response(parse_message(peer.requests[0][0]), 200, "OK", to_tag="x"))
                          .replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 NOTIFY"))
    assert layer.receive(wrong) is False
    peer.close()


async def test_a_refused_send_is_no_transaction(layer_on):
    srv, layer, _ = await layer_on()
    peer, outcomes = await Peer.open(200), Outcomes()
    data, branch = options_to(peer, srv)
    assert layer.start(data, branch=branch, method="OPTIONS", local="udp:127.0.0.1:9", conid=None,
                       addr=peer.address, transport="udp", on_done=outcomes) is None
    assert layer.start(data, branch=branch, method="OPTIONS", local=udp_socket(srv), conid=10**9,
                       addr=peer.address, transport="tcp", on_done=outcomes) is None, "no such connection"
    assert len(layer) == 0 and layer.poll() is None and outcomes.seen == [] and peer.requests == []
    peer.close()


async def test_a_refused_retransmission_ends_the_transaction_as_a_transport_error(layer_on):
    srv, layer, clock = await layer_on()
    peer, outcomes = await Peer.open(None), Outcomes()
    tx, _ = start(layer, srv, peer, outcomes)
    await until(lambda: len(peer.requests) == 1)
    await srv.transports.close()  # the socket it was sent from is gone (RFC 3261 §17.1.4)
    clock.now = tx.started + T1
    layer.poll()
    assert outcomes.seen == [(tx, None)] and tx.error == TRANSPORT_ERROR
    assert tx.state == TERMINATED and tx.retransmissions == 0 and len(layer) == 0
    peer.close()


# -- TCP ---------------------------------------------------------------------------------
async def test_tcp_no_retransmissions_and_terminated_at_the_final_response(layer_on):
    srv, layer, clock = await layer_on()
    phone = await TcpPhone(server_address(srv, "tcp")).open()
    aor = next_aor("ctx")
    host, port = phone.local
    reply = await phone.send(register_bytes(aor, [f"<sip:t@{host}:{port};transport=tcp>"], local=(host, port),
                                            transport="TCP"))
    assert reply.status == 200
    [contact] = srv.core.lookup(aor)
    assert contact.conid is not None
    outcomes = Outcomes()
    data = request_bytes("OPTIONS", contact.addr, "qualify@example.com", local=server_address(srv, "tcp"))
    data = data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    branch = parse_message(data).vias[0].branch
    tx = layer.start(data, branch=branch, method="OPTIONS", local=contact.socket, conid=contact.conid,
                     addr=(host, port), transport="tcp", on_done=outcomes)
    assert tx is not None and tx.reliable
    head = await asyncio.wait_for(phone.reader.readuntil(b"\r\n\r\n"), 3)
    request = parse_message(head)
    assert request.method == "OPTIONS" and request.vias[0].branch == branch
    clock.now = tx.started + 10  # far past every Timer E a UDP transaction would have
    assert layer.poll() == pytest.approx(tx.deadline), "only Timer F is pending"
    assert tx.retransmissions == 0 and tx.state == TRYING
    phone.writer.write(bytes(build_response(request, 200, "OK", to_tag="t")))
    await until(lambda: outcomes.seen)
    assert [(t, r.status) for t, r in outcomes.seen] == [(tx, 200)]
    assert tx.state == TERMINATED and len(layer) == 0, "reliable: Timer K is 0"
    phone.close()


# -- the event-loop timer ----------------------------------------------------------------------
async def test_the_cores_layer_runs_its_timers_on_the_event_loop(make_server):
    srv = await make_server()
    layer = srv.core.client_transactions
    assert layer.receive in srv.core.response_sinks
    peer, outcomes = await Peer.open(None), Outcomes()
    data, branch = options_to(peer, srv)
    tx = layer.start(data, branch=branch, method="OPTIONS", local=udp_socket(srv), conid=None,
                     addr=peer.address, transport="udp", on_done=outcomes, timeout=1.2)
    await until(lambda: outcomes.seen)
    assert outcomes.seen == [(tx, None)] and tx.state == TERMINATED
    assert len(peer.requests) == 2 and tx.retransmissions == 1, "sent at 0 s and 0.5 s; 1.5 s is past Timer F"
    assert time.monotonic() - tx.started >= 1.2
    peer.close()

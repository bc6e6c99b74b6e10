"""The UDP listener (registrar_core/udp.py) on real loopback sockets: a burst waiting in the
socket is read in one wake-up, replies go back to each sender, close stops reading."""

from __future__ import annotations

import asyncio
import socket

from registrar_core.source import Source
from registrar_core.udp import DATAGRAMS_PER_WAKE, UdpListener

from .sipclient import UdpPhone, next_aor, register_bytes, server_address


def _bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setblocking(False)
    return sock


async def _until(condition, seconds: float = 10) -> None:
    """Poll until ``condition()`` holds or ``seconds`` pass (the asserts after it say which)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.01)


def _waiting(port: int, payloads: list[bytes]) -> socket.socket:
    """A client whose ``payloads`` all wait in the listener's socket before it starts reading."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for payload in payloads:
        client.sendto(payload, ("127.0.0.1", port))
    return client


async def test_a_waiting_burst_is_read_in_one_wake_up_and_each_sender_answered():
    """What arrived while the loop was busy (a group commit) is read before anything else runs,
    so it joins the next commit; every datagram is answered to where it came from."""
    loop = asyncio.get_running_loop()
    sock = _bound()
    port = sock.getsockname()[1]
    seen: list[tuple[bytes, Source]] = []
    before_next_turn: list[int] = []

    def receive(data: bytes, source: Source, respond) -> None:
        if not seen:
            loop.call_soon(lambda: before_next_turn.append(len(seen)))
        seen.append((data, source))
        respond((b"re:" + data, (source.ip, source.port)))

    listener = UdpListener(sock, f"udp:127.0.0.1:{port}", receive)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    burst = DATAGRAMS_PER_WAKE + 44
    try:
        for c in clients:
            c.bind(("127.0.0.1", 0))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        for i in range(burst):  # all waiting in the socket before the listener reads
            clients[i % 2].sendto(b"m%d" % i, ("127.0.0.1", port))
        listener.start(loop)
        await _until(lambda: len(seen) >= burst)
        assert [d for d, _ in seen] == [b"m%d" % i for i in range(burst)]
        assert before_next_turn == [DATAGRAMS_PER_WAKE], "one wake-up reads its whole share"
        assert {s.local for _, s in seen} == {f"udp:127.0.0.1:{port}"}
        for n, c in enumerate(clients):
            c.settimeout(5)
            answers = sorted(c.recv(100) for _ in range(burst // 2))
            assert answers == sorted(b"re:m%d" % i for i in range(n, burst, 2))
        assert listener.in_flight == 0
    finally:
        listener.close()
        for c in clients:
            c.close()
    assert sock.fileno() == -1


async def test_per_wake_bounds_what_one_wake_up_reads():
    """``per_wake`` (bench_tail.py --per-wake tries other values without a rebuild): a wake-up
    reads at most that many; the rest waits for the next turns, and nothing is lost."""
    loop = asyncio.get_running_loop()
    sock = _bound()
    port = sock.getsockname()[1]
    seen: list[bytes] = []
    after_turn: list[int] = []  # datagrams read so far, at the end of each wake-up that read some

    def turn_ended() -> None:
        after_turn.append(len(seen))

    def receive(data: bytes, source: Source, respond) -> None:
        if len(after_turn) * 16 == len(seen):  # the first of a wake-up: mark where it ends
            loop.call_soon(turn_ended)
        seen.append(data)
        respond(None)

    listener = UdpListener(sock, f"udp:127.0.0.1:{port}", receive)
    listener.per_wake = 16
    client = _waiting(port, [b"m%d" % i for i in range(40)])
    try:
        listener.start(loop)
        await _until(lambda: len(seen) >= 40)
        assert seen == [b"m%d" % i for i in range(40)]
        assert after_turn == [16, 32, 40], "16 a wake-up, then 16 more, then the last 8"
        assert listener.in_flight == 0
    finally:
        listener.close()
        client.close()


async def test_datagrams_beyond_the_in_flight_bound_are_dropped_and_counted():
    loop = asyncio.get_running_loop()
    sock = _bound()
    port = sock.getsockname()[1]
    held: list = []
    listener = UdpListener(sock, f"udp:127.0.0.1:{port}", lambda data, source, respond: held.append(respond))
    listener.max_in_flight = 5
    client = _waiting(port, [b"x%d" % i for i in range(8)])
    try:
        listener.start(loop)
        await _until(lambda: listener.dropped >= 3)
        assert (len(held), listener.in_flight, listener.dropped) == (5, 5, 3)
        held[0](None)  # answered with nothing to send: room for one more
        client.sendto(b"late", ("127.0.0.1", port))
        await _until(lambda: len(held) >= 6)
        assert (len(held), listener.in_flight, listener.dropped) == (6, 5, 3)
    finally:
        listener.close()
        client.close()


async def test_serve_answers_a_burst_from_one_phone(server):
    """Through the whole registrar: 600 REGISTERs sent without waiting (more than one wake-up's
    share), each answered 200 once."""
    phone = await UdpPhone(server_address(server)).open()
    # The phone shares the server's loop: room for the replies of a whole commit at once.
    phone.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    aors = [next_aor("burst") for _ in range(600)]
    for aor in aors:
        phone.send_raw(register_bytes(aor, ["<sip:b@10.0.0.1>"], local=phone.local))
    statuses = []
    for _ in aors:
        statuses.append((await phone.receive_raw(10)).split(b" ", 2)[1])
    assert statuses == [b"200"] * len(aors)
    assert server.core.snapshot_stats()["retransmissions"] == 0
    phone.close()

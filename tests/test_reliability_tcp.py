"""TCP abuse (issue 9, item 3): framing attacks, giant headers, slow senders, idle
connections by the thousand, a pipeliner that never reads. Each abusive connection is
closed or answered, nothing it sent half-way is delivered, the registrar's memory and
descriptors stay bounded, and other clients keep getting their answers meanwhile.

The short timeouts are configured per test (``tcp_idle_timeout``; the per-message read
timeout follows it when shorter than Kamailio's 20 s)."""

from __future__ import annotations

import asyncio
import os
import resource
import secrets
import socket
from pathlib import Path

import pytest

from registrar_core.transport import MAX_IN_FLIGHT_PER_CONNECTION

from .processes import ServeProcess
from .sipclient import TcpPhone, UdpPhone, free_port, next_aor, register_bytes, server_address

MB = 1 << 20


def _raise_fd_limit(wanted: int = 4096) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def closed_without_reply(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the server closes the connection having sent nothing (EOF or reset)."""
    try:
        data = await asyncio.wait_for(reader.read(65536), max(timeout, 0.01))
    except (ConnectionResetError, BrokenPipeError):
        return True
    except asyncio.TimeoutError:
        return False
    return data == b""


async def legit_clients_answered(server: tuple[str, int], within: float = 0.1) -> None:
    """A REGISTER over UDP and one over a new TCP connection each get a 200 within ``within`` s."""
    udp = await UdpPhone(server).open()
    tcp = await TcpPhone(server).open()
    try:
        loop = asyncio.get_running_loop()
        for phone, transport in ((udp, "UDP"), (tcp, "TCP")):
            aor = next_aor("legit")
            start = loop.time()
            r = await phone.send(register_bytes(aor, [f"<sip:l@10.1.1.1;transport={transport.lower()}>"],
                                                local=phone.local, transport=transport), timeout=within + 2)
            took = loop.time() - start
            assert r.status == 200, (transport, r.status)
            assert took < within, f"legitimate {transport} REGISTER took {took * 1000:.0f} ms"
    finally:
        udp.close()
        tcp.close()


# -- framing: no Content-Length, negative, conflicting, oversized -------------------------

BAD_FRAMING = {
    "no-content-length": lambda m: m.replace(b"Content-Length: 0\r\n", b""),
    "negative": lambda m: m.replace(b"Content-Length: 0", b"Content-Length: -1"),
    "duplicate-conflicting": lambda m: m.replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 12\r\n"),
    "not-a-number": lambda m: m.replace(b"Content-Length: 0", b"Content-Length: 0x10"),
    "beyond-max-message": lambda m: m.replace(b"Content-Length: 0", b"Content-Length: 9999999"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMING))
async def test_unframeable_message_closes_connection_and_delivers_nothing(server, case):
    """sipgo's rule: a stream message that cannot be framed closes the connection and
    nothing of it reaches the registrar (the REGISTER must not create its binding)."""
    reader, writer = await asyncio.open_connection(*server_address(server, "tcp"))
    aor = next_aor("framing")
    good = register_bytes(aor, ["<sip:f@10.0.0.1;transport=tcp>"], local=("127.0.0.1", 1), transport="TCP")
    sub = server.core.subscribe()
    writer.write(BAD_FRAMING[case](good) + b"x" * 16)  # a few body bytes, as an attacker would
    assert await closed_without_reply(reader, 3), f"{case}: expected a close and no reply"
    writer.close()
    assert server.core.fetch_contacts(aor).count == 0, f"{case}: the message was delivered"
    assert not [e for e in sub.drain() if e.kind == "request.handled"], f"{case}: a request was handled"
    await legit_clients_answered(server_address(server))


async def test_one_megabyte_header_is_cut_off_early(server):
    """A 1 MB header line: closed once the header block passes its limit, long before the
    megabyte is in; nothing delivered; the connection is gone from the server's table."""
    reader, writer = await asyncio.open_connection(*server_address(server, "tcp"))
    aor = next_aor("big")
    head = register_bytes(aor, ["<sip:b@10.0.0.1>"], local=("127.0.0.1", 1), transport="TCP")
    head = head[: head.index(b"Content-Length")] + b"X-Big: "
    sent = 0
    chunk = b"a" * 16384
    writer.write(head)
    try:
        while sent < MB:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    except (ConnectionResetError, BrokenPipeError):
        pass
    assert await closed_without_reply(reader, 3)
    writer.close()
    limit = server.config.limits.max_header_block
    assert server.core.fetch_contacts(aor).count == 0
    for _ in range(50):
        if not server.transports.connections:
            break
        await asyncio.sleep(0.02)
    assert not server.transports.connections, "the server still holds the connection"
    assert limit < MB // 4, "the header block limit is what cuts it off"
    await legit_clients_answered(server_address(server))


# -- slow senders ------------------------------------------------------------------------

async def _trickle(writer: asyncio.StreamWriter, data: bytes, interval: float, stop: asyncio.Event) -> int:
    """Send ``data`` one byte per ``interval`` until the server closes or ``stop`` is set."""
    sent = 0
    for i in range(len(data)):
        if stop.is_set():
            break
        try:
            writer.write(data[i:i + 1])
            await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            break
        sent += 1
        await asyncio.sleep(interval)
    return sent


async def test_byte_per_second_senders_are_closed_by_the_read_timeout(make_server):
    """Slowloris: a byte every second resets any idle timer forever; the per-message read
    timeout (here 2 s, following tcp_idle_timeout) closes the connection anyway, both on a
    fresh connection and on one that has already registered. Others are served meanwhile."""
    srv = await make_server(tcp_idle_timeout=2.0)
    address = server_address(srv, "tcp")
    assert srv.transports.tcp_read_timeout == 2.0
    stop = asyncio.Event()
    slow = []
    for proven in (False, True, False):
        reader, writer = await asyncio.open_connection(*address)
        if proven:  # a well-behaved first message, then the trickle
            writer.write(register_bytes(next_aor("slow"), ["<sip:s@10.0.0.1>"], local=("127.0.0.1", 1),
                                        transport="TCP"))
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)).startswith(b"SIP/2.0 200")
        data = register_bytes(next_aor("slow"), ["<sip:s@10.0.0.1>"], local=("127.0.0.1", 1), transport="TCP")
        slow.append((reader, writer, asyncio.ensure_future(_trickle(writer, data, 1.0, stop))))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(0.5)
    await legit_clients_answered(server_address(srv))
    try:
        for reader, _writer, _task in slow:
            assert await closed_without_reply(reader, 5.0 - (loop.time() - started)), \
                "a byte-per-second sender still holds its connection after 5 s"
        took = loop.time() - started
        assert took < 4.0
    finally:
        stop.set()
        for _reader, writer, task in slow:
            await task
            writer.close()
    sent = [task.result() for *_, task in slow]
    assert max(sent) <= 4, f"bytes accepted before the close: {sent}"


async def test_silent_connection_must_deliver_its_first_message_in_time(make_server):
    """A connection that says nothing is closed after the read timeout, not the (long) idle
    timeout: thousands of silent sockets cannot sit for ten minutes each. A keepalive does
    not count as a message."""
    srv = await make_server(tcp_idle_timeout=60.0, tcp_read_timeout=0.5)
    assert srv.transports.tcp_read_timeout == 0.5
    address = server_address(srv, "tcp")
    silent = await asyncio.open_connection(*address)
    pinging = await asyncio.open_connection(*address)
    talking = await TcpPhone(address).open()
    assert (await talking.send(register_bytes(next_aor("talk"), ["<sip:t@10.0.0.1>"], local=talking.local,
                                              transport="TCP"))).status == 200
    pinging[1].write(b"\r\n\r\n")
    assert await asyncio.wait_for(pinging[0].readexactly(2), 1) == b"\r\n"
    assert await closed_without_reply(silent[0], 1.5), "a silent connection outlived the read timeout"
    assert await closed_without_reply(pinging[0], 0.5), "keepalives alone kept a connection"
    await asyncio.sleep(0.3)
    assert talking.writer.transport is not None and not talking.reader.at_eof(), \
        "a connection that delivered a message is kept until the idle timeout"
    for _, w in (silent, pinging):
        w.close()
    talking.close()


async def test_steady_pipelined_stream_outlives_the_read_timeout(make_server):
    """The read timeout is per message: a connection that keeps completing messages (each
    split over two writes, so one is always half-way) is never cut, however long it runs."""
    srv = await make_server(tcp_idle_timeout=0.6)
    phone = await TcpPhone(server_address(srv, "tcp")).open()
    loop = asyncio.get_running_loop()
    end = loop.time() + 2.0
    count = 0
    pending = b""
    while loop.time() < end:
        data = register_bytes(next_aor("steady"), ["<sip:s@10.0.0.1>"], local=phone.local, transport="TCP")
        half = len(data) // 2
        phone.writer.write(pending + data[:half])
        pending = data[half:]
        await asyncio.sleep(0.25)
        if count:
            assert (await phone.receive(1.0)).status == 200
        count += 1
    phone.writer.write(pending)
    assert (await phone.receive(1.0)).status == 200
    assert count >= 6
    phone.close()


# -- many connections, a real process, memory and descriptors ---------------------------

@pytest.fixture
def abuse_serve(short_dir: Path):
    """`sipconsole serve` with a 2 s idle/read timeout, started on demand."""
    _raise_fd_limit()
    conf = short_dir / "abuse.toml"
    conf.write_text("tcp_idle_timeout = 2.0\n")
    proc = ServeProcess(short_dir, free_port())
    proc.extra = ("--config", str(conf))
    yield proc
    proc.stop()


async def _connect_many(port: int, count: int,
                        sources: list[str]) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    conns = []
    for i in range(count):
        conns.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(sources[i % len(sources)], 0)))
    return conns


async def test_thousand_idle_connections_are_all_closed_memory_and_fds_bounded(abuse_serve):
    """1,000 connections from 20 addresses (under the per-IP cap): some silent, some with
    half a REGISTER. Other clients are served while they sit there; the server closes every
    one of them by itself; its RSS and descriptor count come back down."""
    proc = abuse_serve.start(*abuse_serve.extra)
    pid = proc.proc.pid
    await legit_clients_answered(("127.0.0.1", proc.port))  # warm up before measuring
    rss_before, fds_before = rss_kb(pid), fd_count(pid)
    sources = [f"127.0.0.{i}" for i in range(2, 22)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    conns = await _connect_many(proc.port, 1000, sources)
    half = register_bytes("half@example.com", ["<sip:h@10.0.0.1>"], local=("127.0.0.1", 1), transport="TCP")
    for i, (_, writer) in enumerate(conns):
        if i % 2:
            writer.write(half[: len(half) // 2])
    await asyncio.sleep(0.3)
    peak_fds = fd_count(pid)
    await legit_clients_answered(("127.0.0.1", proc.port), within=0.25)
    results = await asyncio.gather(*(closed_without_reply(r, 6.0) for r, _ in conns))
    took = loop.time() - started
    for _, writer in conns:
        writer.close()
    assert all(results), f"{results.count(False)} of 1000 connections neither closed nor answered"
    assert took < 6.0
    assert peak_fds >= fds_before + 900, "the connections were really accepted"
    await asyncio.sleep(0.3)
    rss_after, fds_after = rss_kb(pid), fd_count(pid)
    assert fds_after <= fds_before + 2, (fds_before, fds_after)
    assert rss_after - rss_before < 30_000, f"RSS grew {rss_before} -> {rss_after} kB"
    await legit_clients_answered(("127.0.0.1", proc.port))


async def test_per_ip_cap_closes_the_excess_at_once(make_server):
    """1,000 connections from one address: the first 64 are held, every other one is closed
    immediately; a client from another address is unaffected."""
    _raise_fd_limit()
    srv = await make_server(tcp_idle_timeout=30.0)
    host, port = server_address(srv, "tcp")
    conns = await _connect_many(port, 1000, ["127.0.0.55"])
    closed = await asyncio.gather(*(closed_without_reply(r, 0.5) for r, _ in conns))
    assert closed.count(True) == 1000 - srv.config.max_tcp_per_ip
    assert srv.transports.per_ip["127.0.0.55"] == srv.config.max_tcp_per_ip
    await legit_clients_answered((host, port))
    for _, writer in conns:
        writer.close()


class FdLimitedServe(ServeProcess):
    """`sipconsole serve` with a low descriptor limit (RLIMIT_NOFILE 300)."""

    def command(self, *extra: str) -> list[str]:
        return ["prlimit", "--nofile=300:300", "--", *super().command(*extra)]


async def test_descriptor_exhaustion_is_avoided_and_idle_ones_make_room(short_dir):
    """400 silent connections from many addresses against a server allowed 300 descriptors:
    it keeps below its limit (a full accept() queue would stall every listener), closes the
    oldest silent ones to make room, and a real client connecting afterwards is served."""
    _raise_fd_limit()
    conf = short_dir / "fd.toml"
    conf.write_text("tcp_idle_timeout = 30.0\n")
    proc = FdLimitedServe(short_dir, free_port())
    try:
        proc.start("--config", str(conf))
        pid = proc.proc.pid
        conns = await _connect_many(proc.port, 400, [f"127.0.1.{i}" for i in range(1, 41)])
        await asyncio.sleep(0.3)
        assert fd_count(pid) < 300
        await legit_clients_answered(("127.0.0.1", proc.port), within=0.25)
        early = await asyncio.gather(*(closed_without_reply(r, 0.05) for r, _ in conns[:100]))
        assert all(early), "the oldest silent connections made room"
        for _, writer in conns:
            writer.close()
        assert "out of system resource" not in proc.log.read_text()
    finally:
        proc.stop()


# -- pipelining floods ----------------------------------------------------------------

async def _flood(port: int, seconds: float, read_replies: bool) -> tuple[int, int]:
    """Pipeline REGISTER queries as fast as the socket takes them for ``seconds``, reading
    the replies or not. Returns (bytes sent, replies read)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    query = register_bytes("pipe@example.com", None, local=("127.0.0.1", 1), transport="TCP", expires=None)
    burst = b"".join(query.replace(b"branch=z9hG4bK", b"branch=z9hG4bK" + secrets.token_hex(6).encode())
                     for _ in range(500))
    loop = asyncio.get_running_loop()
    sent = replies = 0
    view = memoryview(burst)
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            try:
                n = sock.send(view)
                sent += n
                view = view[n:] or memoryview(burst)
            except BlockingIOError:
                await asyncio.sleep(0.001)
            if read_replies:
                try:
                    while chunk := sock.recv(1 << 20):
                        replies += chunk.count(b"SIP/2.0 200")
                except BlockingIOError:
                    pass
            await asyncio.sleep(0)
    finally:
        sock.close()
    return sent, replies


@pytest.mark.parametrize("read_replies", [True, False], ids=["reads-replies", "never-reads"])
async def test_pipelining_flood_is_read_at_the_pace_it_is_handled(abuse_serve, read_replies):
    """A client pipelines queries as fast as loopback takes them (hundreds of MB/s) for 2 s.
    The registrar stops reading once MAX_IN_FLIGHT_PER_CONNECTION requests are unanswered, or
    while its replies pile up unread (asyncio's pause_writing): what was sent beyond that waits
    in the kernel and TCP slows the sender down; the registrar's memory does not grow with what
    was sent, and other clients are served meanwhile."""
    proc = abuse_serve.start(*abuse_serve.extra)
    pid = proc.proc.pid
    await legit_clients_answered(("127.0.0.1", proc.port))
    rss_before = rss_kb(pid)
    flood = asyncio.ensure_future(_flood(proc.port, 2.0, read_replies))
    peak = rss_before
    while not flood.done():
        peak = max(peak, rss_kb(pid))
        await asyncio.sleep(0.05)
    sent, replies = flood.result()
    await legit_clients_answered(("127.0.0.1", proc.port), within=0.25)
    assert peak - rss_before < 20_000, \
        f"RSS {rss_before} -> {peak} kB while {sent >> 20} MB were sent ({replies} replies read)"
    assert MAX_IN_FLIGHT_PER_CONNECTION <= 256

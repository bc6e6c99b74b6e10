"""The Prometheus endpoint (--metrics-listen): a real `sipconsole serve`, real REGISTERs over
UDP and TCP, a real HTTP scrape, and the exposition checked by `promtool check metrics`."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from registrar_core.config import ConfigError, build_config
from registrar_core.metrics import Histogram

from .processes import SCENARIOS, ServeProcess, run_cli, run_sipp
from .sipclient import TcpPhone, UdpPhone, UdpWatcher, authorization, challenges, free_port, register_bytes, server_address

AOR = "alice@example.com"
PASSWORD = "metrics-secret"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return reply.read().decode()


def samples(text: str) -> dict[str, float]:
    """Each sample line as {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def promtool(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def wait_for(port: int, condition, timeout: float = 20.0) -> dict[str, float]:
    """Scrape until ``condition(samples)`` holds (the machine is loaded: no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        values = samples(scrape(port))
        if condition(values):
            return values
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never satisfied the condition: {values}")
        time.sleep(0.1)


async def authenticated(phone, password: str) -> tuple[int, int]:
    """REGISTER, answer the challenge with ``password``: (first status, second status)."""
    first = await phone.send(register_bytes(AOR, [_contact(phone)], local=phone.local, **_transport(phone)))
    [ch] = challenges(first)
    second = await phone.send(register_bytes(
        AOR, [_contact(phone)], local=phone.local, cseq=2, **_transport(phone),
        extra=[authorization(ch, "alice", password, "sip:example.com")]))
    return first.status, second.status


def _contact(phone) -> str:
    host, port = phone.local
    return f"<sip:alice@{host}:{port};transport={'tcp' if isinstance(phone, TcpPhone) else 'udp'}>"


def _transport(phone) -> dict[str, str]:
    return {"transport": "TCP"} if isinstance(phone, TcpPhone) else {}


async def test_scrape_counts_registers_challenges_auth_failures_and_passes_promtool(serve_process: ServeProcess):
    assert serve_process.user("add", AOR, password=PASSWORD).returncode == 0
    metrics_port = free_port()
    serve_process.start("--auth", "on", "--metrics-listen", f"127.0.0.1:{metrics_port}")
    before = samples(scrape(metrics_port))
    assert before['sipconsole_registers_total{result="accepted"}'] == 0
    assert before["sipconsole_subscribers"] == 1 and before["sipconsole_storage_ok"] == 1

    server = ("127.0.0.1", serve_process.port)
    udp = await UdpPhone(server).open()
    tcp = await TcpPhone(server).open()
    try:
        assert await authenticated(udp, PASSWORD) == (401, 200)
        assert await authenticated(tcp, PASSWORD) == (401, 200)
        assert await authenticated(udp, "wrong password") == (401, 401)
    finally:
        udp.close()
        tcp.close()

    text = scrape(metrics_port)
    values = samples(text)
    assert values['sipconsole_registers_total{result="accepted"}'] == 2
    # Three challenges asked for credentials; the wrong password's 401 is a failure, not one.
    assert values['sipconsole_registers_total{result="challenged"}'] == 3
    assert values['sipconsole_registers_total{result="rejected"}'] == 1
    assert values["sipconsole_auth_failures_total"] == 1
    assert values['sipconsole_security_events_total{event="auth-failed"}'] == 1
    assert values['sipconsole_requests_total{method="REGISTER"}'] == 6
    assert values['sipconsole_responses_total{code="401"}'] == 4
    assert values['sipconsole_responses_total{code="200"}'] == 2
    assert values["sipconsole_aors"] == 1 and values["sipconsole_contacts"] == 2
    assert values['sipconsole_contacts_by_transport{transport="udp"}'] == 1
    assert values['sipconsole_contacts_by_transport{transport="tcp"}'] == 1
    assert values["sipconsole_banned_ips"] == 0  # loopback is trusted by default
    # Two accepted REGISTERs, each durable before its 200: two commits of one change each
    # (the second REGISTER was sent after the first one's 200).
    assert values["sipconsole_group_commit_size_count"] == 2
    assert values['sipconsole_group_commit_size_bucket{le="1"}'] == 2
    assert values["sipconsole_group_commit_size_sum"] == 2
    assert values["sipconsole_group_commit_seconds_count"] == 2
    assert 0 < values["sipconsole_group_commit_seconds_sum"] < 10
    assert values['sipconsole_group_commit_seconds_bucket{le="+Inf"}'] == 2
    assert values["sipconsole_storage_errors_total"] == 0 and values["sipconsole_storage_ok"] == 1
    assert values["sipconsole_events_dropped_total"] == 0

    checked = promtool(text)
    assert checked.returncode == 0 and checked.stdout == checked.stderr == "", checked


def test_qualify_rtt_histogram_and_reachability_from_a_sipp_device(serve_process: ServeProcess, tmp_path):
    metrics_port = free_port()
    serve_process.start("--qualify-interval", "0.5", "--metrics-listen", str(metrics_port))  # a port alone: loopback
    device = free_port()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_sipp, "uas_options_register.xml", serve_process.port,
                              "-oocsf", str(SCENARIOS / "uas_options.xml"), "-s", "sippdev",
                              "-p", str(device), "-d", "8000", cwd=tmp_path)
        values = wait_for(metrics_port, lambda v: v["sipconsole_qualify_rtt_seconds_count"] >= 2
                          and v['sipconsole_qualify_contacts{state="reachable"}'] == 1)
        text = scrape(metrics_port)
        running.result()
    assert values['sipconsole_qualify_contacts{state="unreachable"}'] == 0
    assert values["sipconsole_qualify_sent_total"] >= values["sipconsole_qualify_rtt_seconds_count"]
    # A loopback answer takes well under a second, even on a loaded machine.
    assert values['sipconsole_qualify_rtt_seconds_bucket{le="1"}'] == values["sipconsole_qualify_rtt_seconds_count"]
    assert 0 < values["sipconsole_qualify_rtt_seconds_sum"] < values["sipconsole_qualify_rtt_seconds_count"]
    checked = promtool(text)
    assert checked.returncode == 0 and checked.stdout == checked.stderr == "", checked


# -- the HTTP endpoint ----------------------------------------------------------------
@pytest.fixture
async def metrics_server(make_server):
    srv = await make_server(metrics_listen="127.0.0.1:0")
    return srv.metrics


async def request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return reply


async def scrape_async(port: int) -> dict[str, float]:
    """:func:`scrape` from inside the registrar's own event loop."""
    reply = await request(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    return samples(reply.partition(b"\r\n\r\n")[2].decode())


@pytest.mark.parametrize("head, status", [
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200 OK"),
    (b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n", b"200 OK"),
    (b"GET / HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"GET /metrics/x HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405 Method Not Allowed"),
    (b"DELETE /metrics HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    (b"hello\r\n\r\n", b"400 Bad Request"),
    (b"GET /metrics SIP/2.0\r\n\r\n", b"400 Bad Request"),
])
async def test_only_get_metrics_is_served(metrics_server, head, status):
    reply = await request(metrics_server.port, head)
    assert reply.startswith(b"HTTP/1.1 " + status + b"\r\n"), reply[:200]
    if status == b"200 OK":
        assert b"\r\n\r\n# HELP sipconsole_registers_total" in reply
    if status.startswith(b"405"):
        assert b"\r\nAllow: GET, HEAD\r\n" in reply


async def test_head_gets_the_headers_without_the_body(metrics_server):
    reply = await request(metrics_server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b""
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert length > 1000  # the length GET's body has


async def test_an_oversized_request_head_gets_431_and_the_endpoint_keeps_serving(metrics_server):
    reply = await request(metrics_server.port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert (await request(metrics_server.port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")


async def test_a_silent_client_is_dropped_after_the_read_timeout(make_server):
    srv = await make_server(metrics_listen="127.0.0.1:0")
    srv.metrics.read_timeout = 0.3  # the default, 10 s, is long for a test
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.metrics.port)
    writer.write(b"GET /metr")  # and nothing more
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed without an answer
    writer.close()


async def test_stopping_the_registrar_closes_the_endpoint(make_server):
    srv = await make_server(metrics_listen="127.0.0.1:0")
    port = srv.metrics.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # an idle connection does not hold stop()
    await asyncio.wait_for(srv.stop(), 10)
    assert srv.metrics is None
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    writer.close()


async def test_a_storage_fault_shows_in_storage_errors_and_storage_ok(make_server, short_dir):
    """The database file unlinked under the registrar: the store refuses to write (a real
    fault, no root needed), REGISTERs get 500, and the scrape says so; putting it back clears it."""
    db = short_dir / "faulty" / "location.db"
    srv = await make_server(db=str(db), metrics_listen="127.0.0.1:0")
    phone = await UdpPhone(server_address(srv)).open()
    try:
        assert (await phone.register("kept@example.com")).status == 200
        os.link(db, short_dir / "aside.db")
        db.unlink()
        assert (await phone.register("later@example.com")).status == 500
        values = await scrape_async(srv.metrics.port)
        assert values["sipconsole_storage_ok"] == 0
        assert values["sipconsole_storage_errors_total"] >= 1
        assert values['sipconsole_responses_total{code="500"}'] == 1
        assert values["sipconsole_group_commit_size_count"] == 1, "a failed commit is not observed"
        os.link(short_dir / "aside.db", db)
        deadline = time.monotonic() + 10
        while (await scrape_async(srv.metrics.port))["sipconsole_storage_ok"] != 1:
            assert time.monotonic() < deadline, "storage_ok never came back"
            await asyncio.sleep(0.1)
        assert (await phone.register("later@example.com")).status == 200
    finally:
        phone.close()



async def test_reg_event_subscriptions_and_notifies_are_counted(make_server):
    """A watcher of an AOR (a trusted loopback peer) and a phone registering it: the gauge of
    live subscriptions and the NOTIFYs sent (the full state, then one per change)."""
    srv = await make_server(metrics_listen="127.0.0.1:0")
    watcher = await UdpWatcher(server_address(srv)).open()
    phone = await UdpPhone(server_address(srv)).open()
    try:
        assert (await watcher.subscribe("watched@example.com", 600)).status == 200
        await watcher.notify()
        assert (await phone.register("watched@example.com")).status == 200
        await watcher.notify()
        values = await scrape_async(srv.metrics.port)
        assert values["sipconsole_reg_subscriptions"] == 1
        assert values['sipconsole_reg_notifies_total{result="sent"}'] == 2
        assert values['sipconsole_reg_notifies_total{result="failed"}'] == 0
        assert values["sipconsole_reg_subscriptions_dropped_total"] == 0
    finally:
        watcher.close()
        phone.close()

async def test_ipv6_loopback(make_server):
    srv = await make_server(metrics_listen="[::1]:0")
    assert srv.metrics.address == f"http://[::1]:{srv.metrics.port}/metrics"
    reader, writer = await asyncio.open_connection("::1", srv.metrics.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200 OK\r\n")
    writer.close()


async def test_no_endpoint_unless_asked(make_server):
    srv = await make_server()
    assert srv.metrics is None


async def test_events_a_slow_subscriber_lost_are_counted(make_server):
    srv = await make_server(metrics_listen="127.0.0.1:0")
    sub = srv.core.events.subscribe(maxsize=2)  # and never read
    phone = await UdpPhone(server_address(srv)).open()
    try:
        for n in range(3):
            assert (await phone.register(f"ev{n}@example.com")).status == 200
    finally:
        phone.close()
    sub.close()  # a closed subscriber's losses stay counted
    values = await scrape_async(srv.metrics.port)
    assert values["sipconsole_events_dropped_total"] == srv.core.events.dropped >= 3


# -- configuration ----------------------------------------------------------------------
@pytest.mark.parametrize("value, message", [
    ("localhost", "bad metrics-listen address 'localhost': expected HOST:PORT, e.g. 127.0.0.1:9090"),
    ("127.0.0.1:http", "bad metrics-listen address '127.0.0.1:http': the port 'http' is not a number"),
    ("::1:9090", "bad metrics-listen address '::1:9090': an IPv6 address goes in brackets, e.g. [::1]:9090"),
    ("[::x]:9090", "bad metrics-listen address '[::x]:9090': [::x] is not an IPv6 address"),
    ("99999", "bad metrics-listen address '99999': the port 99999 is out of range (0-65535; 0 picks a free one)"),
])
def test_a_bad_address_is_refused_in_one_line(value, message):
    with pytest.raises(ConfigError) as caught:
        build_config({"metrics-listen": value})
    assert str(caught.value) == message
    done = run_cli("serve", "--metrics-listen", value)
    assert done.returncode == 2
    assert done.stderr == f"sipconsole: error: {message}\n"


def test_addresses_accepted():
    assert build_config({"metrics_listen": "[::1]:9100"}).metrics_listen == "[::1]:9100"
    assert build_config({}).metrics_listen == ""


def test_a_port_in_use_is_refused_in_one_line(serve_process: ServeProcess):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(serve_process.command("--metrics-listen", f"127.0.0.1:{port}"),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (f"sipconsole: error: cannot serve metrics on 127.0.0.1:{port}: "
                                            "address already in use")


def test_histogram_buckets_are_upper_bounds():
    h = Histogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 2.0, 7.0):
        h.observe(value)
    assert h.counts == [2, 2, 1] and h.sum == 12.0

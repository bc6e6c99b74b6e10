"""Qualify (OPTIONS keepalive) against real devices: sipp, UDP/TCP sockets, a local DNS server."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from registrar_core import events as ev
from registrar_core.api import NotFound
from registrar_core.location import Contact
from registrar_core.events import CONTACT_REACHABILITY
from registrar_core.qualify import REACHABLE, UNKNOWN, UNREACHABLE, QualifyService
from registrar_core.resolver import Resolver
from registrar_core.sip import Request, build_response, parse_message

from .dnsserver import DnsServer
from .processes import SCENARIOS, run_cli
from .sipclient import Device, TcpPhone, UdpPhone, free_port, next_aor, register_bytes, server_address


# -- helpers -------------------------------------------------------------------------
async def next_event(sub, predicate, timeout: float = 5.0):
    """The next event for which ``predicate`` holds (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no such event in time")
        event = await asyncio.wait_for(sub.get(), left)
        if predicate(event):
            return event


def reachability(aor: str, state: str | None = None):
    return lambda e: e.kind == CONTACT_REACHABILITY and e.data["aor"] == aor and (
        state is None or e.data["state"] == state)


@contextmanager
def sipp(*args: str, cwd):
    """sipp in the background (killed at the end), bound to 127.0.0.1."""
    proc = subprocess.Popen(["sipp", *args, "-i", "127.0.0.1", "-nostdin"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TERM": "dumb"})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def udp_port_taken(port: int, timeout: float = 5.0) -> None:
    """Wait until something (sipp) has bound UDP 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"nothing listens on udp port {port}")


@pytest.fixture
async def qualify_factory():
    started: list[QualifyService] = []

    async def start(srv, **kw) -> QualifyService:
        kw.setdefault("interval", 0.5)
        kw.setdefault("timeout", 0.5)
        kw.setdefault("jitter", 0)
        q = QualifyService(srv.core, **kw)
        await q.start()
        started.append(q)
        return q

    yield start
    for q in started:
        await q.stop()


# -- sipp devices ----------------------------------------------------------------------
async def test_sipp_device_answering_options_becomes_reachable_with_rtt(make_server, qualify_factory, tmp_path):
    srv = await make_server()
    q = await qualify_factory(srv, remove_after=None)
    sub = srv.core.subscribe()
    host, port = server_address(srv)
    device_port = free_port()
    with sipp(f"{host}:{port}", "-sf", str(SCENARIOS / "uas_options_register.xml"),
              "-oocsf", str(SCENARIOS / "uas_options.xml"), "-s", "sippdev", "-p", str(device_port),
              "-m", "1", "-d", "20000", cwd=tmp_path):
        event = await next_event(sub, reachability("sippdev@example.com"))
        assert event.data["state"] == REACHABLE, event.data
        assert event.data["previous"] == UNKNOWN and event.data["table"] == "location"
        assert 0 < event.data["rtt_ms"] < 500
        assert event.data["target"] == f"udp:127.0.0.1:{device_port}", "probed where the device registered from"
        assert event.data["reason"].startswith("200")
        [contact] = srv.core.lookup("sippdev@example.com")
        assert event.data["ruid"] == contact.ruid
        # It keeps being probed every interval and stays reachable (no new state event).
        await asyncio.sleep(1.2)
        status = q.snapshot()[contact.ruid]
        assert status["state"] == REACHABLE and status["failures"] == 0
        assert 0 < status["rtt_ms"] < 500 and status["last_checked"] >= time.time() - 1
        assert q.counters["sent"] >= 3 and q.counters["answered"] >= 3
    sub.close()


async def test_sipp_device_that_never_answers_is_unreachable_then_removed(make_server, qualify_factory, tmp_path):
    srv = await make_server()
    q = await qualify_factory(srv, remove_after=2)
    sub = srv.core.subscribe()
    host, port = server_address(srv)
    started = time.monotonic()
    with sipp(f"{host}:{port}", "-sf", str(SCENARIOS / "uas_options_register.xml"),
              "-oocsf", str(SCENARIOS / "uas_options_silent.xml"), "-s", "deaddev", "-p", str(free_port()),
              "-m", "1", "-d", "20000", cwd=tmp_path):
        added = await next_event(sub, lambda e: e.kind == ev.CONTACT_ADDED and e.data["aor"] == "deaddev@example.com")
        ruid = added.data["ruid"]
        down = await next_event(sub, reachability("deaddev@example.com"))
        assert down.data["state"] == UNREACHABLE and down.data["rtt_ms"] is None
        assert "no answer" in down.data["reason"] and down.data["failures"] == 1
        removed = await next_event(sub, lambda e: e.kind == ev.CONTACT_REMOVED and e.data["ruid"] == ruid)
        assert removed.data["reason"] == "unreachable"
        assert time.monotonic() - started < 5
        assert srv.core.lookup("deaddev@example.com") == []
        assert ruid not in q.snapshot() and q.counters["removed"] == 1
    sub.close()


async def test_hostname_contact_resolved_through_naptr_srv_a(make_server, qualify_factory, tmp_path):
    uas_port = free_port()
    zone = f"""
pbx 60 NAPTR 10 10 "s" "SIP+D2T" "" _sip._tcp.pbx.test.
pbx 60 NAPTR 20 10 "s" "SIP+D2U" "" _sip._udp.pbx.test.
_sip._tcp.pbx 60 SRV 0 0 {free_port()} wrong.pbx.test.
_sip._udp.pbx 60 SRV 10 0 {free_port()} wrong.pbx.test.
_sip._udp.pbx 60 SRV 5 0 {uas_port} uas.pbx.test.
uas.pbx 60 A 127.0.0.1
wrong.pbx 60 A 127.0.0.3
"""
    async with DnsServer(zone) as dns:
        srv = await make_server()
        q = await qualify_factory(srv, interval=5, timeout=1.0,
                                  resolver=Resolver(nameservers=[dns.address], timeout=1.0))
        sub = srv.core.subscribe()
        with sipp("-sf", str(SCENARIOS / "uas_options.xml"), "-p", str(uas_port), "-m", "100", cwd=tmp_path):
            await udp_port_taken(uas_port)
            phone = await UdpPhone(server_address(srv)).open()
            aor = next_aor("dns")
            assert (await phone.register(aor, contacts=["<sip:bob@pbx.test>"])).status == 200
            event = await next_event(sub, reachability(aor))
            assert event.data["state"] == REACHABLE, event.data
            # NAPTR: TCP is preferred but a UDP socket cannot use it; SRV priority 5 wins.
            assert event.data["target"] == f"udp:127.0.0.1:{uas_port}"
            assert dns.count("pbx.test", "NAPTR") == 1 and dns.count("_sip._udp.pbx.test", "SRV") == 1
            assert dns.count("_sip._tcp.pbx.test") == 0
            # The second probe is answered from the DNS cache.
            await q.qualify_now(event.data["ruid"])
            assert dns.count("pbx.test", "NAPTR") == 1 and q.status(event.data["ruid"])["state"] == REACHABLE
            phone.close()
        sub.close()


# -- Path, NAT, failures ------------------------------------------------------------------
async def test_path_contact_probed_through_first_hop_with_route_set(make_server, qualify_factory):
    edge = await Device.open(200)
    zone = f"""
_sip._udp.edge 60 SRV 0 0 {edge.address[1]} host.edge.test.
host.edge 60 A 127.0.0.1
"""
    async with DnsServer(zone) as dns:
        srv = await make_server()
        await qualify_factory(srv, resolver=Resolver(nameservers=[dns.address]))
        sub = srv.core.subscribe()
        phone = await Device.open(None)  # the REGISTER's sender; the probe must not go there
        aor = next_aor("path")
        await phone.register(server_address(srv), aor, "<sip:carol@10.9.9.9:5060>",
                             extra=["Path: <sip:edge.test;transport=udp;lr>, <sip:core.example.net;lr>",
                                    "Supported: path"])
        event = await next_event(sub, reachability(aor))
        assert event.data["state"] == REACHABLE and event.data["target"] == f"udp:127.0.0.1:{edge.address[1]}"
        request, _, _ = edge.options[0]
        assert request.method == "OPTIONS" and str(request.uri) == "sip:carol@10.9.9.9:5060"
        assert request.headers.get_all("Route") == ["<sip:edge.test;transport=udp;lr>", "<sip:core.example.net;lr>"]
        assert request.vias[0].branch.startswith("z9hG4bK") and request.vias[0].rport == ""
        assert phone.options == []
        sub.close()
        phone.close()
    edge.close()


async def test_closed_port_and_dns_failure_are_unreachable(make_server, qualify_factory):
    async with DnsServer("") as dns:
        srv = await make_server()
        q = await qualify_factory(srv, resolver=Resolver(nameservers=[dns.address], timeout=0.5))
        sub = srv.core.subscribe()
        gone = await Device.open(None)
        aor = next_aor("gone")
        await gone.register(server_address(srv), aor)
        gone.close()  # the port is closed now
        nowhere = next_aor("nxdomain")
        await (await Device.open(None)).register(server_address(srv), nowhere, "<sip:dave@nowhere.test>")
        bad = await next_event(sub, reachability(nowhere))  # the DNS failure comes first
        down = await next_event(sub, reachability(aor))
        assert down.data["state"] == UNREACHABLE and "no answer within 0.5 s" in down.data["reason"]
        assert bad.data["state"] == UNREACHABLE and bad.data["reason"].startswith("dns nxdomain")
        # Still registered (no remove_after), still probed, failures counting.
        await asyncio.sleep(1.1)
        [contact] = srv.core.lookup(aor)
        assert q.status(contact.ruid)["failures"] >= 2
        assert dns.count("nowhere.test", "NAPTR") == 1, "the NXDOMAIN is cached"
        sub.close()


async def test_udp_retransmission_answered_late(make_server, qualify_factory):
    srv = await make_server()
    q = await qualify_factory(srv, interval=10, timeout=2.0)
    sub = srv.core.subscribe()
    device = await Device.open(200, skip_first=1)  # a lost first OPTIONS
    aor = next_aor("lossy")
    await device.register(server_address(srv), aor)
    event = await next_event(sub, reachability(aor))
    assert event.data["state"] == REACHABLE and event.data["rtt_ms"] >= 450
    assert len(device.options) == 2 and device.options[0][0].call_id == device.options[1][0].call_id
    assert 0.4 < device.options[1][2] - device.options[0][2] < 0.8, "retransmitted after T1"
    assert q.counters["retransmitted"] == 1
    sub.close()
    device.close()


async def test_from_config_defaults_to_off(make_server):
    srv = await make_server()
    q = QualifyService.from_config(srv.core, srv.config)
    assert not q.enabled and q.timeout == 3.0 and q.remove_after is None
    await q.start()
    device = await Device.open(200)
    await device.register(server_address(srv), next_aor("off"))
    await asyncio.sleep(0.2)
    assert device.options == [] and q.snapshot() == {}, "interval 0: nothing is sent unasked"
    await q.stop()
    device.close()


async def test_error_responses(make_server, qualify_factory):
    srv = await make_server()
    q = await qualify_factory(srv, interval=0)
    busy, timeout = await Device.open(486), await Device.open(408)
    await busy.register(server_address(srv), (a1 := next_aor("busy")))
    await timeout.register(server_address(srv), (a2 := next_aor("proxy408")))
    result = await q.qualify_now()
    [c1], [c2] = srv.core.lookup(a1), srv.core.lookup(a2)
    assert result[c1.ruid]["state"] == REACHABLE, "any answer means the device is there (Asterisk)"
    assert result[c2.ruid]["state"] == UNREACHABLE and result[c2.ruid]["reason"].startswith("408")
    strict = await qualify_factory(srv, interval=0, require_2xx=True)
    assert (await strict.qualify_now(c1.ruid))[c1.ruid]["state"] == UNREACHABLE
    busy.close()
    timeout.close()


# -- TCP ----------------------------------------------------------------------------------
async def read_sip(reader: asyncio.StreamReader) -> Request:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    message = parse_message(head)
    assert isinstance(message, Request)
    return message


async def test_tcp_contact_probed_on_its_own_connection(make_server, qualify_factory):
    srv = await make_server()
    q = await qualify_factory(srv, interval=0)
    phone = await TcpPhone(server_address(srv, "tcp")).open()
    aor = next_aor("tcp")
    local = phone.local
    assert (await phone.send(register_bytes(aor, [f"<sip:t@{local[0]}:{local[1]};transport=tcp>"],
                                            local=local, transport="TCP"))).status == 200
    [contact] = srv.core.lookup(aor)
    probing = asyncio.ensure_future(q.qualify_now(contact.ruid))
    request = await read_sip(phone.reader)
    assert request.method == "OPTIONS" and request.vias[0].transport == "TCP"
    phone.writer.write(bytes(build_response(request, 200, "OK", to_tag="t")))
    result = await probing
    assert result[contact.ruid]["state"] == REACHABLE
    phone.close()
    await asyncio.sleep(0.1)  # the registrar notices the connection is gone
    result = await asyncio.wait_for(q.qualify_now(contact.ruid), 1)
    assert result[contact.ruid]["state"] == UNREACHABLE
    assert result[contact.ruid]["reason"] == "its TCP connection is closed"


# -- on demand, ordering, snapshot --------------------------------------------------------
async def test_qualify_now_ordering_and_snapshot(make_server, qualify_factory):
    srv = await make_server()
    q = await qualify_factory(srv, interval=0)  # off: nothing is sent until asked
    good, dead = await Device.open(200, delay=0.02), await Device.open(None)
    aor = next_aor("fork")
    await good.register(server_address(srv), aor, f"<sip:good@{good.address[0]}:{good.address[1]}>;q=0.5")
    await dead.register(server_address(srv), aor, f"<sip:dead@{dead.address[0]}:{dead.address[1]}>;q=0.9")
    await asyncio.sleep(0.3)
    assert good.options == [] and dead.options == [] and q.snapshot() == {}
    by_q = srv.core.lookup(aor)
    assert [c.addr.split("@")[0] for c in by_q] == ["sip:dead", "sip:good"]
    assert [q.status(c.ruid)["state"] for c in by_q] == [UNKNOWN, UNKNOWN]

    result = await q.qualify_now()
    assert len(good.options) == 1 and len(dead.options) == 1
    dead_c, good_c = by_q
    assert result[good_c.ruid]["state"] == REACHABLE and result[good_c.ruid]["rtt_ms"] >= 15
    assert result[dead_c.ruid]["state"] == UNREACHABLE
    assert [c.ruid for c in q.order(by_q)] == [good_c.ruid, dead_c.ruid], "reachable before a higher q"
    assert q.order(by_q, max_latency_ms=1) == [dead_c], "OpenSIPS max-ping-latency drops slow ones"
    snap = q.snapshot()
    assert set(snap) == {good_c.ruid, dead_c.ruid}
    assert set(snap[good_c.ruid]) >= {"state", "rtt_ms", "last_checked", "failures"}
    annotated = q.annotate(good_c.to_dict())
    assert annotated["state"] == REACHABLE and annotated["rtt_ms"] == snap[good_c.ruid]["rtt_ms"]
    stats = q.stats()
    assert stats["qualify_reachable"] == 1 and stats["qualify_unreachable"] == 1 and stats["qualify_inflight"] == 0

    with pytest.raises(NotFound, match="^contact uloc-nope is not registered$"):
        await q.qualify_now("uloc-nope")
    with pytest.raises(NotFound, match="^nobody@example.com has no registered contact$"):
        await q.qualify_now(aor="nobody@example.com")
    assert set(await q.qualify_now(aor=aor)) == {good_c.ruid, dead_c.ruid}
    assert len(good.options) == 2
    # The console's key: fire and forget.
    assert (await q.qualify_now(good_c.ruid, wait=False))[good_c.ruid]["state"] == REACHABLE
    await asyncio.sleep(0.2)
    assert len(good.options) == 3
    # Unregistered: forgotten.
    await srv.core.unregister(aor)
    await q.qualify_now()
    assert q.snapshot() == {}
    good.close()
    dead.close()


# -- scale ----------------------------------------------------------------------------------
class Responder(asyncio.DatagramProtocol):
    """Answers every OPTIONS with 200; notes when each arrived and the peak outstanding count."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        request = parse_message(data)
        self.arrivals.append(time.monotonic())
        self.transport.sendto(bytes(build_response(request, 200, "OK", to_tag="r")), addr)


async def test_many_contacts_spread_over_the_interval_with_bounded_inflight(make_server):
    srv = await make_server()
    loop = asyncio.get_running_loop()
    transport, responder = await loop.create_datagram_endpoint(Responder, local_addr=("127.0.0.1", 0))
    rhost, rport = transport.get_extra_info("sockname")[:2]
    socket_name = next(a for a in srv.core.listening if a.startswith("udp:"))
    total = 2000
    now = time.time()
    contacts = [(Contact(ruid=f"uloc-scale-{i}", aor=f"scale{i}@example.com",
                         addr=f"sip:scale{i}@{rhost}:{rport}", expires=now + 3600, callid=f"c{i}", cseq=1,
                         received=f"udp:{rhost}:{rport}", socket=socket_name), True) for i in range(total)]
    await srv.core.location.apply("location", contacts, [], memory_only=True)

    q = QualifyService(srv.core, interval=1.0, timeout=1.0, jitter=0, max_inflight=100)
    peak = 0
    tasks_before = len(asyncio.all_tasks())
    start = time.monotonic()
    await q.start()
    try:
        while q.stats()["qualify_reachable"] < total and time.monotonic() - start < 8:
            peak = max(peak, q.inflight)
            assert len(asyncio.all_tasks()) <= tasks_before + 4, "no task per probe"
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - start
        assert q.stats()["qualify_reachable"] == total
        assert peak <= 100
        first_round = sorted(responder.arrivals[:total])
        # Spread over the interval, not one burst: no quarter of the round gets half of it.
        span = first_round[-1] - first_round[0]
        assert span > 0.6, span
        quarters = [sum(1 for t in first_round if first_round[0] + k * span / 4 <= t < first_round[0] + (k + 1) * span / 4)
                    for k in range(4)]
        assert max(quarters) < total * 0.45, quarters
        assert elapsed < 4.0
    finally:
        await q.stop()
        transport.close()


async def test_silent_contacts_never_exceed_max_inflight(make_server):
    srv = await make_server()
    socket_name = next(a for a in srv.core.listening if a.startswith("udp:"))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    now = time.time()
    contacts = [(Contact(ruid=f"uloc-silent-{i}", aor=f"silent{i}@example.com", addr=f"sip:s{i}@127.0.0.1:{port}",
                         expires=now + 3600, callid=f"s{i}", cseq=1, received=f"udp:127.0.0.1:{port}",
                         socket=socket_name), True) for i in range(300)]
    await srv.core.location.apply("location", contacts, [], memory_only=True)
    q = QualifyService(srv.core, interval=0, timeout=0.2, max_inflight=50, retransmit=False)
    await q.start()
    try:
        peak = 0
        start = time.monotonic()
        probing = asyncio.ensure_future(q.qualify_now())
        while not probing.done():
            peak = max(peak, q.inflight)
            await asyncio.sleep(0.002)
        elapsed = time.monotonic() - start
        assert peak == 50
        assert q.stats()["qualify_unreachable"] == 300 and q.counters["sent"] == 300
        assert 1.1 < elapsed < 2.5, "300 probes, 50 at a time, 0.2 s each"
    finally:
        await q.stop()
        sink.close()


# -- reachability over time ----------------------------------------------------------------
def test_history_ring_keeps_the_last_probes_and_state_changes():
    from registrar_core.reachability import HISTORY, Reachability

    r = Reachability()
    assert r.history(0.0, 4, 600)["rtts"] == [] and r.rtts is None  # nothing kept before a probe
    outcomes = [5.0, None, 6.0, None, 7.0] + [1.0] * HISTORY
    for i, rtt in enumerate(outcomes):
        r.observe(rtt, "", 1000.0 + i)
    history = r.history(1000.0 + len(outcomes), 4, 600)
    assert history["rtts"] == [1.0] * HISTORY  # the oldest fell out of the ring
    # unknown -> reachable is the first answer, not a change; then four changes.
    assert history["changes"] == [[1001.0, "unreachable"], [1002.0, "reachable"], [1003.0, "unreachable"],
                                  [1004.0, "reachable"]]
    assert history["flapping"] is True
    # Flapping while the fourth-last change is within the window.
    assert r.flapping(1001.0 + 600.0, 4, 600) is True and r.flapping(1001.0 + 600.1, 4, 600) is False
    assert r.flapping(1005.0, 5, 600) is False  # five changes are needed, four happened


async def test_device_that_stops_and_starts_answering_is_flapping(make_server, tmp_path):
    srv = await make_server(qualify_interval=0.3, qualify_timeout=0.3, qualify_flap_changes=4,
                            qualify_flap_window=600)
    sub = srv.core.subscribe()
    device = await Device.open(200)
    aor = next_aor("flappy")
    await device.register(server_address(srv), aor)
    events = [await next_event(sub, reachability(aor, REACHABLE))]
    for status, state in ((None, UNREACHABLE), (200, REACHABLE), (None, UNREACHABLE), (200, REACHABLE)):
        device.status = status
        events.append(await next_event(sub, reachability(aor, state), timeout=10))
    assert [e.data["flapping"] for e in events] == [False, False, False, False, True]
    [contact] = srv.core.lookup(aor)
    history = srv.core.qualify.history(contact.ruid)
    assert [state for _, state in history["changes"]] == [UNREACHABLE, REACHABLE, UNREACHABLE, REACHABLE]
    assert [when for when, _ in history["changes"]] == sorted(when for when, _ in history["changes"])
    assert history["flapping"] is True and (history["flap_changes"], history["flap_window"]) == (4, 600)
    rtts = history["rtts"]
    assert None in rtts and all(0 < v < 500 for v in rtts if v is not None) and len(rtts) >= 5
    # The control socket's show carries it; ctl's plain show and dump say FLAPPING.
    path = srv.config.control
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "sipconsole", "ctl", "--control", path,
                                                    "show", aor], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.strip().startswith("history:"))
    assert "unanswered; RTT min/avg/max" in line and "4 state changes, last reachable" in line
    assert line.endswith("; FLAPPING")
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "sipconsole", "ctl", "--control", path,
                                                    "dump"], capture_output=True, text=True, timeout=30)
    assert "reachable FLAPPING" in done.stdout
    sub.close()
    device.close()


def test_bad_flap_settings_are_refused_in_one_line():
    for args, problem in ((["--qualify-flap-changes", "1"], "qualify-flap-changes must be 2 to 32"),
                          (["--qualify-flap-changes", "33"], "qualify-flap-changes must be 2 to 32"),
                          (["--qualify-flap-window", "0"], "qualify-flap-window must be positive")):
        done = run_cli("serve", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert problem in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_probe_from_a_wildcard_socket_names_the_address_it_leaves_from():
    """Bound to 0.0.0.0 or ::, the OPTIONS's Via and From carry the kernel's source address
    towards the device (a route look-up), never the wildcard; a bound address stays as it is."""
    from registrar_core.qualify_probe import Plan, options_request

    def via_and_from(local: str, addr: tuple[str, int]) -> tuple[str, str]:
        plan = Plan(local, None, "udp", f"sip:dev@{addr[0] if ':' not in addr[0] else '[' + addr[0] + ']'}:{addr[1]}",
                    (), None, addr)
        request = parse_message(options_request(plan, "q-1", "z9hG4bKq1", "qualify", addr))
        return request.headers.get("Via"), request.headers.get("From")

    via, from_ = via_and_from("udp:0.0.0.0:5060", ("127.0.0.1", 5070))
    assert via.startswith("SIP/2.0/UDP 127.0.0.1:5060;") and "@127.0.0.1:5060>" in from_
    via, from_ = via_and_from("udp:[::]:5060", ("::1", 5070))
    assert via.startswith("SIP/2.0/UDP [::1]:5060;") and "@[::1]:5060>" in from_
    via, _ = via_and_from("udp:127.0.0.2:5060", ("127.0.0.1", 5070))
    assert via.startswith("SIP/2.0/UDP 127.0.0.2:5060;")

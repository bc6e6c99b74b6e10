"""RFC 3263 resolution against a real (local, authoritative) DNS server: no mocks."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from registrar_core.resolver import NO_RECORDS, NXDOMAIN, OK, SERVFAIL, TIMEOUT, Resolver, parse_nameserver

from .dnsserver import DnsServer

ZONE = """
; NAPTR: order beats preference; unsupported services and flags are skipped
pbx 300 NAPTR 20 10 "s" "SIP+D2U" "" _sip._udp.pbx.test.
pbx 300 NAPTR 10 50 "s" "SIP+D2T" "" _sip._tcp.pbx.test.
pbx 300 NAPTR 10 20 "s" "SIPS+D2T" "" _sips._tcp.pbx.test.
pbx 300 NAPTR 5 10 "s" "SIP+D2S" "" _sip._sctp.pbx.test.
pbx 300 NAPTR 5 10 "u" "E2U+sip" "!^.*$!sip:info@pbx.test!" .
_sip._udp.pbx 300 SRV 10 0 5070 udp-b.pbx.test.
_sip._udp.pbx 300 SRV 5 0 5060 udp-a.pbx.test.
_sip._tcp.pbx 300 SRV 0 0 5080 tcp.pbx.test.
_sips._tcp.pbx 300 SRV 0 0 5061 tls.pbx.test.
_sip._sctp.pbx 300 SRV 0 0 5090 tcp.pbx.test.
udp-a.pbx 300 A 127.0.1.1
udp-b.pbx 300 A 127.0.1.2
tcp.pbx 300 A 127.0.1.3
tls.pbx 300 A 127.0.1.4

; no NAPTR: SRV per transport
srvonly 300 A 127.0.9.9
_sip._udp.srvonly 300 SRV 0 0 5072 host.srvonly.test.
_sip._tcp.srvonly 300 SRV 0 0 5073 host.srvonly.test.
host.srvonly 300 A 127.0.2.1

; SRV weights within one priority
_sip._udp.weighted 300 SRV 1 90 5000 heavy.weighted.test.
_sip._udp.weighted 300 SRV 1 10 5000 light.weighted.test.
_sip._udp.weighted 300 SRV 2 100 5000 backup.weighted.test.
heavy.weighted 300 A 127.0.3.1
light.weighted 300 A 127.0.3.2
backup.weighted 300 A 127.0.3.3

; no NAPTR, no SRV: A and AAAA at the default port
dual 300 A 127.0.4.1
dual 300 AAAA ::1
v6only 300 AAAA 2001:db8::6
alias 300 CNAME dual.test.

; the service is explicitly not offered
_sip._udp.closed 300 SRV 0 0 0 .
closed 300 TXT "nothing"

; a name with no address at all
empty 300 TXT "no addresses here"

; short TTLs for the cache tests
ttl1 1 A 127.0.5.1
"""


@pytest.fixture
async def dns_server():
    server = await DnsServer(ZONE, negative_ttl=2).start()
    yield server
    await server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(server: DnsServer, **kw) -> Resolver:
    kw.setdefault("timeout", 1.0)
    return Resolver(nameservers=[server.address], **kw)


def addrs(resolution) -> list[str]:
    return [str(t) for t in resolution.targets]


async def test_naptr_order_then_preference_and_unsupported_services_skipped(dns_server):
    res = await resolver(dns_server).resolve("sip:alice@pbx.test")
    assert res.state == OK
    # order 10 (pref 20 SIPS+D2T, then pref 50 SIP+D2T), then order 20 (SIP+D2U, SRV priority 5 then 10).
    # The order-5 SIP+D2S and the "u" E2U record are not SIP transports we use.
    assert addrs(res) == ["tls:127.0.1.4:5061", "tcp:127.0.1.3:5080", "udp:127.0.1.1:5060", "udp:127.0.1.2:5070"]
    assert dns_server.count("_sip._sctp.pbx.test", "SRV") == 0


async def test_naptr_filtered_by_usable_transports(dns_server):
    res = await resolver(dns_server).resolve("sip:alice@pbx.test", transports=("udp",))
    assert addrs(res) == ["udp:127.0.1.1:5060", "udp:127.0.1.2:5070"]
    assert dns_server.count("_sip._tcp.pbx.test") == 0, "SRV of a transport we cannot use is not asked"


async def test_sips_uri_uses_only_sips_naptr(dns_server):
    res = await resolver(dns_server).resolve("sips:alice@pbx.test")
    assert addrs(res) == ["tls:127.0.1.4:5061"]


async def test_without_naptr_srv_per_transport_then_a(dns_server):
    r = resolver(dns_server)
    res = await r.resolve("sip:bob@srvonly.test")
    assert addrs(res) == ["udp:127.0.2.1:5072", "tcp:127.0.2.1:5073"]
    assert dns_server.count("srvonly.test", "NAPTR") == 1
    res = await r.resolve("sip:bob@dual.test")
    assert addrs(res) == ["udp:127.0.4.1:5060", "udp:[::1]:5060"], "no SRV: A then AAAA at 5060"
    res = await r.resolve("sips:bob@dual.test")
    assert addrs(res) == ["tls:127.0.4.1:5061", "tls:[::1]:5061"]


async def test_a_vs_aaaa_and_family_preference(dns_server):
    res = await resolver(dns_server).resolve("sip:v6only.test:5062")
    assert addrs(res) == ["udp:[2001:db8::6]:5062"]
    res = await resolver(dns_server, families=("AAAA", "A")).resolve("sip:dual.test:5062")
    assert addrs(res) == ["udp:[::1]:5062", "udp:127.0.4.1:5062"]
    assert res.first(4).address == "127.0.4.1" and res.first(6).address == "::1"
    res = await resolver(dns_server, families=("A",)).resolve("sip:v6only.test:5062")
    assert res.state == NO_RECORDS and not res.targets
    res = await resolver(dns_server).resolve("sip:alias.test:5000")
    assert addrs(res) == ["udp:127.0.4.1:5000", "udp:[::1]:5000"], "CNAME followed"


async def test_srv_priority_then_weight(dns_server):
    r = resolver(dns_server, rng=random.Random(7))
    firsts = Counter()
    for _ in range(400):
        res = await r.resolve("sip:weighted.test;transport=udp")
        assert res.targets[-1].address == "127.0.3.3", "priority 2 always after priority 1"
        firsts[res.targets[0].address] += 1
    assert dns_server.count("_sip._udp.weighted.test", "SRV") == 1, "the rest came from the cache"
    assert 300 < firsts["127.0.3.1"] < 400 and firsts["127.0.3.2"] > 10, firsts


async def test_srv_target_dot_means_not_offered(dns_server):
    r = resolver(dns_server)
    for uri in ("sip:closed.test;transport=udp", "sip:closed.test"):
        res = await r.resolve(uri, transports=("udp",))
        assert res.state == NO_RECORDS and "not offered" in res.reason, res
    assert dns_server.count("closed.test", "A") == 0, "no fallback to A/AAAA (RFC 2782)"


async def test_explicit_port_skips_naptr_and_srv(dns_server):
    res = await resolver(dns_server).resolve("sip:alice@udp-a.pbx.test:5099")
    assert addrs(res) == ["udp:127.0.1.1:5099"]
    assert {t for n, t, _ in dns_server.queries} == {"A", "AAAA"}


async def test_transport_param_skips_naptr(dns_server):
    r = resolver(dns_server)
    res = await r.resolve("sip:alice@pbx.test;transport=tcp")
    assert addrs(res) == ["tcp:127.0.1.3:5080"]
    assert dns_server.count("pbx.test", "NAPTR") == 0
    res = await r.resolve("sip:alice@dual.test;transport=tcp")
    assert addrs(res) == ["tcp:127.0.4.1:5060", "tcp:[::1]:5060"], "no SRV: A/AAAA at the default port"
    res = await r.resolve("sip:alice@pbx.test;transport=tcp", transports=("udp",))
    assert res.state == "error" and "tcp" in res.reason
    res = await r.resolve("sip:alice@pbx.test;transport=ws")
    assert res.state == "error" and "unsupported transport" in res.reason


async def test_ip_literals_never_touch_dns(dns_server):
    r = resolver(dns_server)
    assert addrs(await r.resolve("sip:alice@192.0.2.7")) == ["udp:192.0.2.7:5060"]
    assert addrs(await r.resolve("sip:alice@192.0.2.7:5070;transport=tcp")) == ["tcp:192.0.2.7:5070"]
    assert addrs(await r.resolve("sips:alice@[2001:db8::1]")) == ["tls:[2001:db8::1]:5061"]
    assert addrs(r.cached("sip:alice@192.0.2.7:5071")) == ["udp:192.0.2.7:5071"]
    assert dns_server.queries == []
    # Not even a nameserver is needed.
    nowhere = Resolver(nameservers=[("127.0.0.1", 9)], timeout=0.2)
    assert addrs(await nowhere.resolve("sip:10.0.0.1:5080")) == ["udp:10.0.0.1:5080"]


async def test_failure_states(dns_server):
    r = resolver(dns_server, timeout=0.3)
    res = await r.resolve("sip:alice@missing.test")
    assert (res.state, res.targets) == (NXDOMAIN, ()) and "missing.test" in res.reason
    res = await r.resolve("sip:alice@empty.test")
    assert res.state == NO_RECORDS
    dns_server.drop.add("slow.test.")
    res = await r.resolve("sip:alice@slow.test")
    assert res.state == TIMEOUT
    dns_server.servfail.add("broken.test.")
    res = await r.resolve("sip:alice@broken.test:5060")
    assert res.state == SERVFAIL
    res = await r.resolve("mailto:alice@pbx.test")
    assert res.state == "error"


async def test_cache_honours_ttl():
    clock = Clock()
    async with DnsServer(ZONE) as server:
        r = Resolver(nameservers=[server.address], clock=clock, timeout=1.0)
        first = await r.resolve("sip:ttl1.test:5060")
        assert addrs(first) == ["udp:127.0.5.1:5060"]
        asked = len(server.queries)
        server.load(ZONE.replace("ttl1 1 A 127.0.5.1", "ttl1 1 A 127.0.5.2"))
        clock.now += 0.5
        assert addrs(await r.resolve("sip:ttl1.test:5060")) == ["udp:127.0.5.1:5060"], "within the TTL: cached"
        assert addrs(r.cached("sip:ttl1.test:5060")) == ["udp:127.0.5.1:5060"]
        assert len(server.queries) == asked
        clock.now += 0.6
        assert r.cached("sip:ttl1.test:5060") is None, "expired: the cache cannot answer"
        assert addrs(await r.resolve("sip:ttl1.test:5060")) == ["udp:127.0.5.2:5060"], "after the TTL: asked again"
        assert server.count("ttl1.test", "A") == 2


async def test_failures_are_cached_briefly():
    clock = Clock()
    async with DnsServer(ZONE, negative_ttl=2) as server:
        r = Resolver(nameservers=[server.address], clock=clock, negative_ttl=30, failure_ttl=5, timeout=0.3)
        assert (await r.resolve("sip:late.test:5060")).state == NXDOMAIN
        assert (await r.resolve("sip:late.test:5060")).state == NXDOMAIN
        assert server.count("late.test", "A") == 1, "NXDOMAIN cached"
        server.load(ZONE + "late 300 A 127.0.6.1\n")
        clock.now += 2.5  # the zone's SOA says negative answers live 2 s
        assert addrs(await r.resolve("sip:late.test:5060")) == ["udp:127.0.6.1:5060"]
        server.drop.add("gone.test.")
        assert (await r.resolve("sip:gone.test:5060")).state == TIMEOUT
        server.drop.clear()
        clock.now += 1
        assert (await r.resolve("sip:gone.test:5060")).state == TIMEOUT, "a timeout is remembered briefly"
        clock.now += 5
        assert (await r.resolve("sip:gone.test:5060")).state == NXDOMAIN, "then asked again"


async def test_concurrent_lookups_of_one_name_share_one_query(dns_server):
    import asyncio

    r = resolver(dns_server)
    results = await asyncio.gather(*(r.resolve("sip:dual.test:5060") for _ in range(20)))
    assert all(addrs(x) == addrs(results[0]) for x in results)
    assert dns_server.count("dual.test", "A") == 1


async def test_truncated_udp_answer_retried_over_tcp():
    many = "".join(f"big 300 A 10.1.0.{i}\n" for i in range(1, 90))
    async with DnsServer(ZONE + many) as server:
        res = await Resolver(nameservers=[server.address], timeout=1.0).resolve("sip:big.test:5060")
        assert len(res.targets) == 89
        assert ("big.test.", "A", "tcp") in server.queries


def test_nameserver_specs():
    assert parse_nameserver("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_nameserver("192.0.2.1:5353") == ("192.0.2.1", 5353)
    assert parse_nameserver("[2001:db8::1]:5353") == ("2001:db8::1", 5353)
    assert parse_nameserver("2001:db8::1") == ("2001:db8::1", 53)
    assert parse_nameserver(("127.0.0.1", 5300)) == ("127.0.0.1", 5300)
    with pytest.raises(ValueError):
        parse_nameserver("dns.example.com")

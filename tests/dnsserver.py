"""A tiny authoritative DNS server for tests: real DNS packets over UDP and TCP on 127.0.0.1.

Built on dnspython's message and zone modules, run in the test's event loop::

    dns = await DnsServer(ZONE).start()         # ZONE: records relative to "test."
    resolver = Resolver(nameservers=[dns.address])
    ...
    await dns.stop()

It answers from one zone (SOA and NS are added for you), with the AA bit, NXDOMAIN
and NODATA carrying the SOA (so negative TTLs work), CNAMEs followed inside the zone,
and TC set when a UDP answer does not fit (the client then retries over TCP).
``queries`` records every question as (name, type, "udp"|"tcp"); names in ``drop``
get no answer at all (a timeout) and names in ``servfail`` get SERVFAIL. ``load()``
replaces the zone while running.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone

HEADER = """\
$TTL {ttl}
@ {ttl} SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 {negative}
@ {ttl} NS ns.{origin}
ns {ttl} A 127.0.0.1
"""


class DnsServer:
    def __init__(self, records: str = "", *, origin: str = "test.", ttl: int = 300, negative_ttl: int = 30) -> None:
        self.origin = dns.name.from_text(origin)
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.queries: list[tuple[str, str, str]] = []
        self.drop: set[str] = set()
        self.servfail: set[str] = set()
        self.zone: dns.zone.Zone
        self.load(records)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    def load(self, records: str) -> None:
        """Replace the zone: ``records`` in zone-file syntax, names relative to the origin."""
        origin = self.origin.to_text()
        text = HEADER.format(ttl=self.ttl, origin=origin, negative=self.negative_ttl) + records
        self.zone = dns.zone.from_text(text, origin=self.origin, relativize=False, check_origin=True)

    def count(self, name: str, rdtype: str | None = None) -> int:
        """How many questions for ``name`` (and ``rdtype``) arrived."""
        name = name.lower().rstrip(".") + "."
        return sum(1 for n, t, _ in self.queries if n == name and (rdtype is None or t == rdtype))

    # -- lifecycle ------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1") -> DnsServer:
        """Listen on UDP and TCP, both on the same free port."""
        loop = asyncio.get_running_loop()
        for _ in range(50):
            udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp_sock.bind((host, 0))
            port = udp_sock.getsockname()[1]
            tcp_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp_sock.bind((host, port))
            except OSError:
                udp_sock.close()
                tcp_sock.close()
                continue
            break
        else:  # pragma: no cover
            raise RuntimeError("no free port for the DNS server")
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp_sock)
        tcp_sock.listen(16)
        self._tcp = await asyncio.start_server(self._tcp_client, sock=tcp_sock)
        self.address = (host, port)
        return self

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 1)
            self._tcp = None

    async def __aenter__(self) -> DnsServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- answering ------------------------------------------------------------------
    def answer(self, wire: bytes, proto: str) -> bytes | None:
        """The response to one query in wire format (None: stay silent)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        qname = question.name.to_text().lower()
        self.queries.append((qname, dns.rdatatype.to_text(question.rdtype), proto))
        if qname in self.drop:
            return None
        response = dns.message.make_response(query)
        if qname in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            self._fill(response, question.name, question.rdtype)
        if proto == "tcp":
            return response.to_wire()
        limit = query.payload if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=max(512, limit))
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | dns.flags.AA
            return truncated.to_wire()

    def _fill(self, response: dns.message.Message, name: dns.name.Name, rdtype: int) -> None:
        if not name.is_subdomain(self.origin):
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        for _ in range(8):  # follow CNAMEs inside the zone
            node = self.zone.get_node(name)
            if node is None:
                if not self._has_children(name):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                self._add_soa(response)
                return
            rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if rdataset is not None:
                response.answer.append(_rrset(name, rdataset))
                return
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None or rdtype == dns.rdatatype.CNAME:
                self._add_soa(response)  # NODATA
                return
            response.answer.append(_rrset(name, cname))
            name = cname[0].target
            if not name.is_subdomain(self.origin):
                return
        response.set_rcode(dns.rcode.SERVFAIL)  # pragma: no cover - CNAME loop

    def _has_children(self, name: dns.name.Name) -> bool:
        """An empty non-terminal (e.g. ``_udp.pbx``) exists: NODATA, not NXDOMAIN."""
        return any(n != name and n.is_subdomain(name) for n in self.zone.nodes)

    def _add_soa(self, response: dns.message.Message) -> None:
        soa = self.zone.get_rdataset(self.origin, dns.rdatatype.SOA)
        response.authority.append(_rrset(self.origin, soa))

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.answer(await reader.readexactly(length), "tcp")
                if reply is None:
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _rrset(name: dns.name.Name, rdataset):
    import dns.rrset

    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
    rrset.update(rdataset)
    rrset.ttl = rdataset.ttl
    return rrset


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        reply = self.server.answer(data, "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

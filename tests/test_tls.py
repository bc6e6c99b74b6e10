"""SIP over TLS (RFC 3261 §26): the tls: listener, its certificate options, TLS 1.2 minimum,
client certificates, flows (contacts bound to the connection, removed when it closes), CRLF
keepalives (RFC 5626 §4.4.1), a stalled handshake, and baresip and linphonec registering over TLS
with digest."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

import pytest

from registrar_core.flows import REMOVED_FLOW_CLOSED

from .sipclient import server_address
from .processes import run_baresip, run_cli, run_linphonec, stop_linphonec, until
from .sipclient import TcpPhone, free_port, next_aor, register_bytes


async def tls_server(make_server, tls_files, host: str = "127.0.0.1", **settings):
    port = free_port()
    bracketed = f"[{host}]" if ":" in host else host
    return await make_server(listen=[f"udp:{bracketed}:{port}", f"tls:{bracketed}:{port}"],
                             **tls_files.settings(), **settings)


async def test_register_over_tls_binds_the_contact_to_its_connection(make_server, tls_files):
    srv = await tls_server(make_server, tls_files)
    assert any(a.startswith("tls:127.0.0.1:") for a in srv.core.listening)
    phone = await TcpPhone(server_address(srv, "tls"), tls_files.client_context()).open()
    aor = next_aor()
    try:
        r = await phone.send(register_bytes(aor, [f"<sip:x@{phone.local[0]}:{phone.local[1]};transport=tls>"],
                                            local=phone.local, transport="TLS"))
        assert r.status == 200
        tls_object = phone.writer.get_extra_info("ssl_object")
        assert tls_object.version() in ("TLSv1.2", "TLSv1.3")
        contact = srv.core.fetch_contacts(aor)[0]
        assert contact.received == f"tls:127.0.0.1:{phone.local[1]}"
        assert contact.socket == f"tls:127.0.0.1:{server_address(srv, 'tls')[1]}"
        assert contact.conid is not None, "bound to its connection (the flow)"
        # RFC 5626 §4.4.1: a CRLF CRLF ping gets a CRLF pong on the same connection.
        phone.writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(phone.reader.readexactly(2), 3) == b"\r\n"
    finally:
        phone.close()


async def test_ipv6_tls_listener(make_server, tls_files):
    srv = await tls_server(make_server, tls_files, host="::1")
    phone = await TcpPhone(server_address(srv, "tls"), tls_files.client_context()).open()
    try:
        aor = next_aor()
        r = await phone.send(register_bytes(aor, ["<sip:x@[::1]:5999;transport=tls>"], local=("[::1]", 5999),
                                            transport="TLS"))
        assert r.status == 200 and srv.core.fetch_contacts(aor)[0].received.startswith("tls:[::1]:")
    finally:
        phone.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_below_1_2_is_refused(make_server, tls_files):
    srv = await tls_server(make_server, tls_files)
    old = tls_files.client_context()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await TcpPhone(server_address(srv, "tls"), old).open()
    modern = tls_files.client_context()
    modern.maximum_version = ssl.TLSVersion.TLSv1_2
    phone = await TcpPhone(server_address(srv, "tls"), modern).open()  # 1.2 itself is fine
    assert phone.writer.get_extra_info("ssl_object").version() == "TLSv1.2"
    phone.close()


async def test_client_certificates_are_required_with_a_ca(make_server, tls_files):
    srv = await tls_server(make_server, tls_files, tls_ca=str(tls_files.ca_file))
    address = server_address(srv, "tls")
    anonymous = await TcpPhone(address, tls_files.client_context()).open()  # TLS 1.3: refused after
    aor = next_aor()
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await anonymous.send(register_bytes(aor, ["<sip:x@127.0.0.1:5999>"], local=anonymous.local, transport="TLS"))
    anonymous.close()
    with_cert = tls_files.client_context()
    tls_files.ca.issue_cert("phone.test").configure_cert(with_cert)
    phone = await TcpPhone(address, with_cert).open()
    try:
        r = await phone.send(register_bytes(aor, ["<sip:x@127.0.0.1:5999>"], local=phone.local, transport="TLS"))
        assert r.status == 200
    finally:
        phone.close()


async def test_contacts_go_when_their_connection_closes(make_server, tls_files):
    srv = await tls_server(make_server, tls_files)
    events = srv.core.subscribe()
    phone = await TcpPhone(server_address(srv, "tls"), tls_files.client_context()).open()
    aor = next_aor()
    r = await phone.send(register_bytes(aor, ["<sip:x@phone.invalid;transport=tls>"], local=phone.local,
                                        transport="TLS"))
    assert r.status == 200 and srv.core.fetch_contacts(aor).count == 1
    phone.close()
    assert await until(lambda: srv.core.fetch_contacts(aor).count == 0), "removed with its flow"
    reasons = [event.data["reason"] for event in events.drain() if event.kind == "contact.removed"]
    assert reasons == [REMOVED_FLOW_CLOSED], "the console and ctl see why it went"



async def test_many_flows_closing_at_once_are_reaped_together(make_server, tls_files, caplog):
    """A proxy restart drops its connections together: every contact goes, and the table is
    walked for the closes together (one log line per walk), not once per connection."""
    srv = await tls_server(make_server, tls_files)
    phones = [await TcpPhone(server_address(srv, "tls"), tls_files.client_context()).open() for _ in range(20)]
    aors = [next_aor() for _ in phones]
    for phone, aor in zip(phones, aors):
        r = await phone.send(register_bytes(aor, ["<sip:x@phone.invalid;transport=tls>"], local=phone.local,
                                            transport="TLS"))
        assert r.status == 200
    caplog.set_level(logging.INFO, logger="registrar_core.flows")
    for phone in phones:
        phone.close()
    assert await until(lambda: all(srv.core.fetch_contacts(aor).count == 0 for aor in aors), 10)
    walks = [r.getMessage() for r in caplog.records if r.name == "registrar_core.flows"]
    assert sum(int(w.split("removed ")[1].split()[0]) for w in walks) == 20
    assert len(walks) < 20, walks

async def test_keep_flow_contacts_keeps_them_until_expiry(make_server, tls_files):
    srv = await tls_server(make_server, tls_files, keep_flow_contacts=True)
    phone = await TcpPhone(server_address(srv, "tls"), tls_files.client_context()).open()
    aor = next_aor()
    r = await phone.send(register_bytes(aor, ["<sip:x@127.0.0.1:5999;transport=tls>"], local=phone.local,
                                        transport="TLS"))
    assert r.status == 200
    phone.close()
    assert await until(lambda: not srv.transports.connections)
    await asyncio.sleep(0.2)
    assert srv.core.fetch_contacts(aor).count == 1


async def test_a_stalled_handshake_neither_blocks_nor_stays(make_server, tls_files):
    srv = await tls_server(make_server, tls_files, tls_handshake_timeout=1.0)
    address = server_address(srv, "tls")
    # Stops mid-handshake: half a ClientHello, then nothing.
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    phone = await TcpPhone(address, tls_files.client_context()).open()
    started = time.monotonic()
    r = await phone.send(register_bytes(next_aor(), ["<sip:x@127.0.0.1:5999>"], local=phone.local, transport="TLS"))
    assert r.status == 200 and time.monotonic() - started < 0.1, "others register meanwhile"
    phone.close()
    assert await asyncio.wait_for(reader.read(), 5) == b"", "closed at the handshake timeout"
    writer.close()


async def test_baresip_registers_over_tls_with_digest(make_server, tls_files, short_dir):
    """Debian's baresip 1.0 verifying our certificate against the test CA (sip_cafile)."""
    srv = await tls_server(make_server, tls_files, auth=True)
    await srv.core.subscribers.add("100@127.0.0.1", "baresip-secret")
    host, port = server_address(srv, "tls")
    proc = await run_baresip(short_dir / "baresip-tls",
                             f"<sip:100@{host}:{port};transport=tls>;auth_pass=baresip-secret;regint=600",
                             extra_config=f"sip_cafile {tls_files.ca_file}\n")
    try:
        registered = await until(lambda: srv.core.fetch_contacts("100@127.0.0.1").count == 1, 20)
        contacts = list(srv.core.fetch_contacts("100@127.0.0.1"))
    finally:
        proc.terminate()
        output = (await asyncio.wait_for(proc.communicate(), 20))[0].decode(errors="replace")
    assert registered, f"baresip did not register over TLS:\n{output}"
    assert contacts[0].received.startswith("tls:127.0.0.1:") and contacts[0].conid is not None
    stats = srv.core.snapshot_stats()
    assert stats["challenged"] >= 1 and stats["rejected_regs"] == 0, "challenged, then accepted"


@pytest.mark.parametrize(("extra", "expected"), [
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
     "tls-cert/tls-key: /nonexistent/cert.pem does not exist"),
    (["--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname"], "both must be PEM"),
])
def test_a_bad_certificate_is_one_line(extra, expected, short_dir):
    done = run_cli("serve", "--listen", f"tls:127.0.0.1:{free_port()}", "--db", str(short_dir / "l.db"),
                   "--control", str(short_dir / "c.sock"), *extra)
    assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


async def test_a_thousand_idle_tls_connections(make_server, tls_files):
    """1,000 handshaken TLS connections that never send a message (20 addresses, under the
    per-IP cap): a phone still registers within 100 ms, and every idle one is closed at the
    read timeout, so none holds a descriptor for the idle timeout."""
    srv = await tls_server(make_server, tls_files, tcp_idle_timeout=60.0, tcp_read_timeout=3.0)
    host, port = server_address(srv, "tls")
    context = tls_files.client_context()

    async def idle(n: int):
        return await asyncio.open_connection(host, port, ssl=context, server_hostname="localhost",
                                             local_addr=(f"127.0.0.{10 + n % 20}", 0))

    conns = []
    for start in range(0, 1000, 100):
        conns += await asyncio.gather(*(idle(n) for n in range(start, start + 100)))
    assert await until(lambda: len(srv.transports.connections) == 1000, 10)
    phone = await TcpPhone((host, port), context).open()
    started = time.monotonic()
    r = await phone.send(register_bytes(next_aor(), ["<sip:x@127.0.0.1:5999>"], local=phone.local, transport="TLS"))
    took = time.monotonic() - started
    assert r.status == 200 and took < 0.1, f"{took * 1000:.0f} ms with 1,000 idle TLS connections"
    assert await until(lambda: len(srv.transports.connections) == 1, 15), "the idle ones closed, the phone kept"
    closed = await asyncio.gather(*(asyncio.wait_for(reader.read(), 5) for reader, _ in conns),
                                  return_exceptions=True)
    assert all(c == b"" or isinstance(c, ConnectionError) for c in closed)
    for _, writer in conns:
        writer.close()
    phone.close()


async def test_handshakes_under_way_count_against_the_caps(make_server, tls_files):
    """Connections that never finish their handshake hold a slot each: past the per-IP cap
    they are closed at once, not after the handshake timeout; other addresses still get in."""
    srv = await tls_server(make_server, tls_files, max_tcp_per_ip=5, tls_handshake_timeout=30.0)
    host, port = server_address(srv, "tls")
    stalled = [await asyncio.open_connection(host, port, local_addr=("127.0.0.7", 0)) for _ in range(8)]
    results = await asyncio.gather(*(asyncio.wait_for(reader.read(), 3) for reader, _ in stalled),
                                   return_exceptions=True)
    closed = [r == b"" for r in results]
    assert closed.count(True) == 3, f"the 3 over the cap of 5 are closed at once: {results}"
    assert srv.transports.handshaking["127.0.0.7"] == 5 and srv.transports.refused == 3
    phone = await TcpPhone((host, port), tls_files.client_context()).open()
    r = await phone.send(register_bytes(next_aor(), ["<sip:x@127.0.0.1:5999>"], local=phone.local, transport="TLS"))
    assert r.status == 200
    phone.close()
    for _, writer in stalled:
        writer.close()
    assert await until(lambda: not srv.transports.handshaking, 5), "closed ones give their slot back"


def test_ctl_with_the_servers_config_need_not_read_its_key(short_dir):
    """`ctl --config` takes the control socket from the registrar's file: a private key only the
    registrar may read (here: none at all) must not stop it."""
    config = short_dir / "sipconsole.toml"
    config.write_text(f'listen = ["tls:127.0.0.1:{free_port()}"]\ntls-cert = "/nonexistent/cert.pem"\n'
                      f'tls-key = "/nonexistent/key.pem"\ncontrol = "{short_dir / "c.sock"}"\n')
    done = run_cli("ctl", "dump", "--config", str(config))
    assert done.returncode == 3 and "tls-cert" not in done.stderr, done.stderr  # 3: no registrar answers


async def test_linphonec_registers_over_tls_with_digest(make_server, tls_files, short_dir):
    """Debian's linphonec 5.1 verifying our certificate (name included) against the test CA;
    trusting another CA it refuses the certificate and never registers."""
    import trustme

    srv = await tls_server(make_server, tls_files, auth=True)
    await srv.core.subscribers.add("100@127.0.0.1", "linphone-secret")
    stranger = short_dir / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    proc = await run_linphonec(short_dir / "untrusting", server_address(srv, "tls"), "tls", "linphone-secret",
                               root_ca=stranger)
    try:
        assert not await until(lambda: srv.core.fetch_contacts("100@127.0.0.1").count > 0, 5)
    finally:
        output = await stop_linphonec(proc)
    assert "Certificate verification failed" in output, output
    proc = await run_linphonec(short_dir / "trusting", server_address(srv, "tls"), "tls", "linphone-secret",
                               root_ca=tls_files.ca_file)
    try:
        registered = await until(lambda: srv.core.fetch_contacts("100@127.0.0.1").count == 1, 30)
        contacts = list(srv.core.fetch_contacts("100@127.0.0.1"))
    finally:
        output = await stop_linphonec(proc)
    assert registered, f"linphonec did not register over TLS:\n{output}"
    assert contacts[0].received.startswith("tls:127.0.0.1:") and contacts[0].conid is not None
    assert contacts[0].user_agent.startswith("Linphone")
    stats = srv.core.snapshot_stats()
    assert stats["challenged"] >= 1 and stats["rejected_regs"] == 0, "challenged, then registered"

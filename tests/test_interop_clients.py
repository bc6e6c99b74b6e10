"""Real clients against the default settings: Debian 12's baresip 1.0 (baresip-core) and linphonec
5.1 (linphone-cli) register with digest over UDP and over TCP, sipsak 0.9.8 over UDP. baresip 1.0 gives up on any
challenge that offers SHA-256 (even beside MD5, even after it), sipsak on one that offers it
first: which is why MD5 alone is the default challenge."""

from __future__ import annotations

import asyncio
import pytest

from .processes import run_baresip, run_linphonec, stop_linphonec, until
from .sipclient import server_address


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_baresip_registers_with_the_default_digest(make_server, short_dir, transport):
    srv = await make_server(auth=True)  # auth on, default algorithms
    await srv.core.subscribers.add("100@127.0.0.1", "baresip-secret")
    host, port = server_address(srv)
    proc = await run_baresip(short_dir / f"baresip-{transport}",
                             f"<sip:100@{host}:{port};transport={transport}>;auth_pass=baresip-secret;regint=600")
    try:
        registered = await until(lambda: srv.core.fetch_contacts("100@127.0.0.1").count == 1)
        contacts = list(srv.core.fetch_contacts("100@127.0.0.1"))  # before it unregisters on exit
    finally:
        proc.terminate()
        output = (await asyncio.wait_for(proc.communicate(), 20))[0].decode(errors="replace")
    assert registered, f"baresip did not register:\n{output}"
    assert contacts[0].received.startswith(f"{transport}:127.0.0.1:")
    assert "baresip" in contacts[0].user_agent
    stats = srv.core.snapshot_stats()
    assert stats["challenged"] >= 1 and stats["rejected_regs"] == 0, "challenged once, never refused"


async def test_sipsak_registers_with_the_default_digest(make_server):
    srv = await make_server(auth=True)
    await srv.core.subscribers.add("100@127.0.0.1", "sipsak-secret")
    host, port = server_address(srv)
    # -u: in usrloc mode sipsak 0.9.8 otherwise authenticates as "100@".
    proc = await asyncio.create_subprocess_exec(
        "sipsak", "-U", "-i", "-s", f"sip:100@{host}:{port}", "-u", "100", "-a", "sipsak-secret", "-x", "600",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output = (await asyncio.wait_for(proc.communicate(), 60))[0].decode(errors="replace")
    assert proc.returncode == 0, output
    [contact] = srv.core.fetch_contacts("100@127.0.0.1")
    assert contact.user_agent.startswith("sipsak")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_linphonec_registers_with_the_default_digest(make_server, short_dir, transport):
    srv = await make_server(auth=True)
    await srv.core.subscribers.add("100@127.0.0.1", "linphone-secret")
    proc = await run_linphonec(short_dir, server_address(srv), transport, "linphone-secret")
    try:
        registered = await until(lambda: srv.core.fetch_contacts("100@127.0.0.1").count == 1)
        contacts = list(srv.core.fetch_contacts("100@127.0.0.1"))
    finally:
        output = await stop_linphonec(proc)
    assert registered, f"linphonec did not register:\n{output}"
    assert contacts[0].received.startswith(f"{transport}:127.0.0.1:")
    assert contacts[0].user_agent.startswith("Linphone")
    assert srv.core.snapshot_stats()["rejected_regs"] == 0

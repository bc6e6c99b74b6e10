"""The contact journal (registrar_core/journal.py): every reason a binding came, changed or went,
each produced for real (real sockets, a real SQLite file, `sipconsole serve` and `ctl`), written
in the group commit that made the change, read back with `ctl history`, and kept bounded."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import pytest

from registrar_core import journal
from registrar_core.config import ConfigError, build_config
from registrar_core.ctl import since

from .processes import run_cli, until
from .sipclient import TcpPhone, UdpPhone, free_port, next_aor, register_bytes, server_address


async def events(srv, aor: str) -> list[tuple[str, str]]:
    """(event, addr) of the AOR's journal, oldest first."""
    return [(e.event, e.addr) for e in await srv.core.history(aor)]


async def journaled(srv, aor: str, event: str) -> bool:
    """Wait (polling, bounded) until the AOR's journal has a row of ``event``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(e == event for e, _ in await events(srv, aor)):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_registered_and_refreshes_coalesced(make_server):
    srv = await make_server()
    phone = await UdpPhone(server_address(srv)).open()
    aor = next_aor()
    for cseq in range(1, 6):  # one binding, refreshed four times without change
        assert (await phone.register(aor, ["<sip:desk@10.0.0.1>"], call_id="c@t", cseq=cseq)).status == 200
    assert await events(srv, aor) == [("registered", "sip:desk@10.0.0.1")], "a plain refresh adds no row"
    [entry] = await srv.core.history(aor)
    assert entry.ruid == srv.core.fetch_contacts(aor)[0].ruid
    assert entry.received == f"udp:127.0.0.1:{phone.local[1]}" and entry.detail == "expires in 3600 s"
    # A refresh from another source (NAT rebinding) is journaled, naming what changed.
    moved = await UdpPhone(server_address(srv)).open()
    assert (await moved.register(aor, ["<sip:desk@10.0.0.1>"], call_id="c@t", cseq=6)).status == 200
    rows = await srv.core.history(aor)
    assert [r.event for r in rows] == ["registered", "refreshed"]
    assert rows[1].detail == f"received udp:127.0.0.1:{phone.local[1]} -> udp:127.0.0.1:{moved.local[1]}"
    # The device's own unregister.
    assert (await moved.register(aor, ["<sip:desk@10.0.0.1>"], call_id="c@t", cseq=7, expires=0)).status == 200
    assert [r.event for r in await srv.core.history(aor)] == ["registered", "refreshed", "unregistered"]
    phone.close()
    moved.close()


async def test_expired(make_server):
    srv = await make_server(min_expires=1)
    phone = await UdpPhone(server_address(srv)).open()
    aor = next_aor()
    assert (await phone.register(aor, ["<sip:short@10.0.0.1>"], expires=1)).status == 200
    assert await journaled(srv, aor, "expired")
    assert await events(srv, aor) == [("registered", "sip:short@10.0.0.1"), ("expired", "sip:short@10.0.0.1")]
    registered, expired = await srv.core.history(aor)
    assert expired.last_register == registered.last_register, "the removal says when it was last heard"
    phone.close()


async def test_replaced_by_single_contact(make_server):
    srv = await make_server()
    await srv.core.set_single_contact(True)  # flag 0x04 as a policy
    phone = await UdpPhone(server_address(srv)).open()
    aor = next_aor()
    assert (await phone.register(aor, ["<sip:desk@10.0.0.1>"], call_id="a@t")).status == 200
    assert (await phone.register(aor, ["<sip:mobile@10.0.0.2>"], call_id="b@t")).status == 200
    assert await events(srv, aor) == [("registered", "sip:desk@10.0.0.1"), ("replaced", "sip:desk@10.0.0.1"),
                                      ("registered", "sip:mobile@10.0.0.2")]
    assert (await srv.core.history(aor))[1].detail == "for sip:mobile@10.0.0.2", "what took its place"
    phone.close()


async def test_evicted_by_max_contacts(make_server):
    srv = await make_server(max_contacts=1, max_contacts_mode="evict-oldest")
    phone = await UdpPhone(server_address(srv)).open()
    aor = next_aor()
    assert (await phone.register(aor, ["<sip:old@10.0.0.1>"], call_id="a@t")).status == 200
    commits = srv.core.location.commit_size.sum
    assert (await phone.register(aor, ["<sip:new@10.0.0.2>"], call_id="b@t")).status == 200
    assert srv.core.location.commit_size.sum == commits + 1, "the eviction, the binding and their rows: one change"
    assert await events(srv, aor) == [("registered", "sip:old@10.0.0.1"), ("evicted", "sip:old@10.0.0.1"),
                                      ("registered", "sip:new@10.0.0.2")]
    assert (await srv.core.history(aor))[1].detail == "for sip:new@10.0.0.2", "what took its place"
    phone.close()


async def test_removed_after_failed_qualifies(make_server):
    srv = await make_server(qualify_interval=0.3, qualify_timeout=0.3, qualify_remove_after=2)
    silent = await UdpPhone(server_address(srv)).open()  # registers, never answers OPTIONS
    aor = next_aor()
    assert (await silent.register(aor)).status == 200
    assert await journaled(srv, aor, "unreachable")
    assert [e for e, _ in await events(srv, aor)] == ["registered", "unreachable"]
    silent.close()


async def test_connection_closed(make_server, tls_files):
    port = free_port()
    srv = await make_server(listen=[f"udp:127.0.0.1:{port}", f"tls:127.0.0.1:{port}"], **tls_files.settings())
    phone = await TcpPhone(server_address(srv, "tls"), tls_files.client_context()).open()
    aor = next_aor()
    r = await phone.send(register_bytes(aor, ["<sip:x@phone.invalid;transport=tls>"], local=phone.local,
                                        transport="TLS"))
    assert r.status == 200
    phone.close()
    assert await journaled(srv, aor, "connection-closed")
    rows = await srv.core.history(aor)
    assert [r.event for r in rows] == ["registered", "connection-closed"]
    assert rows[1].received.startswith("tls:127.0.0.1:")


async def test_operator_removal_via_ctl_names_who(serve_process):
    serve = serve_process.start()
    phone = await UdpPhone(("127.0.0.1", serve.port)).open()
    aor = next_aor()
    assert (await phone.register(aor, ["<sip:desk@10.0.0.1>"])).status == 200
    phone.close()
    code, _ = serve.ctl("unregister", aor)
    assert code == 0
    code, history = serve.ctl("history", aor)
    assert code == 0
    assert [e["event"] for e in history["entries"]] == ["registered", "admin"]
    removal = history["entries"][1]
    assert removal["detail"].startswith(f"by ctl uid={os.getuid()} pid=")
    assert removal["addr"] == "sip:desk@10.0.0.1" and history["aor"] == aor
    # The plain form: a table with local times and the reasons in words.
    code, text = serve.ctl("history", f"sip:{aor}", json_output=False)
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == ["TIME", "EVENT", "CONTACT", "RECEIVED", "DETAIL", "RUID"]
    assert "registered" in lines[1] and "removed by an operator" in lines[2] and "by ctl uid=" in lines[2]
    assert lines[2].startswith(time.strftime("%Y-%m-%d"))
    # --since: a duration ago or ISO 8601; a time after the removal shows nothing.
    assert serve.ctl("history", aor, "--since", "1h")[1]["entries"] == history["entries"]
    later = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 60))
    assert serve.ctl("history", aor, "--since", later)[1]["entries"] == []
    code, text = serve.ctl("history", aor, "--since", later, json_output=False)
    assert code == 0 and text.strip() == f"{aor}: no journal entries"
    # A bad --since is one line and exit 2, before the registrar is asked.
    code, error = serve.ctl("history", aor, "--since", "last tuesday")
    assert code == 2 and error.count("\n") == 1 and "ISO 8601" in error


async def test_journal_rows_survive_a_restart_and_expiry_while_down_is_journaled(serve_process):
    serve = serve_process.start("--min-expires", "1")
    phone = await UdpPhone(("127.0.0.1", serve.port)).open()
    aor = next_aor()
    assert (await phone.register(aor, ["<sip:desk@10.0.0.1>"], expires=2)).status == 200
    phone.close()
    assert serve.stop() == 0
    await asyncio.sleep(2.5)  # it expires while no registrar runs
    serve.start("--min-expires", "1")
    code, history = serve.ctl("history", aor)
    assert code == 0
    assert [(e["event"], e["detail"]) for e in history["entries"]] == [
        ("registered", "expires in 2 s"), ("expired", "found expired at start")]


async def test_retention_and_row_cap_prune_in_bounded_deletes(make_server, short_dir):
    srv = await make_server(journal_max_rows=3)
    phone = await UdpPhone(server_address(srv)).open()
    aor = next_aor()
    for n in range(5):
        assert (await phone.register(aor, [f"<sip:d{n}@10.0.0.1>"])).status == 200
    assert len(await srv.core.history(aor)) == 5
    location = srv.core.location
    await location.prune_journal()  # (or the sweeper's first pass did already)
    assert [e.addr for e in await srv.core.history(aor)] == [f"sip:d{n}@10.0.0.1" for n in (2, 3, 4)], \
        "the row cap keeps the newest 3"
    location.journal_retention = 0.0  # every row is now too old: deleted a chunk at a time
    location.prune_chunk = 2
    assert await location.prune_journal() == 3, "two deletes (2 + 1 rows) in one pass"
    assert await srv.core.history(aor) == []
    # The sweeper prunes by itself, every prune_interval, without a REGISTER coming.
    assert (await phone.register(aor, ["<sip:late@10.0.0.1>"])).status == 200
    location.prune_interval = 0.2
    assert await until(lambda: _journal_rows(short_dir / "location.db") == 0)
    phone.close()


def _journal_rows(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM journal").fetchone()[0]


async def test_schema_2_database_is_migrated(make_server, short_dir):
    db = short_dir / "location.db"
    with sqlite3.connect(db) as conn:  # a version 2 file: no journal table
        conn.executescript("CREATE TABLE subscribers (username TEXT, domain TEXT, ha1_md5 TEXT, ha1_sha256 TEXT, "
                           "ha1_sha512_256 TEXT, PRIMARY KEY (username, domain)); PRAGMA user_version=2;")
    srv = await make_server()
    phone = await UdpPhone(server_address(srv)).open()
    aor = next_aor()
    assert (await phone.register(aor)).status == 200
    assert [e for e, _ in await events(srv, aor)] == ["registered"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    phone.close()


def test_journal_settings():
    assert build_config({}).journal_retention == 7 * 86400 and build_config({}).journal_max_rows == 1_000_000
    assert build_config({"journal-retention": "12h"}).journal_retention == 12 * 3600
    assert build_config({"journal_retention": 90}).journal_retention == 90
    with pytest.raises(ConfigError, match="journal-retention: 'soon' is not a duration"):
        build_config({"journal-retention": "soon"})
    with pytest.raises(ConfigError, match="journal-max-rows must be at least 1"):
        build_config({"journal-max-rows": 0})
    done = run_cli("serve", "--journal-retention", "forever")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is not a duration" in done.stderr


def test_since_and_durations():
    assert since("90s", now=1000.0) == 910.0 and since("2h", now=10_000.0) == 2800.0
    assert since("2026-12-06T08:30:00Z") == 1796545800.0
    with pytest.raises(ValueError):
        since("yesterday")
    assert journal.parse_duration("1w") == 7 * 86400 and journal.parse_duration("15m") == 900
    with pytest.raises(ValueError):
        journal.parse_duration("-5")

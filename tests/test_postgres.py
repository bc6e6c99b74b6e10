"""`sipconsole` on PostgreSQL (registrar_core/location/postgres_store.py) end to end: `serve`,
`user` and `ctl` with ``--db postgresql://...``, restarts, and the server stopped under sipp load.

The Store promises themselves (every field kept, batches whole, bad data) are in
test_store_contract.py, run against both stores.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.parse
from pathlib import Path

from registrar_core.events import EventBus
from registrar_core.location import DEFAULT_TABLE, Contact, LocationService, SqliteStore, store_for
from registrar_core.location.postgres_store import PostgresStore, without_password

from .postgres import PostgresCluster
from .processes import SCENARIOS, ServeProcess, acknowledged_aors, run_cli, run_sipp, write_injection
from .sipclient import free_port


def _serve_on(directory: Path, dsn: str, name: str = "") -> ServeProcess:
    proc = ServeProcess(directory, free_port(), name)
    proc.db = dsn  # type: ignore[assignment]  # the command line takes str(db)
    return proc


def _register(proc: ServeProcess, directory: Path, users: list[str], *, rate: int = 200) -> None:
    inf = write_injection(directory / "users.csv", [(u, "example.com") for u in users])
    result = run_sipp("register.xml", proc.port, "-inf", str(inf), calls=len(users), rate=rate)
    assert result.returncode == 0 and result.successful == len(users), result.output[-2000:]


def _stored_aors(cluster: PostgresCluster, dsn: str) -> set[str]:
    return set(cluster.query(dsn, "SELECT aor FROM contacts"))


def test_serve_user_and_ctl_on_postgresql_keep_bindings_over_a_restart(postgres, pg_dsn, short_dir):
    added = run_cli("user", "add", "alice@example.com", "--db", pg_dsn, "--password-stdin", stdin="secret\n")
    assert added.returncode == 0, added.stderr
    serve = _serve_on(short_dir, pg_dsn).start()
    try:
        listed = serve.user("list")
        assert listed.returncode == 0 and "alice@example.com" in listed.stdout, listed.stderr
        _register(serve, short_dir, [f"pg{i}" for i in range(50)])
        code, before = serve.ctl("dump")
        assert code == 0 and len(before["aors"]) == 50
        assert _stored_aors(postgres, pg_dsn) == {a["aor"] for a in before["aors"]}
        assert serve.stop() == 0
        serve.start()
        code, after = serve.ctl("dump")
        ruids = lambda d: {c["ruid"] for a in d["aors"] for c in a["contacts"]}  # noqa: E731
        assert code == 0 and ruids(after) == ruids(before)
        log = serve.log.read_text()
        assert f"location table in {without_password(pg_dsn)}" in log.replace("PostgreSQL ", "")
        assert "50 bindings loaded" in log
    finally:
        serve.stop()
    assert not list(short_dir.glob("*.lock")) and not list(Path.cwd().glob("postgres*")), "no lock file for a DSN"


def test_several_registrars_start_on_one_database(pg_dsn, short_dir):
    """No sidecar lock for PostgreSQL: sharing the database is the point."""
    first = _serve_on(short_dir, pg_dsn, "-a").start()
    try:
        second = _serve_on(short_dir, pg_dsn, "-b").start()
        try:
            assert second.ctl("stats")[0] == 0 and first.ctl("stats")[0] == 0
        finally:
            second.stop()
    finally:
        first.stop()


def test_the_password_of_the_dsn_stays_out_of_the_log(postgres, short_dir):
    name = urllib.parse.urlsplit(postgres.new_database()).path.lstrip("/")
    dsn = f"postgresql://postgres:sekrit-pw@/{name}?host={postgres.host}"  # trust: any password works
    assert without_password(dsn) == f"postgresql://postgres@/{name}?host={postgres.host}"
    assert without_password(dsn.replace("?", "?password=sekrit-pw&")) == without_password(dsn)
    serve = _serve_on(short_dir, dsn).start()
    serve.stop()
    log = serve.log.read_text()
    assert "location table in PostgreSQL" in log and "sekrit-pw" not in log


def test_a_database_that_cannot_be_reached_is_one_line_and_exit_1(short_dir):
    dsn = f"postgresql://postgres@/nodb?host={short_dir}/no-server-here"
    done = subprocess.run(_serve_on(short_dir, dsn).command(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sipconsole: error:") and "cannot connect to PostgreSQL" in last
    assert "Traceback" not in done.stderr


def _replies(message_log: str) -> list[tuple[str, int, str]]:
    """(AOR, status, whole message) of every response to a REGISTER that sipp received (not
    the 481s to the BYEs sipp sends after a call it counts as failed)."""
    out = []
    for block in message_log.split("-" * 47):
        status = re.search(r"^SIP/2\.0 (\d{3})", block, re.M)
        to = re.search(r"^To:\s*<sip:([^>;]+)>", block, re.M)
        if "message received" in block and status and to and re.search(r"^CSeq:\s*\d+ REGISTER", block, re.M):
            out.append((to.group(1).lower(), int(status.group(1)), block))
    return out


def test_postgresql_stopped_and_restarted_under_load(short_dir, tmp_path):
    """Every REGISTER gets 500 + Retry-After, or a 200 whose binding survived the restart of
    PostgreSQL; once it is back the registrar serves again by itself."""
    cluster = PostgresCluster()  # its own: this test stops it
    cluster.start()
    try:
        dsn = cluster.new_database()
        serve = _serve_on(short_dir, dsn).start()
        total = 3000
        inf = write_injection(tmp_path / "u.csv", [(f"f{i}", "example.com") for i in range(total)])
        log = tmp_path / "messages.log"
        sipp = subprocess.Popen(
            ["sipp", f"127.0.0.1:{serve.port}", "-sf", str(SCENARIOS / "register.xml"), "-inf", str(inf),
             "-m", str(total), "-r", "300", "-l", "200", "-i", "127.0.0.1", "-nostdin", "-timeout", "40s",
             "-trace_msg", "-message_file", str(log), "-recv_timeout", "3000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        try:
            time.sleep(2.0)
            cluster.stop()  # fast shutdown: connections cut mid-commit
            time.sleep(2.0)
            cluster.start()
            sipp.wait(90)
        finally:
            if sipp.poll() is None:
                sipp.kill()
            serve_alive = serve.proc is not None and serve.proc.poll() is None
        replies = _replies(log.read_text(errors="replace"))
        statuses = {status for _, status, _ in replies}
        assert statuses <= {200, 500}, statuses
        failed = [block for _, status, block in replies if status == 500]
        assert failed, "the stop must land mid-load"
        assert all(re.search(r"^Retry-After:", b, re.M) for b in failed), "500 without Retry-After"
        acked = acknowledged_aors(log.read_text(errors="replace"))
        assert len(acked) > 100
        assert serve_alive, "the registrar kept running"
        assert acked <= _stored_aors(cluster, dsn), "a 200 was sent for a binding PostgreSQL does not have"
        # Recovered without a restart: a new round of REGISTERs all get 200 and are stored.
        deadline = time.monotonic() + 30
        while serve.ctl("stats")[1].get("storage_error") and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.2)
        again = [f"after{i}" for i in range(100)]
        _register(serve, tmp_path, again)
        assert {f"{u}@example.com" for u in again} <= _stored_aors(cluster, dsn)
        serve.stop()
    finally:
        cluster.remove()


def test_both_schemes_select_postgresql_and_a_path_sqlite(short_dir):
    for dsn in ("postgresql://x@/db", "postgres://x@/db"):
        assert isinstance(store_for(dsn), PostgresStore)
    assert isinstance(store_for(str(short_dir / "location.db")), SqliteStore)


async def test_a_stale_refresh_from_another_node_does_not_overwrite_a_newer_cseq(postgres, pg_dsn):
    """Two registrars' location services on one database. B's copy of a binding is behind
    (it checked a REGISTER against CSeq 1 while A had stored 3): the database keeps 3 (RFC 3261
    §10.3 in the upsert), and B's memory is put right from the stored row. A new Call-ID wins."""
    a = LocationService(PostgresStore(pg_dsn), EventBus(time.time))
    b = LocationService(PostgresStore(pg_dsn), EventBus(time.time))
    await a.start()
    await b.start()
    stored = lambda: postgres.query(pg_dsn, "SELECT callid || ' ' || cseq || ' ' || addr FROM contacts")  # noqa: E731
    try:
        first = Contact(ruid="r-bob", aor="bob@example.com", addr="sip:bob@127.0.0.1:5071",
                        expires=time.time() + 3600, callid="c1", cseq=1)
        await a.apply(DEFAULT_TABLE, [(first, True)], [])
        await a.apply(DEFAULT_TABLE, [(first.updated(cseq=3, addr="sip:bob@127.0.0.1:5073"), False)], [])
        await b.apply(DEFAULT_TABLE, [(first.updated(cseq=2, addr="sip:bob@127.0.0.1:5072"), False)], [])
        assert stored() == ["c1 3 sip:bob@127.0.0.1:5073"]
        deadline = time.monotonic() + 10
        newest = [(3, "sip:bob@127.0.0.1:5073")]
        while [(c.cseq, c.addr) for c in b.contacts(DEFAULT_TABLE, "bob@example.com")] != newest:
            assert time.monotonic() < deadline, b.contacts(DEFAULT_TABLE, "bob@example.com")
            await asyncio.sleep(0.01)
        # The device restarted (a new Call-ID): its CSeq starts again and is stored.
        await b.apply(DEFAULT_TABLE, [(first.updated(callid="c2", cseq=1, addr="sip:bob@127.0.0.1:5074"), False)], [])
        assert stored() == ["c2 1 sip:bob@127.0.0.1:5074"]
    finally:
        await a.stop()
        await b.stop()


async def test_a_refresh_from_a_node_that_missed_an_unregister_does_not_bring_the_binding_back(postgres, pg_dsn):
    """A unregisters a binding; B refreshes it as from a copy that has not heard of that yet
    (the NOTIFY still on its way): the delete, committed first, wins. B's refresh writes
    nothing and B's memory drops the binding; a new binding through B is stored as usual."""
    a = LocationService(PostgresStore(pg_dsn), EventBus(time.time))
    b = LocationService(PostgresStore(pg_dsn), EventBus(time.time))
    await a.start()
    await b.start()
    stored = lambda: postgres.query(pg_dsn, "SELECT ruid FROM contacts ORDER BY ruid")  # noqa: E731
    try:
        bob = Contact(ruid="r-bob", aor="bob@example.com", addr="sip:bob@127.0.0.1:5071",
                      expires=time.time() + 3600, callid="c1", cseq=1)
        await a.apply(DEFAULT_TABLE, [(bob, True)], [])
        deadline = time.monotonic() + 10
        while not b.contacts(DEFAULT_TABLE, "bob@example.com"):
            assert time.monotonic() < deadline, "B never heard of bob's binding"
            await asyncio.sleep(0.01)
        await a.apply(DEFAULT_TABLE, [], [(bob, "admin")])
        await b.apply(DEFAULT_TABLE, [(bob.updated(cseq=2), False)], [])  # B's copy is stale
        assert stored() == []
        while b.contacts(DEFAULT_TABLE, "bob@example.com"):
            assert time.monotonic() < deadline, b.contacts(DEFAULT_TABLE, "bob@example.com")
            await asyncio.sleep(0.01)
        await b.apply(DEFAULT_TABLE, [(bob.updated(ruid="r-bob-2", cseq=3), True)], [])
        assert stored() == ["r-bob-2"]
    finally:
        await a.stop()
        await b.stop()


async def test_a_version_1_schema_gets_the_node_column_on_first_start(postgres, pg_dsn):
    """Schema 2 added contacts.node, 3 the nodes table: a table made by version 1 is migrated in
    place, rows kept."""
    store = PostgresStore(pg_dsn)
    await store.open()
    await store.close()
    postgres.psql("ALTER TABLE contacts DROP COLUMN node; UPDATE sipconsole_schema SET version = 1; "
                  "INSERT INTO contacts VALUES ('r1', 'location', 'old@example.com', 'sip:old@127.0.0.1', '', "
                  f"{time.time() + 3600}, NULL, 'c', 1, '[]', '', '', '', '', 0, 0, '', 0, 0)",
                  database=pg_dsn.split("?")[0].rsplit("/", 1)[1])
    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        assert [(c.ruid, c.node) for _, c in await store.load(time.time())] == [("r1", "")]
    finally:
        await store.close()
    assert postgres.query(pg_dsn, "SELECT version FROM sipconsole_schema") == ["3"]
    assert postgres.query(pg_dsn, "SELECT count(*) FROM nodes") == ["0"]  # created; `user` commands are no node


async def test_the_feed_keeps_up_when_the_table_grew_after_the_node_started(postgres, pg_dsn):
    """A node started on an empty table, whose feed fetches ran (and were planned) while it was
    small, still fetches a commit of many bindings at once quickly once the table is large: no
    per-connection plan that compares every row with every ruid (11 s for this one, past the
    command timeout: a lost feed and a full reload)."""
    a = LocationService(PostgresStore(pg_dsn), EventBus(time.time))
    b_store = PostgresStore(pg_dsn)
    b = LocationService(b_store, EventBus(time.time))
    await a.start()
    await b.start()

    async def seen_on_b(count: int, limit: float) -> float:
        started = time.monotonic()
        while b.counts()[1] < count:
            assert time.monotonic() - started < limit, f"node B holds {b.counts()[1]} of {count} after {limit} s"
            await asyncio.sleep(0.01)
        return time.monotonic() - started

    def contact(i: int) -> Contact:
        return Contact(ruid=f"r-{i}", aor=f"u{i}@example.com", addr=f"sip:u{i}@127.0.0.1:5070",
                       expires=time.time() + 3600, callid=f"c{i}", cseq=1)

    try:
        for i in range(8):  # B's feed fetch runs (and is planned) on a nearly empty table
            await a.apply(DEFAULT_TABLE, [(contact(i * 10 + j), True) for j in range(10)], [])
            await seen_on_b((i + 1) * 10, 10)
        postgres.psql(  # the table grows by 50,000 rows (written elsewhere, none in B's memory)
            "INSERT INTO contacts (ruid, tbl, aor, addr, params, expires, q, callid, cseq, path, received, socket, "
            "user_agent, methods, flags, cflags, instance, regid, modified) SELECT 'bulk-' || i, 'other', "
            "'bulk' || i || '@example.com', 'sip:x@127.0.0.1', '', 0, NULL, 'c', 1, '[]', '', '', '', '', 0, 0, '', 0, i "
            "FROM generate_series(1, 50000) AS i", database=pg_dsn.split("?")[0].rsplit("/", 1)[1])
        await a.apply(DEFAULT_TABLE, [(contact(i), True) for i in range(100, 10_100)], [])
        await seen_on_b(10_080, 5)
        assert b_store.reloads == 0
    finally:
        await a.stop()
        await b.stop()

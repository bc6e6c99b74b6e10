"""Storage faults (issue 9, item 4): the database file made read-only, the disk full, the
database locked by another process, the filesystem going read-only under the registrar.

In each case: REGISTERs that change something get 500 with Retry-After, never a 200 for
a binding that was not saved; memory keeps what the database has; the registrar keeps
answering everything else; the fault is logged, shown in ``ctl stats`` (storage_error)
and sent as a ``storage.state`` event (what the console shows); and it recovers by
itself once the fault clears, with no REGISTER needed to notice. A restart then shows
that every acknowledged binding is on disk and no refused one is.

How each fault is made (these need root; without it the test is skipped, saying why):

* read-only: ``chattr +i`` on the database and its WAL. The immutable flag refuses
  writes even to descriptors opened earlier and even to root; a ``chmod 0444`` changes
  nothing for a process that already has the file open (nor for root).
* disk full: the database on a 1 MB tmpfs, filled up by another file. A real ENOSPC from
  the kernel, unlike ``PRAGMA max_page_count`` (an SQLite quota, not a full disk).
* locked: another process holds ``BEGIN EXCLUSIVE`` on the same file.
* filesystem read-only: ext4 on a loop device, mounted errors=remount-ro, made to report
  an error (/sys/fs/ext4/DEV/trigger_fs_error), as the kernel does after an I/O error.
  Recovering needs umount, fsck and mount: the registrar must let go of its files.
* removed: the database file unlinked under the running registrar (SQLite would go on
  writing to the deleted inode).

Also here: one unstorable value must not fail the other REGISTERs of its group commit; a
UDP flood while commits are stalled stays bounded; a request cancelled while its commit
waits leaves memory and database in step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from registrar_core.control import ControlClient
from registrar_core.dblock import DatabaseHeld

from .sipclient import TcpPhone, UdpPhone, next_aor, register_bytes, server_address

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

STORAGE_LOGGER = "registrar_core.location.service"


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chattr +i, mount)")


async def register(phone: UdpPhone, aor: str, contact: str, timeout: float = 5.0, **kw):
    return await phone.send(register_bytes(aor, [contact], local=phone.local, **kw), timeout)


async def refused(phone: UdpPhone, aor: str, contact: str, srv, timeout: float = 5.0) -> None:
    """The REGISTER gets 500 with Retry-After and its binding is not there."""
    before = {c.addr for c in srv.core.fetch_contacts(aor)}
    r = await register(phone, aor, contact, timeout)
    assert r.status == 500, f"{r.status} {r.reason}: a binding acknowledged while storage fails"
    assert r.headers.get("Retry-After"), "500 without Retry-After"
    assert {c.addr for c in srv.core.fetch_contacts(aor)} == before, "memory changed without a commit"


async def wait_state(sub, ok: bool, timeout: float) -> dict:
    """The next storage.state event with this ``ok``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        event = await asyncio.wait_for(sub.get(), max(0.01, end - loop.time()))
        if event.kind == "storage.state" and event.data["ok"] is ok:
            return event.data


def stored_addrs(db: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return set(conn.execute("SELECT aor, addr FROM contacts"))


async def still_serving(srv, phone: UdpPhone) -> None:
    """Requests that need no write are answered as usual while storage fails."""
    query = await phone.send(register_bytes(next_aor("query"), None, local=phone.local, expires=None))
    assert query.status == 200
    options = register_bytes(next_aor("o"), None, local=phone.local).replace(b"REGISTER sip:", b"OPTIONS sip:", 1)
    options = options.replace(b" REGISTER\r\n", b" OPTIONS\r\n")
    assert (await phone.send(options)).status in (200, 404, 480)


async def test_read_only_database_file(make_server, short_dir, caplog):
    _need_root()
    db = short_dir / "ro" / "location.db"
    srv = await make_server(db=str(db))
    phone = await UdpPhone(server_address(srv)).open()
    sub = srv.core.subscribe()
    kept, refused_aor = next_aor("ro-kept"), next_aor("ro-new")
    assert (await register(phone, kept, "<sip:kept@10.0.0.1>")).status == 200
    files = [str(db), f"{db}-wal"]
    if _run("chattr", "+i", *files).returncode != 0:
        pytest.skip(f"chattr +i unsupported here: {_run('chattr', '+i', *files).stderr.strip()}")
    try:
        caplog.set_level(logging.WARNING)
        await refused(phone, refused_aor, "<sip:new@10.0.0.1>", srv)
        await refused(phone, kept, "<sip:second@10.0.0.1>", srv)
        event = await wait_state(sub, False, 2)
        assert srv.core.snapshot_stats()["storage_error"] == event["error"]
        assert any("storage failure" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
        await still_serving(srv, phone)
        await asyncio.sleep(1.2)  # a few probes and reopen attempts while it stays read-only
        assert srv.core.snapshot_stats()["storage_error"]
    finally:
        _run("chattr", "-i", *files)
    await wait_state(sub, True, 3)  # noticed with no REGISTER coming
    assert srv.core.snapshot_stats()["storage_error"] is None
    assert any("storage recovered" in r.getMessage() for r in caplog.records)
    assert (await register(phone, refused_aor, "<sip:new@10.0.0.1>")).status == 200
    phone.close()
    await srv.stop()
    assert stored_addrs(db) == {(kept, "sip:kept@10.0.0.1"), (refused_aor, "sip:new@10.0.0.1")}


@pytest.fixture
def small_tmpfs(short_dir: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (unmounted after the servers have stopped: request it before make_server)."""
    _need_root()
    mnt = short_dir / "small"
    mnt.mkdir()
    done = _run("mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    if _run("umount", str(mnt)).returncode != 0:
        _run("umount", "-l", str(mnt))


def fill(directory: Path) -> Path:
    """Write a file until the filesystem says ENOSPC."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 4096
        while True:
            os.write(fd, block)
    except OSError as exc:
        assert exc.errno == 28, exc
    finally:
        os.close(fd)
    return filler


async def test_disk_full(small_tmpfs, make_server, caplog):
    db = small_tmpfs / "location.db"
    srv = await make_server(db=str(db))
    phone = await UdpPhone(server_address(srv)).open()
    sub = srv.core.subscribe()
    kept = next_aor("full-kept")
    # A reader from before the first commit: no checkpoint (the background one, started after a
    # commit, may finish before the disk is full) copies past it, so the WAL is never started
    # afresh and every commit needs new space. Reused WAL blocks would take commits (durably).
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM contacts").fetchone()
    assert (await register(phone, kept, "<sip:kept@10.0.0.1>")).status == 200
    caplog.set_level(logging.WARNING)
    filler = fill(small_tmpfs)
    refused_aors = [next_aor("full-new") for _ in range(5)]
    for aor in refused_aors:
        await refused(phone, aor, "<sip:new@10.0.0.1>", srv)
    event = await wait_state(sub, False, 2)
    assert "full" in event["error"]
    assert srv.core.snapshot_stats()["storage_error"] == event["error"]
    assert any("storage failure" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    await still_serving(srv, phone)
    filler.unlink()
    await wait_state(sub, True, 3)
    assert srv.core.snapshot_stats()["storage_error"] is None
    for aor in refused_aors:
        assert (await register(phone, aor, "<sip:new@10.0.0.1>")).status == 200
    reader.close()
    phone.close()
    await srv.stop()
    stored = stored_addrs(db)
    assert stored == {(kept, "sip:kept@10.0.0.1"), *((a, "sip:new@10.0.0.1") for a in refused_aors)}


class LockHolder:
    """Another process holding BEGIN EXCLUSIVE on the database until released."""

    def __init__(self, db: Path) -> None:
        code = ("import sqlite3, sys\n"
                f"db = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
                "db.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "sys.stdin.read()\n"
                "db.execute('ROLLBACK')\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


async def test_database_locked_by_another_process(serve_process):
    """Against `sipconsole serve`: the console's view (control-socket events, ctl stats) and
    the log file, while another process holds the write lock, and after it lets go."""
    proc = serve_process.start()
    phone = await UdpPhone(("127.0.0.1", proc.port)).open()
    kept, waiting = next_aor("lock-kept"), next_aor("lock-new")
    assert (await register(phone, kept, "<sip:kept@10.0.0.1>")).status == 200
    control = await ControlClient(proc.control).connect()
    seen: list[dict] = []
    collector = asyncio.ensure_future(_collect(control, seen))
    await asyncio.sleep(0)
    await control.call("stats")  # answered after the subscription, which was sent first
    holder = LockHolder(proc.db)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        r = await register(phone, waiting, "<sip:new@10.0.0.1>")
        assert r.status == 500 and r.headers.get("Retry-After"), f"{r.status} {r.reason}"
        assert 1.5 < loop.time() - start < 4, "waits busy_timeout (2 s) for the lock, then gives up"
        state = await _next_storage_event(seen, ok=False)
        assert "locked" in state["error"]
        code, stats = proc.ctl("stats")
        assert code == 0 and "locked" in stats["storage_error"]
        code, dump = proc.ctl("dump")
        assert {a["aor"] for a in dump["aors"]} == {kept}
        assert "storage failure: database is locked" in proc.log.read_text()
    finally:
        holder.release()
    await _next_storage_event(seen, ok=True, timeout=4)
    code, stats = proc.ctl("stats")
    assert stats["storage_error"] is None
    assert "storage recovered" in proc.log.read_text()
    assert (await register(phone, waiting, "<sip:new@10.0.0.1>")).status == 200
    collector.cancel()
    await control.close()
    phone.close()
    assert proc.stop() == 0
    assert stored_addrs(proc.db) == {(kept, "sip:kept@10.0.0.1"), (waiting, "sip:new@10.0.0.1")}


async def _collect(control: ControlClient, sink: list[dict]) -> None:
    """What the console gets: every event from the control socket, in order."""
    async for batch in control.events():
        sink.extend(batch)


async def _next_storage_event(seen: list[dict], ok: bool, timeout: float = 3.0) -> dict:
    """The first storage.state event with this ``ok`` (consumed from ``seen``)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        for i, event in enumerate(seen):
            if event["kind"] == "storage.state" and event["ok"] is ok:
                del seen[: i + 1]
                return event
        await asyncio.sleep(0.02)
    raise AssertionError(f"no storage.state ok={ok} event within {timeout} s: {seen}")


@pytest.fixture
def ext4_loop(short_dir: Path) -> Iterator[tuple[Path, Path]]:
    """(image, mountpoint): ext4 in a file, loop-mounted with errors=remount-ro."""
    _need_root()
    for tool in ("mkfs.ext4", "e2fsck", "losetup", "findmnt"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    image, mnt = short_dir / "ext4.img", short_dir / "ext4"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(16 << 20)
    assert _run("mkfs.ext4", "-q", "-F", str(image)).returncode == 0
    done = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(mnt))
    if done.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {done.stderr.strip()}")
    yield image, mnt
    if _run("umount", str(mnt)).returncode != 0:
        _run("umount", "-l", str(mnt))


async def test_filesystem_goes_read_only_and_is_repaired(ext4_loop, make_server, caplog):
    """The kernel remounts the filesystem read-only after an error. The registrar answers 500,
    closes its database so the operator can unmount, check and mount it again, then opens
    it again by itself and goes on: no restart, nothing acknowledged lost."""
    image, mnt = ext4_loop
    device = Path(_run("findmnt", "-n", "-o", "SOURCE", str(mnt)).stdout.strip()).name
    trigger = Path(f"/sys/fs/ext4/{device}/trigger_fs_error")
    if not trigger.exists():
        pytest.skip(f"{trigger} not available in this kernel")
    db = mnt / "location.db"
    srv = await make_server(db=str(db))
    phone = await UdpPhone(server_address(srv)).open()
    sub = srv.core.subscribe()
    kept, later = next_aor("fs-kept"), next_aor("fs-later")
    assert (await register(phone, kept, "<sip:kept@10.0.0.1>")).status == 200
    caplog.set_level(logging.WARNING)
    trigger.write_text("sipconsole test\n")
    await refused(phone, later, "<sip:later@10.0.0.1>", srv)
    await wait_state(sub, False, 2)
    loop = asyncio.get_running_loop()
    end = loop.time() + 3
    while (umount := _run("umount", str(mnt))).returncode != 0:
        assert loop.time() < end, f"the registrar keeps the filesystem busy: {umount.stderr.strip()}"
        await refused(phone, later, "<sip:later@10.0.0.1>", srv)
        await asyncio.sleep(0.1)
    fsck = _run("e2fsck", "-f", "-y", str(image))
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
    assert _run("mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)).returncode == 0
    await wait_state(sub, True, 3)
    assert srv.core.location.store.reconnects >= 1
    assert (await register(phone, later, "<sip:later@10.0.0.1>")).status == 200
    with pytest.raises(DatabaseHeld):  # the lock, let go for the unmount, is held again
        await make_server(db=str(db))
    phone.close()
    await srv.stop()
    assert stored_addrs(db) == {(kept, "sip:kept@10.0.0.1"), (later, "sip:later@10.0.0.1")}


async def test_one_unstorable_binding_does_not_fail_the_others_in_its_group_commit(server, caplog):
    """Group commit puts many REGISTERs in one transaction. One of them carrying a value
    SQLite cannot hold (a reg-id beyond 64 bits) must fail alone: the others committed with
    it get their 200, and storage is not reported as failing."""
    caplog.set_level(logging.WARNING)
    phone = await UdpPhone(server_address(server)).open()
    good = [next_aor("batch") for _ in range(20)]
    bad = register_bytes(next_aor("batch-bad"),
                         ['<sip:bad@10.0.0.1>;+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>"'
                          ";reg-id=99999999999999999999"], local=phone.local, extra=["Supported: outbound"])
    for i, aor in enumerate(good):
        if i == 10:
            phone.send_raw(bad)
        phone.send_raw(register_bytes(aor, ["<sip:good@10.0.0.1>"], local=phone.local))
    answers = {}
    for _ in range(len(good) + 1):
        r = await phone.receive(3)
        answers[r.to.uri.aor] = r.status
    assert all(answers[a] == 200 for a in good), answers
    assert answers[next(a for a in answers if a.startswith("batch-bad"))] >= 400
    assert server.core.snapshot_stats()["storage_error"] is None
    assert not [r for r in caplog.records if "storage failure" in r.getMessage()]
    phone.close()


async def test_database_file_removed_is_not_replaced_by_an_empty_one(make_server, short_dir, caplog):
    """Someone deletes the database file under the running registrar. Writing on would go to
    an unlinked inode (lost at the next start) and opening the path again would create an
    empty database (the acknowledged bindings gone at the next start): both are refused, so
    REGISTERs get 500 until the file is put back, and then it carries on by itself."""
    db = short_dir / "gone" / "location.db"
    srv = await make_server(db=str(db))
    phone = await UdpPhone(server_address(srv)).open()
    sub = srv.core.subscribe()
    kept, later = next_aor("gone-kept"), next_aor("gone-later")
    assert (await register(phone, kept, "<sip:kept@10.0.0.1>")).status == 200
    aside = short_dir / "aside.db"
    os.link(db, aside)
    db.unlink()
    await refused(phone, later, "<sip:later@10.0.0.1>", srv)
    await wait_state(sub, False, 2)
    await asyncio.sleep(1.2)  # reopen attempts and probes meanwhile
    await refused(phone, later, "<sip:later@10.0.0.1>", srv)
    assert not db.exists(), "an empty database was created in its place"
    os.link(aside, db)
    await wait_state(sub, True, 3)
    assert (await register(phone, later, "<sip:later@10.0.0.1>")).status == 200
    phone.close()
    await srv.stop()
    assert stored_addrs(db) == {(kept, "sip:kept@10.0.0.1"), (later, "sip:later@10.0.0.1")}


async def test_udp_flood_while_commits_are_stalled_stays_bounded(server, monkeypatch):
    """While another process holds the lock, every REGISTER waits up to busy_timeout for
    its commit. A flood meanwhile must not pile up requests without bound: past
    MAX_UDP_IN_FLIGHT datagrams in progress (lowered to 300 here) new ones are dropped, as
    UDP allows (senders retransmit). When the lock goes, the registrar serves again."""
    udp = next(p for p in server.transports._udp_by_name.values())
    monkeypatch.setattr(udp, "max_in_flight", 300)
    phone = await UdpPhone(server_address(server)).open()
    holder = LockHolder(Path(server.config.db))
    peak = 0
    try:
        for i in range(1200):
            phone.send_raw(register_bytes(f"flood{i}@example.com", ["<sip:f@10.0.0.1>"], local=phone.local))
            if i % 20 == 0:
                await asyncio.sleep(0.002)
                peak = max(peak, udp.in_flight)
        peak = max(peak, udp.in_flight)
    finally:
        holder.release()
    assert 250 <= peak <= 300, f"{peak} datagrams in progress at once"
    assert udp.dropped > 0
    await asyncio.sleep(2.5)  # the stalled batch fails (500s), the probe sees the lock gone
    while True:  # drain the 500s
        try:
            await phone.receive_raw(0.2)
        except asyncio.TimeoutError:
            break
    assert (await register(phone, next_aor("after-flood"), "<sip:a@10.0.0.1>")).status == 200
    phone.close()


async def test_request_cancelled_while_its_commit_waits_leaves_memory_and_disk_in_step(server):
    """A TCP client sends a REGISTER and goes away while its commit waits (here: for a lock
    another process holds). The commit still happens: memory must then hold the binding
    too, or lookups miss what the database (and the next start) has."""
    phone = await TcpPhone(server_address(server, "tcp")).open()
    holder = LockHolder(Path(server.config.db))
    aor = next_aor("cancelled")
    try:
        phone.writer.write(register_bytes(aor, ["<sip:c@10.0.0.1;transport=tcp>"], local=phone.local, transport="TCP"))
        await phone.writer.drain()
        await asyncio.sleep(0.3)  # handled, waiting for its commit
        phone.close()
        await asyncio.sleep(0.2)  # the connection is gone; its REGISTER still waits for the commit
    finally:
        holder.release()
    for _ in range(100):
        if not server.core.location._pending:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    in_memory = {c.addr for c in server.core.fetch_contacts(aor)}
    on_disk = {addr for a, addr in stored_addrs(Path(server.config.db)) if a == aor}
    assert in_memory == on_disk == {"sip:c@10.0.0.1;transport=tcp"}
    assert not server.core.location.locks._waiters

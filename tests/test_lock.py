"""One table, one owner: a second registrar on the same SQLite file is refused before it binds
a port, with one line naming the holder; `sipconsole user` goes through the holder or refuses."""

from __future__ import annotations

import subprocess

import pytest

from console.app import embedded
from registrar_core.config import build_config
from registrar_core.dblock import DatabaseHeld, DatabaseLock

from .processes import ServeProcess, run_cli
from .sipclient import free_port


def _refusal(first: ServeProcess) -> str:
    return (f"sipconsole: error: the database {first.db} is in use by another registrar "
            f"(PID {first.proc.pid}, control socket {first.control})")


def test_a_second_serve_on_the_same_database_exits_1_naming_the_holder(serve_process, short_dir):
    first = serve_process.start()
    second = ServeProcess(short_dir, first.port, "-second")  # the same ports: refused before binding them
    second.db = first.db
    done = subprocess.run(second.command(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith(_refusal(first)) and "PostgreSQL" in line, line
    assert not second.control.exists(), "the refused registrar opened no control socket"
    code, stats = first.ctl("stats")
    assert code == 0 and stats["listening"], "the first one still serves"
    # The kernel drops the lock with its holder, even killed: no stale lock.
    first.kill()
    second.port = free_port()
    try:
        second.start()
        assert second.ctl("stats")[0] == 0
    finally:
        second.stop()  # not the fixture's: stopped here


def test_a_second_serve_on_the_same_control_socket_is_refused_before_binding(serve_process, short_dir):
    first = serve_process.start()
    second = ServeProcess(short_dir, first.port, "-other-db")  # its own database, the same ports
    second.control = first.control
    done = subprocess.run(second.command(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert line == f"sipconsole: error: another registrar already answers on {first.control}", line
    assert first.ctl("stats")[0] == 0, "the first one still answers on its socket"


async def test_the_console_on_a_database_a_registrar_holds_exits_1(serve_process, short_dir, capsys):
    first = serve_process.start()
    config = build_config({"db": str(first.db), "control": str(short_dir / "embedded.sock"),
                           "listen": [f"udp:127.0.0.1:{first.port}"], "auth": False})

    async def never(control: str, read_only: bool) -> int:
        raise AssertionError("the console must not start")

    assert await embedded(config, read_only=False, ui=never) == 1
    assert capsys.readouterr().err.strip().startswith(_refusal(first))


async def test_two_cores_in_one_process_cannot_share_a_file(make_server, short_dir):
    srv = await make_server()
    with pytest.raises(DatabaseHeld, match=f"PID [0-9]+, control socket {srv.config.control}"):
        await make_server()
    await srv.stop()
    again = await make_server()  # released at stop
    assert again.core.listening


def test_user_on_a_held_database_whose_registrar_does_not_answer_is_refused(short_dir):
    db = str(short_dir / "held.db")
    silent = str(short_dir / "silent.sock")
    lock = DatabaseLock.take(db, control=silent)  # a registrar that has not opened its socket yet
    try:
        for args in (["user", "add", "x@example.com", "--db", db, "--password-stdin"],
                     ["user", "list", "--db", db]):
            done = run_cli(*args, stdin="pw\n")
            assert done.returncode == 1, done.stderr
            line = done.stderr.strip()
            assert "\n" not in line and f"{db} is held by a registrar" in line and silent in line, line
    finally:
        lock.release()
    done = run_cli("user", "list", "--db", db)
    assert done.returncode == 0, done.stderr


def test_a_registrar_does_not_start_while_sipconsole_user_edits_the_file(serve_process):
    lock = DatabaseLock.take(str(serve_process.db), role="sipconsole user")
    try:
        done = subprocess.run(serve_process.command(), capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and "being changed by `sipconsole user`" in done.stderr.strip().splitlines()[-1]
    finally:
        lock.release()
    serve_process.start()

"""Persistence: restarts keep bindings, SIGKILL loses no acknowledged binding, schema is versioned."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import signal
import threading

from .processes import SCENARIOS, acknowledged_aors, write_injection


def test_restart_keeps_bindings(serve_process, tmp_path):
    serve_process.start()
    inf = write_injection(tmp_path / "u.csv", [(f"keep{i}", "example.com") for i in range(200)])
    sipp = subprocess.run(["sipp", f"127.0.0.1:{serve_process.port}", "-sf", str(SCENARIOS / "register.xml"),
                           "-inf", str(inf), "-m", "200", "-r", "400", "-i", "127.0.0.1", "-nostdin",
                           "-timeout", "30s", "-timeout_error"], capture_output=True, text=True, timeout=60)
    assert sipp.returncode == 0, sipp.stdout[-2000:]
    code, before = serve_process.ctl("dump")
    assert code == 0 and len(before["aors"]) == 200
    assert serve_process.stop() == 0, "clean shutdown on SIGTERM"
    serve_process.start()
    code, after = serve_process.ctl("dump")
    assert {a["aor"] for a in after["aors"]} == {a["aor"] for a in before["aors"]}
    ruids = lambda d: {c["ruid"] for a in d["aors"] for c in a["contacts"]}  # noqa: E731
    assert ruids(after) == ruids(before)


def test_sigkill_under_sipp_load_loses_no_acknowledged_binding(serve_process, tmp_path):
    serve_process.start()
    total = 3000
    inf = write_injection(tmp_path / "u.csv", [(f"k{i}", "example.com") for i in range(total)])
    log = tmp_path / "messages.log"
    sipp = subprocess.Popen(
        ["sipp", f"127.0.0.1:{serve_process.port}", "-sf", str(SCENARIOS / "register.xml"), "-inf", str(inf),
         "-m", str(total), "-r", "1500", "-l", "200", "-i", "127.0.0.1", "-nostdin", "-timeout", "4s",
         "-trace_msg", "-message_file", str(log), "-recv_timeout", "2000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    killer = threading.Timer(0.8, serve_process.kill)
    killer.start()
    try:
        sipp.wait(60)
    finally:
        killer.cancel()
        if sipp.poll() is None:
            sipp.kill()
    acked = acknowledged_aors(log.read_text(errors="replace"))
    assert 100 < len(acked) < total, f"the kill must land mid-load ({len(acked)} acked)"
    serve_process.start()
    code, dump = serve_process.ctl("dump")
    stored = {a["aor"] for a in dump["aors"]}
    assert acked <= stored, f"lost {len(acked - stored)} acknowledged bindings"
    with sqlite3.connect(serve_process.db) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_newer_schema_refused_with_one_line(serve_process):
    serve_process.db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(serve_process.db) as db:
        db.execute("PRAGMA user_version=99")
    done = subprocess.run(serve_process.command(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("sipconsole: error:") and "schema 99" in lines[-1]
    assert "Traceback" not in done.stderr


def test_bad_options_are_one_line_errors(serve_process):
    cases = [
        (["--listen", "udp:nohost"], "bad listen address"),
        (["--min-expires", "-1"], "min-expires must not be negative"),
        (["--min-expires", "abc"], "invalid int value"),
        (["--config", "/nonexistent/x.toml"], "does not exist"),
    ]
    for extra, expected in cases:
        cmd = [sys.executable, "-m", "sipconsole", "serve", *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, (extra, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr, (extra, done.stderr)


def test_serve_stops_cleanly_on_sigint(serve_process):
    serve_process.start()
    serve_process.proc.send_signal(signal.SIGINT)
    assert serve_process.proc.wait(10) == 0
    assert not serve_process.control.exists(), "control socket removed on the way out"

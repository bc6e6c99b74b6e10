"""`sipconsole ctl` and the control socket against a running `sipconsole serve`, with sipp phones.

sipp registers the devices and places the calls; `ctl` (a real subprocess) talks JSON-RPC to
the registrar's Unix socket; REGISTER queries (no Contact) show what the phones would see.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from registrar_core import ctl, exit_codes
from sipconsole.cli import build_parser
from registrar_core.control import ControlClient, RpcError
from registrar_core.events import expanded

from .processes import sipp_ok, sipp_register, write_bindings
from .sipclient import query

ULC_ATTRIBUTES = {"aor", "domain", "aorhash", "addr", "path", "received", "expires", "callid", "q",
                  "cseq", "flags", "cflags", "user_agent", "socket", "modified", "methods", "ruid",
                  "regid", "instance"}
COMMANDS = ("dump", "show", "unregister", "policy", "stats", "nodes")


def ctl_raw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipconsole", "ctl", *args],
                          capture_output=True, text=True, timeout=30, env=env)


def ctl_popen(control: Path, *args: str) -> subprocess.Popen[bytes]:
    """`sipconsole ctl` left running, its output in a pipe that nobody reads yet."""
    return subprocess.Popen([sys.executable, "-m", "sipconsole", "ctl", "--control", str(control), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


# -- unregister through ctl, seen by the phones -------------------------------------------------

async def test_sipp_phones_then_ctl_unregister_one_contact_and_a_whole_aor(serve_process, tmp_path):
    serve = serve_process.start()
    sipp_register(serve, tmp_path, [("alice", "example.com", "desk", "0.5"),
                                    ("alice", "example.com", "mobile", "1.0"),
                                    ("bob", "example.com", "desk", "1.0")])
    code, shown = serve.ctl("show", "alice@example.com")
    assert code == 0 and shown["count"] == 2
    desk = next(c for c in shown["contacts"] if c["addr"].startswith("sip:desk@"))
    mobile = next(c for c in shown["contacts"] if c["addr"].startswith("sip:mobile@"))
    assert sorted(await query(serve, "alice@example.com")) == sorted([desk["addr"], mobile["addr"]])

    # One contact, by ruid (the AOR spelled as a SIP URI this time).
    code, out = serve.ctl("unregister", "sip:alice@example.com", "--ruid", desk["ruid"])
    assert code == 0, out
    assert [c["ruid"] for c in out["removed"]] == [desk["ruid"]]
    assert await query(serve, "alice@example.com") == [mobile["addr"]]
    code, shown = serve.ctl("show", "sip:alice@example.com")
    assert code == 0 and [c["ruid"] for c in shown["contacts"]] == [mobile["ruid"]]

    # A whole AOR: sipp's own REGISTER query finds no binding left.
    code, out = serve.ctl("unregister", "bob@example.com")
    assert code == 0 and len(out["removed"]) == 1 and out["removed"][0]["aor"] == "bob@example.com"
    assert sipp_ok(serve, tmp_path, "query_empty.xml", ("bob", "example.com"))
    assert not sipp_ok(serve, tmp_path, "query_empty.xml", ("alice", "example.com")), \
        "query_empty.xml must fail while a binding is left"
    code, dump = serve.ctl("dump")
    assert code == 0
    assert [(a["aor"], [c["ruid"] for c in a["contacts"]]) for a in dump["aors"]] == \
        [("alice@example.com", [mobile["ruid"]])]


async def test_unknown_aor_or_ruid_is_exit_1_with_one_line(serve_process, tmp_path):
    serve = serve_process.start()
    sipp_register(serve, tmp_path, [("carol", "example.com", "desk", "1.0")])
    code, err = serve.ctl("unregister", "nobody@example.com")
    assert code == 1
    assert "nobody@example.com" in one_line(err) and "not" in err
    code, err = serve.ctl("unregister", "carol@example.com", "--ruid", "uloc-0000000000000000")
    assert code == 1
    assert "uloc-0000000000000000" in one_line(err)
    code, err = serve.ctl("show", "sip:nobody@example.com")
    assert code == 1 and "nobody@example.com" in one_line(err)
    # Nothing was removed by the failed attempts.
    code, shown = serve.ctl("show", "carol@example.com")
    assert code == 0 and shown["count"] == 1


# -- exit codes ---------------------------------------------------------------------------------

def test_no_registrar_is_exit_3_with_one_line(serve_process, tmp_path):
    missing = tmp_path / "nothing-here.sock"
    for args in (["stats"], ["dump"], ["show", "alice@example.com"], ["policy", "caller-check", "on"]):
        done = ctl_raw("--control", str(missing), *args)
        assert done.returncode == 3, (args, done.stderr)
        assert "no registrar" in one_line(done.stderr) and str(missing) in done.stderr
        assert done.stdout == ""
    # A stale socket file left by a registrar that died.
    serve = serve_process.start()
    serve.kill()
    assert serve.control.exists()
    code, err = serve.ctl("dump")
    assert code == 3 and "no registrar" in one_line(err)
    # Not a socket at all.
    plain = tmp_path / "plain-file"
    plain.write_text("")
    done = ctl_raw("--control", str(plain), "stats")
    assert done.returncode == 3 and "no registrar" in one_line(done.stderr)


def test_bad_usage_is_exit_2_with_one_line(tmp_path):
    # No registrar is running: usage errors are found before the socket is tried.
    control = str(tmp_path / "absent.sock")
    for args in ([], ["frobnicate"], ["show"], ["unregister"], ["policy"],
                 ["policy", "single-contact"], ["policy", "single-contact", "maybe"],
                 ["policy", "single-contact", "inherit"], ["policy", "caller-check", "inherit"],
                 ["policy", "caller-check", "on", "--aor", "alice@example.com"],
                 ["policy", "show", "on"], ["show", "not an aor"], ["unregister", "<sip:x@y>"],
                 ["policy", "single-contact", "on", "--aor", "a b@example.com"],
                 ["policy", "max-contacts"], ["policy", "max-contacts", "-1"], ["policy", "max-contacts", "two"],
                 ["policy", "max-contacts", "2", "--dry-run", "--trim"], ["policy", "caller-check", "on", "--trim"],
                 ["dump", "--bogus"]):
        done = ctl_raw("--control", control, *args)
        assert done.returncode == 2, (args, done.returncode, done.stderr)
        assert "error" in one_line(done.stderr), args
        assert done.stdout == ""


def test_help_documents_every_command():
    done = ctl_raw("--help")
    assert done.returncode == 0
    text = done.stdout
    for word in (*COMMANDS, "single-contact", "caller-check", "--ruid", "--aor", "--table", "--json",
                 "--control", "inherit", "exit status"):
        assert word in text, word
    for cmd in COMMANDS:
        assert f"\n  {cmd} " in text, f"{cmd} has no line of its own in --help"
    assert "--ndjson" in text
    assert " ".join(exit_codes.HELP.split()) in " ".join(text.split()), "the exit codes are not stated"
    top = subprocess.run([sys.executable, "-m", "sipconsole", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert "ctl" in top.stdout


# -- output shapes ------------------------------------------------------------------------------

def test_nodes_of_a_registrar_alone_on_its_sqlite_file_is_itself(serve_process):
    """`ctl nodes` with SQLite: one registrar, up, with its listen addresses (several nodes on
    PostgreSQL: tests/test_cluster.py)."""
    serve_process.start("--node-name", "solo")
    code, listed = serve_process.ctl("nodes")
    assert code == 0
    (node,) = listed["nodes"]
    port = serve_process.port
    assert (node["node"], node["up"], node["addresses"]) == (
        "solo", True, [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"])
    code, text = serve_process.ctl("nodes", json_output=False)
    assert code == 0
    header, row = text.splitlines()
    assert header.split()[:3] == ["NODE", "STATE", "ADDRESSES"] and row.split()[:2] == ["solo", "up"]


async def test_json_output_shapes(serve_process, tmp_path):
    serve = serve_process.start()
    sipp_register(serve, tmp_path, [("dave", "example.com", "desk", "0.5"),
                                    ("dave", "example.com", "mobile", "1.0"),
                                    ("erin", "example.com", "desk", "1.0")])
    code, dump = serve.ctl("dump")
    assert code == 0
    assert set(dump) == {"table", "aors"} and dump["table"] == "location"
    assert sorted(a["aor"] for a in dump["aors"]) == ["dave@example.com", "erin@example.com"]
    for entry in dump["aors"]:
        assert set(entry) == {"aor", "contacts"}
        for c in entry["contacts"]:
            assert ULC_ATTRIBUTES <= set(c), ULC_ATTRIBUTES - set(c)
            assert c["aor"] == entry["aor"] and c["domain"] == "example.com"
            assert isinstance(c["expires"], int) and 3500 < c["expires"] <= 3600, "expires is seconds left"
            assert c["user_agent"] in ("sipp-desk", "sipp-mobile")
            assert c["received"].startswith("udp:127.0.0.1:")
            assert c["socket"] == f"udp:127.0.0.1:{serve.port}"
    code, other = serve.ctl("dump", "--table", "elsewhere")
    assert code == 0 and other == {"table": "elsewhere", "aors": []}
    for spelling in ("dave@example.com", "sip:dave@example.com"):
        code, shown = serve.ctl("show", spelling)
        assert code == 0
        assert set(shown) == {"aor", "count", "contacts"}
        assert shown["aor"] == "dave@example.com" and shown["count"] == 2 == len(shown["contacts"])
        assert {c["q"] for c in shown["contacts"]} == {0.5, 1.0}
        assert all(ULC_ATTRIBUTES <= set(c) for c in shown["contacts"])
    code, policy = serve.ctl("policy", "show")
    assert code == 0 and policy == {"single_contact": False, "single_contact_overrides": {},
                                    "max_contacts": 0, "max_contacts_overrides": {}, "caller_check": False}
    code, stats = serve.ctl("stats")
    assert code == 0
    assert stats["registered_users"] == 2 and stats["location_contacts"] == 3
    assert stats["accepted_regs"] == 3


async def test_human_readable_output(serve_process, tmp_path):
    serve = serve_process.start()
    sipp_register(serve, tmp_path, [("frank", "example.com", "desk", "0.5")])
    code, text = serve.ctl("dump", json_output=False)
    assert code == 0
    header, row, summary = text.strip().splitlines()
    assert header.split()[:4] == ["AOR", "CONTACT", "EXPIRES", "Q"]
    assert row.split()[0] == "frank@example.com" and "sip:desk@127.0.0.1" in row and "sipp-desk" in row
    assert summary == "table location: 1 AORs, 1 contacts"
    code, text = serve.ctl("show", "frank@example.com", json_output=False)
    assert code == 0
    assert text.startswith("AOR: frank@example.com  (1 contacts)")
    for attr in ("addr", "ruid", "received", "user_agent", "expires", "callid", "aorhash"):
        assert f" {attr}: " in text, attr
    code, text = serve.ctl("policy", "caller-check", "on", json_output=False)
    assert code == 0 and "caller-check:   on" in text
    code, text = serve.ctl("stats", json_output=False)
    assert code == 0 and "accepted_regs" in text and "registered_users" in text
    code, shown = serve.ctl("show", "frank@example.com")
    code, text = serve.ctl("unregister", "frank@example.com", "--ruid", shown["contacts"][0]["ruid"],
                           json_output=False)
    assert code == 0 and text.strip() == \
        f"removed frank@example.com {shown['contacts'][0]['addr']} (ruid {shown['contacts'][0]['ruid']})"


# -- caller check through ctl and sipp ------------------------------------------------------------

def test_caller_check_toggled_by_ctl_403_vs_302_with_sipp(serve_process, tmp_path):
    serve = serve_process.start()
    sipp_register(serve, tmp_path, [("grace", "example.com", "desk", "1.0")])
    call = ("grace", "example.com", "mallory")  # callee user, domain, caller user
    # Off (the default): nobody is asked to register first.
    assert not sipp_ok(serve, tmp_path, "invite_unregistered.xml", call)
    code, policy = serve.ctl("policy", "caller-check", "on")
    assert code == 0 and policy["caller_check"] is True
    assert sipp_ok(serve, tmp_path, "invite_unregistered.xml", call), "expected 403 Please register first"
    assert sipp_ok(serve, tmp_path, "register_invite.xml", ("grace", "example.com", "heidi")), \
        "a registered device must be redirected"
    code, policy = serve.ctl("policy", "caller-check", "off")
    assert code == 0 and policy["caller_check"] is False
    assert not sipp_ok(serve, tmp_path, "invite_unregistered.xml", call)


# -- the control socket itself ----------------------------------------------------------------

async def test_event_stream_over_the_control_socket(serve_process, tmp_path):
    serve = serve_process.start()
    client = await ControlClient(serve.control).connect()
    seen: list[dict] = []
    removed = asyncio.Event()

    async def collect():
        async for batch in client.events():
            seen.extend(batch)
            if any(e["kind"] == "contact.removed" for e in seen):
                removed.set()

    # Subscribed before anything happens (events() subscribes again: that is idempotent).
    assert await client.call("subscribe") == {"subscribed": True}
    task = asyncio.create_task(collect())
    try:
        await asyncio.to_thread(sipp_register, serve, tmp_path, [("ivan", "example.com", "desk", "1.0")])
        code, out = await asyncio.to_thread(serve.ctl, "unregister", "ivan@example.com")
        assert code == 0
        await asyncio.wait_for(removed.wait(), 5)
    finally:
        task.cancel()
        await client.close()
    ruid = out["removed"][0]["ruid"]
    added = [e for e in seen if e["kind"] == "contact.added"]
    gone = [e for e in seen if e["kind"] == "contact.removed"]
    assert [(e["aor"], e["ruid"]) for e in added] == [("ivan@example.com", ruid)]
    assert added[0]["contact"]["user_agent"] == "sipp-desk"
    assert [(e["aor"], e["ruid"], e["reason"]) for e in gone] == [("ivan@example.com", ruid, "admin")]
    assert any(e["kind"] == "request.handled" and e["method"] == "REGISTER" for e in seen)


async def test_a_client_that_falls_behind_gets_events_lost_and_the_newest(serve_process, tmp_path):
    """ControlClient queues each frame at once; a reader that does not take them meanwhile gets
    one events.lost (reload your view) and at most ``max_queued`` events, not an unbounded backlog."""
    serve = serve_process.start()
    client = await ControlClient(serve.control).connect()
    client.max_queued = 4
    stream = client.events()
    try:
        assert await client.call("subscribe") == {"subscribed": True}
        devices = [(f"lag{n}", "example.com", "desk", "1.0") for n in range(10)]
        await asyncio.to_thread(sipp_register, serve, tmp_path, devices)  # 10 REGISTERs: 20+ events
        await asyncio.sleep(0.5)  # the registrar's last frames (50 ms apart) arrive meanwhile
        batch = await asyncio.wait_for(stream.__anext__(), 5)
    finally:
        await stream.aclose()
        await client.close()
    assert batch[0]["kind"] == "events.lost"
    assert 1 < len(batch) <= 4
    assert all(e["kind"] != "events.lost" for e in batch[1:])


async def test_a_console_gets_compact_events_in_one_line_per_frame(serve_process, tmp_path):
    """subscribe with compact (what the console asks for): an added contact carries only what the
    AOR table shows (an array), the removal the whole contact; the events come as one ``events`` line."""
    serve = serve_process.start()
    reader, writer = await asyncio.open_unix_connection(str(serve.control))
    writer.write(b'{"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"compact": "yes"}}\n'
                 b'{"jsonrpc": "2.0", "id": 2, "method": "subscribe", "params": {"compact": true}}\n')
    await writer.drain()
    refused = json.loads(await asyncio.wait_for(reader.readline(), 3))
    assert refused["error"]["message"] == "compact must be true or false"
    assert json.loads(await asyncio.wait_for(reader.readline(), 3))["result"] == {"subscribed": True}
    await asyncio.to_thread(sipp_register, serve, tmp_path, [("judy", "example.com", "desk", "1.0")])
    assert (await asyncio.to_thread(serve.ctl, "unregister", "judy@example.com"))[0] == 0
    seen: list = []
    while not any(isinstance(e, dict) and e["kind"] == "contact.removed" for e in seen):
        line = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert line["method"] == "events" and line["params"]["events"], line
        seen += line["params"]["events"]
    writer.close()
    # An added contact and a request are arrays on the wire (events.expanded names the fields).
    added = next(e for e in seen if isinstance(e, list) and e[0] == "contact.added")
    assert added[1:3] == ["location", "judy@example.com"] and added[6] == "sipp-desk"
    assert expanded(added)["contact"] == dict(zip(("aor", "ruid", "expires_at", "modified", "user_agent"), added[2:]))
    handled = next(e for e in seen if isinstance(e, list) and e[0] == "request.handled")
    assert expanded(handled)["method"] == "REGISTER" and expanded(handled)["status"] == 200
    removed = next(e for e in seen if isinstance(e, dict) and e["kind"] == "contact.removed")
    assert removed["contact"]["addr"].startswith("sip:desk@") and removed["reason"] == "admin"


async def _rpc(path: Path, *lines: bytes, replies: int) -> list[dict]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        for line in lines:
            writer.write(line + b"\n")
        await writer.drain()
        return [json.loads(await asyncio.wait_for(reader.readline(), 3)) for _ in range(replies)]
    finally:
        writer.close()


async def test_control_socket_is_private_and_speaks_json_rpc(server):
    path = Path(server.config.control)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    replies = await _rpc(
        path,
        b"this is not json",
        b'{"jsonrpc": "2.0", "id": 1, "method": "no.such.method"}',
        b'{"jsonrpc": "2.0", "id": 2, "method": "show", "params": {"aor": "x@example.com", "bogus": 1}}',
        b'{"jsonrpc": "2.0", "method": "stats"}',  # a notification: no reply
        b'{"jsonrpc": "2.0", "id": 3, "method": "show", "params": {"aor": "nobody@example.com"}}',
        b'{"jsonrpc": "2.0", "id": 4, "method": "show", "params": {"aor": "not an aor"}}',
        b'{"jsonrpc": "2.0", "id": 5, "method": "show", "params": {"aor": 42}}',
        b'{"jsonrpc": "2.0", "id": 6, "method": "policy.set", "params": {"name": "caller_check", "value": "off"}}',
        b'{"id": 7, "method": "stats"}',
        b'{"jsonrpc": "2.0", "id": 8, "method": "policy.get"}',
        replies=9)
    codes = [(r.get("id"), r.get("error", {}).get("code")) for r in replies]
    assert codes == [(None, -32700), (1, -32601), (2, -32602), (3, -32004), (4, -32602), (5, -32602),
                     (6, -32602), (7, -32600), (8, None)]
    assert replies[-1]["result"]["caller_check"] is False
    assert server.core.caller_check is False, '"off" as a string must not switch the check on'
    assert all(r["jsonrpc"] == "2.0" for r in replies)
    # The connection survived every bad request and still answers.
    client = await ControlClient(path).connect()
    try:
        assert (await client.call("stats"))["registered_users"] == 0
    finally:
        await client.close()


def test_a_registrar_that_never_answers_is_exit_3_not_a_hang(tmp_path, monkeypatch, capsys):
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX) as mute:  # accepts connections, never answers
        mute.bind(str(path))
        mute.listen(4)
        monkeypatch.setattr(ctl, "TIMEOUT", 0.5)
        args = build_parser().parse_args(["ctl", "--control", str(path), "stats"])
        codes: list[int] = []
        worker = threading.Thread(target=lambda: codes.append(ctl.run_ctl(args)), daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "ctl hangs on a registrar that does not answer"
    assert codes == [3]
    err = capsys.readouterr().err
    assert "no answer from the registrar" in one_line(err) and str(path) in err


async def test_control_client_fails_fast_once_the_registrar_is_gone(server):
    client = await ControlClient(server.config.control).connect()
    try:
        assert (await client.call("policy.get"))["caller_check"] is False
        await server.control.stop()
        await asyncio.sleep(0.1)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(client.call("stats"), 2)
    finally:
        await client.close()


async def test_subscriber_methods_used_by_sipconsole_user(server):
    client = await ControlClient(server.config.control).connect()
    sub = server.core.subscribe()
    try:
        assert await client.call("user.add", user="judy@example.com", password="pw1") == {"user": "judy@example.com"}
        assert "judy@example.com" in server.core.subscribers.list()
        assert (await client.call("user.list"))["users"] == ["judy@example.com"]
        before = server.core.subscribers.ha1("judy", "example.com", "SHA-256")
        assert await client.call("user.passwd", user="judy@example.com", password="pw2") == {"user": "judy@example.com"}
        assert server.core.subscribers.ha1("judy", "example.com", "SHA-256") != before
        with pytest.raises(RpcError) as dup:
            await client.call("user.add", user="judy@example.com", password="pw3")
        assert dup.value.code == -32602
        assert await client.call("user.remove", user="judy@example.com") == {"user": "judy@example.com"}
        for method, params in (("user.remove", {}), ("user.passwd", {"password": "x"})):
            with pytest.raises(RpcError) as missing:
                await client.call(method, user="judy@example.com", **params)
            assert missing.value.code == -32004 and "judy@example.com" in missing.value.message
        assert (await client.call("user.list"))["users"] == []
        changes = [(e.data["action"], e.data["user"]) for e in sub.drain() if e.kind == "subscriber.changed"]
        assert changes == [("added", "judy@example.com"), ("password", "judy@example.com"),
                           ("removed", "judy@example.com")]
        for user in ("zed@example.com", "amy@example.org", "amy@example.com"):
            await client.call("user.add", user=user, password="pw")
        chunks: list[list[str]] = []
        assert await client.call_streamed("user.list", lambda p: chunks.append(p["users"])) == {"count": 3}
        assert chunks == [["amy@example.com", "zed@example.com", "amy@example.org"]]  # by domain, then user
        assert (await client.call("user.list"))["users"] == chunks[0]
    finally:
        sub.close()
        await client.close()


# -- dump: sorted, streamed, and what happens when a connection breaks in the middle ---------------

async def test_dump_is_sorted_by_aor_then_contact_in_every_form(serve_process, tmp_path):
    serve = serve_process.start()
    # Registered out of order, and an AOR's devices with the later address first.
    sipp_register(serve, tmp_path, [("zoe", "example.com", "desk", "1.0"), ("mia", "example.com", "zulu", "0.5"),
                                    ("adam", "example.com", "desk", "1.0"), ("mia", "example.com", "alpha", "1.0"),
                                    ("mia", "example.org", "desk", "1.0")])
    want = ["adam@example.com", "mia@example.com", "mia@example.org", "zoe@example.com"]
    code, dump = serve.ctl("dump")
    assert code == 0 and [a["aor"] for a in dump["aors"]] == want
    mia = dump["aors"][1]["contacts"]
    assert [c["addr"].split("@")[0] for c in mia] == ["sip:alpha", "sip:zulu"]
    code, text = serve.ctl("dump", json_output=False)
    assert code == 0
    lines = text.strip().splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == [want[0], want[1], want[1], want[2], want[3]]
    assert [line.split()[1].split("@")[0] for line in lines[2:4]] == ["sip:alpha", "sip:zulu"]
    assert lines[-1] == "table location: 4 AORs, 5 contacts"
    code, text = serve.ctl("dump", "--ndjson", json_output=False)
    assert code == 0
    entries = [json.loads(line) for line in text.splitlines()]
    assert [e["aor"] for e in entries] == want
    assert [c["ruid"] for c in entries[1]["contacts"]] == [c["ruid"] for c in mia]
    code, text = serve.ctl("dump", "--ndjson", "--table", "elsewhere", json_output=False)
    assert code == 0 and text == ""


def test_dump_streams_in_chunks_and_stays_one_response_for_old_clients(serve_process):
    aors = write_bindings(serve_process.db, 700)  # three chunks of the server's 256
    serve = serve_process.start()

    async def exchange() -> None:
        reader, writer = await asyncio.open_unix_connection(str(serve.control), limit=1 << 24)
        try:
            writer.write(b'{"jsonrpc": "2.0", "id": 1, "method": "dump", "params": {"stream": true}}\n')
            partials = []
            while "result" not in (message := json.loads(await asyncio.wait_for(reader.readline(), 10))):
                assert message["id"] == 1
                partials.append(message["partial"]["aors"])
            assert message == {"jsonrpc": "2.0", "id": 1, "result": {"table": "location", "count": 700}}
            assert [len(p) for p in partials] == [256, 256, 188]
            assert [e["aor"] for p in partials for e in p] == sorted(aors)
            # Without stream: one response line, the same AORs (written in chunks all the same).
            writer.write(b'{"jsonrpc": "2.0", "id": 2, "method": "dump"}\n')
            whole = json.loads(await asyncio.wait_for(reader.readline(), 10))
            assert whole["id"] == 2 and set(whole["result"]) == {"table", "aors"}
            assert [e["aor"] for e in whole["result"]["aors"]] == sorted(aors)
            writer.write(b'{"jsonrpc": "2.0", "id": 3, "method": "dump", "params": {"stream": "yes"}}\n')
            assert json.loads(await asyncio.wait_for(reader.readline(), 10))["error"]["code"] == -32602
            # The console's pages (offset, limit) are as they were: table order, total and next.
            writer.write(b'{"jsonrpc": "2.0", "id": 4, "method": "dump", "params": {"offset": 650, "limit": 100}}\n')
            page = json.loads(await asyncio.wait_for(reader.readline(), 10))["result"]
            assert (page["total"], page["next"], len(page["aors"])) == (700, None, 50)
            # A connection that subscribed to events gets a dump's one line whole, never cut by an event.
            writer.write(b'{"jsonrpc": "2.0", "id": 5, "method": "subscribe"}\n'
                         b'{"jsonrpc": "2.0", "id": 6, "method": "dump"}\n')
            got: dict = {}
            while 6 not in got:
                message = json.loads(await asyncio.wait_for(reader.readline(), 10))
                got[message.get("id")] = message
            assert len(got[6]["result"]["aors"]) == 700
        finally:
            writer.close()

    asyncio.run(exchange())


def test_a_reply_cut_short_is_exit_4_and_the_registrar_logs_why(serve_process):
    write_bindings(serve_process.db, 30_000)  # about 18 MB of JSON: more than the pipes hold
    serve = serve_process.start(timeout=60)

    # The client goes away mid-reply: the registrar says why it closed the connection.
    reader = ctl_popen(serve.control, "--json", "dump")
    assert reader.stdout is not None and reader.stdout.read(4096)
    reader.kill()
    reader.wait()
    wait_for(lambda: "control connection closed: the client went away while its reply was written"
             in serve.log.read_text(), what="the registrar's log line")

    # The registrar goes away mid-reply: not "no registrar answers" (3) but 4, with its own message.
    reader = ctl_popen(serve.control, "--json", "dump")
    assert reader.stdout is not None and reader.stdout.read(4096)
    serve.kill()
    reader.stdout.read()  # let ctl print what it had
    _, err = reader.communicate(timeout=30)
    assert reader.returncode == exit_codes.DROPPED == 4
    assert "reply was complete" in one_line(err.decode())
    assert "no registrar" not in err.decode()


def test_a_reply_line_too_long_for_the_client_is_dropped_not_no_registrar(serve_process, monkeypatch):
    write_bindings(serve_process.db, 1000)  # about 600 kB as one line, 150 kB per chunk
    serve = serve_process.start()
    monkeypatch.setattr("registrar_core.control.READ_LIMIT", 256 * 1024)

    async def whole_dump() -> None:
        client = await ControlClient(serve.control).connect()
        try:
            with pytest.raises(ctl.ReplyDropped, match="reply line over"):
                await asyncio.wait_for(client.call("dump"), 10)
            assert not client.connected
            await client.close()
            # Asked for in chunks, the same table comes through the same small limit.
            client = await ControlClient(serve.control).connect()
            chunks: list[int] = []
            result = await client.call_streamed("dump", lambda p: chunks.append(len(p["aors"])))
            assert result == {"table": "location", "count": 1000} and sum(chunks) == 1000
        finally:
            await client.close()

    asyncio.run(whole_dump())


def test_dump_into_a_closed_pipe_ends_quietly(serve_process):
    write_bindings(serve_process.db, 3000)  # ~1 MB of rows: more than the pipe holds
    serve = serve_process.start()
    reader = ctl_popen(serve.control, "dump")  # as in `sipconsole ctl dump | head -1`
    assert reader.stdout is not None and reader.stdout.readline().startswith(b"AOR ")
    reader.stdout.close()
    assert reader.wait(30) == exit_codes.FAILED
    assert reader.stderr is not None and reader.stderr.read() == b"", "no traceback, no message"


async def test_a_client_that_stops_reading_is_dropped_and_logged(make_server, short_dir, monkeypatch, caplog):
    await asyncio.to_thread(write_bindings, short_dir / "location.db", 20_000)  # ~12 MB: more than buffers hold
    srv = await make_server()
    monkeypatch.setattr("registrar_core.control.WRITE_TIMEOUT", 0.5)
    caplog.set_level(logging.INFO, logger="registrar_core.control")
    reader, writer = await asyncio.open_unix_connection(srv.config.control, limit=1 << 18)  # reads pause at 512 kB
    try:
        writer.write(b'{"jsonrpc": "2.0", "id": 1, "method": "dump", "params": {"stream": true}}\n')
        await reader.readline()  # the reply has started; then nothing more is read
        deadline = time.monotonic() + 30
        while "read nothing of its reply for 0.5 s" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.1)
        # Its reply was abandoned, and the registrar answers others meanwhile.
        client = await ControlClient(srv.config.control).connect()
        try:
            assert (await asyncio.wait_for(client.call("stats"), 10))["registered_users"] == 20_000
        finally:
            await client.close()
    finally:
        writer.close()


# -- the plain forms ------------------------------------------------------------------------------

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")


async def test_show_prints_iso_times_and_json_keeps_the_numbers(serve_process, tmp_path):
    serve = serve_process.start()
    sipp_register(serve, tmp_path, [("olga", "example.com", "desk", "1.0")])
    code, shown = serve.ctl("show", "olga@example.com")
    assert code == 0
    contact = shown["contacts"][0]
    assert isinstance(contact["expires_at"], float) and isinstance(contact["modified"], float)
    code, text = serve.ctl("show", "olga@example.com", json_output=False)
    assert code == 0
    pairs = (line.split(": ", 1) for line in text.splitlines()[2:] if ": " in line)
    fields = {key.strip(): value for key, value in pairs}
    for key in ("expires_at", "modified"):
        assert ISO_UTC.match(fields[key]), fields[key]
        assert fields[key] == datetime.fromtimestamp(contact[key], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_stats_renders_nested_values_as_dotted_rows(serve_process, tmp_path):
    serve = serve_process.start()
    sipp_register(serve, tmp_path, [("pia", "example.com", "desk", "1.0")])
    code, stats = serve.ctl("stats")
    assert code == 0 and stats["requests"]["REGISTER"] >= 1
    code, text = serve.ctl("stats", json_output=False)
    assert code == 0
    rows = dict(line.split(None, 1) for line in text.splitlines()[1:])
    assert rows["requests.REGISTER"] == str(stats["requests"]["REGISTER"])
    assert rows["responses.200"] == str(stats["responses"]["200"])
    assert rows["security"] == "none" and rows["storage_error"] == "none"
    blank = [line for line in text.splitlines() if len(line.split()) < 2]
    assert not blank, f"rows without a value: {blank}"


def test_no_registrar_without_xdg_runtime_dir_names_the_path_and_the_fix(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    default = f"/tmp/sipconsole-{os.getuid()}/control.sock"
    if ControlAnswers(default):
        pytest.skip(f"a registrar answers on {default} on this machine")
    done = ctl_raw("stats", env=env)
    assert done.returncode == exit_codes.NO_REGISTRAR
    line = one_line(done.stderr)
    assert default in line and "XDG_RUNTIME_DIR is unset" in line and "--control PATH" in line
    # With the variable set, or --control given, there is nothing to hint at.
    done = ctl_raw("--control", str(tmp_path / "absent.sock"), "stats", env=env)
    assert done.returncode == 3 and "XDG_RUNTIME_DIR" not in done.stderr


def ControlAnswers(path: str) -> bool:  # noqa: N802
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True

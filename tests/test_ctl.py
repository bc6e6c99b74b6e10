"""`sipconsole ctl` and the control socket against a running `sipconsole serve`, with sipp phones.

sipp registers the devices and places the calls; `ctl` (a real subprocess) talks JSON-RPC to
the registrar's Unix socket; REGISTER queries (no Contact) show what the phones would see.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from registrar_core import ctl
from registrar_core.cli import build_parser
from registrar_core.control import ControlClient, RpcError

from .processes import run_sipp, write_injection
from .sipclient import UdpPhone, register_bytes

ULC_ATTRIBUTES = {"aor", "domain", "aorhash", "addr", "path", "received", "expires", "callid", "q",
                  "cseq", "flags", "cflags", "user_agent", "socket", "modified", "methods", "ruid",
                  "regid", "instance"}
COMMANDS = ("dump", "show", "unregister", "policy", "stats")


def sipp_register(serve, tmp_path: Path, rows: list[tuple[str, str, str, str]], name: str = "devices.csv") -> None:
    """sipp registers one device per row: (user, domain, device, q), in order."""
    inf = write_injection(tmp_path / name, rows)
    res = run_sipp("register_devices.xml", serve.port, "-inf", str(inf), "-l", "1", calls=len(rows))
    assert res.successful == len(rows), res.output[-3000:]


def sipp_ok(serve, tmp_path: Path, scenario: str, row: tuple[str, ...]) -> bool:
    inf = write_injection(tmp_path / f"{scenario}.csv", [row])
    res = run_sipp(scenario, serve.port, "-inf", str(inf), timeout=10)
    return res.successful == 1 and res.failed == 0


async def query(serve, aor: str) -> list[str]:
    """A REGISTER without Contact: the bindings a phone is told about."""
    phone = await UdpPhone(("127.0.0.1", serve.port)).open()
    try:
        r = await phone.send(register_bytes(aor, None, local=phone.local, expires=None))
    finally:
        phone.close()
    assert r.status == 200
    return [str(c.uri) for c in r.contacts]


def ctl_raw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "registrar_core.cli", "ctl", *args],
                          capture_output=True, text=True, timeout=30)


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
    for code in ("0 ok", "1 not found", "2 bad usage", "3 no registrar"):
        assert code in text, code
    top = subprocess.run([sys.executable, "-m", "registrar_core.cli", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert "ctl" in top.stdout


# -- output shapes ------------------------------------------------------------------------------

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
                                    "caller_check": False}
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
        assert server.core.subscribers.exists("judy", "example.com")
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
    finally:
        sub.close()
        await client.close()

"""The audit trail: each operator action, from ctl, the console or the API, is one AUDIT line in
the registrar's log (actor, the peer's uid and pid from SO_PEERCRED, what, result) and one
operator.action event."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time

import pytest

from registrar_core.auth import SubscriberError
from registrar_core.control import ControlClient, LocalClient
from registrar_core.events import OPERATOR_ACTION

from .sipclient import UdpPhone, next_aor

UID = os.getuid()


def _audit_line(log_path, pid: int, timeout: float = 10.0) -> str:
    """The AUDIT line of process ``pid`` in the registrar's log (polled: the log is written async)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in log_path.read_text().splitlines() if f" pid={pid} " in line and "AUDIT" in line]
        if lines:
            assert len(lines) == 1, lines
            return lines[0]
        time.sleep(0.05)
    raise AssertionError(f"no AUDIT line for pid {pid}:\n{log_path.read_text()}")


def _sipconsole(*args: str, stdin: str = "") -> tuple[int, int]:
    """Run the real CLI; (its pid, its exit status)."""
    proc = subprocess.Popen([sys.executable, "-m", "sipconsole", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    proc.communicate(stdin, timeout=60)
    return proc.pid, proc.returncode


async def test_every_ctl_and_user_action_is_one_audit_line_with_the_peers_uid_and_pid(serve_process):
    serve = serve_process.start()
    phone = await UdpPhone(("127.0.0.1", serve.port)).open()
    aor = next_aor("audited")
    assert (await phone.register(aor)).status == 200
    phone.close()
    control = ["--control", str(serve.control)]
    expected = [
        (["ctl", "qualify", aor, *control], f"action=qualify target={aor} result=ok contacts=1"),
        (["ctl", "unregister", aor, *control], f"action=unregister target={aor} result=ok removed=1"),
        (["ctl", "unregister", aor, *control],
         f'action=unregister target={aor} result=failed reason="{aor} is not registered in table location"'),
        (["ctl", "policy", "caller-check", "on", *control], "action=policy.caller-check target=global result=ok value=on"),
        (["ctl", "policy", "single-contact", "off", "--aor", aor, *control],
         f"action=policy.single-contact target={aor} result=ok value=off"),
        (["ctl", "policy", "single-contact", "inherit", "--aor", aor, *control],
         f"action=policy.single-contact target={aor} result=ok value=inherit"),
        (["user", "add", "dave@example.com", "--password-stdin", *control], "action=subscriber.add target=dave@example.com result=ok"),
        (["user", "passwd", "dave@example.com", "--password-stdin", *control],
         "action=subscriber.passwd target=dave@example.com result=ok"),
        (["user", "rm", "dave@example.com", *control], "action=subscriber.remove target=dave@example.com result=ok"),
    ]
    for args, what in expected:
        pid, code = _sipconsole(*args, stdin="secret\n")
        assert code == (1 if "result=failed" in what else 0), args
        line = _audit_line(serve.log, pid)
        assert line.endswith(f"INFO sipconsole.audit: AUDIT actor=ctl uid={UID} pid={pid} {what}"), (args, line)


def _operator_actions(sub) -> list[dict]:
    return [e.to_dict() for e in sub.drain() if e.kind == OPERATOR_ACTION]


async def test_the_attached_console_names_itself_and_gets_the_event(server, caplog):
    caplog.set_level(logging.INFO, logger="sipconsole.audit")
    sub = server.core.subscribe()
    console = await ControlClient(server.config.control, actor="console").connect()
    stream = console.events()
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # its subscribe (which names the connection) is on the wire first
    try:
        await console.call("policy.set", name="caller_check", value=True)
        received = await asyncio.wait_for(first, 10)
    finally:
        first.cancel()
        await console.close()
    (event,) = _operator_actions(sub)
    assert {k: v for k, v in event.items() if k not in ("time", "kind")} == {
        "actor": "console", "uid": UID, "pid": os.getpid(), "action": "policy.caller-check",
        "target": "global", "result": "ok", "value": "on"}
    assert [e for e in received if e["kind"] == OPERATOR_ACTION] == [{**event, "kind": OPERATOR_ACTION}]
    assert [r.getMessage() for r in caplog.records if r.name == "sipconsole.audit"] == [
        f"AUDIT actor=console uid={UID} pid={os.getpid()} action=policy.caller-check target=global result=ok value=on"]


async def test_the_embedded_console_and_the_api_are_named_too(server, caplog):
    caplog.set_level(logging.INFO, logger="sipconsole.audit")
    sub = server.core.subscribe()
    phone = await UdpPhone(("127.0.0.1", int(server.core.listening[0].rsplit(":", 1)[1]))).open()
    aor = next_aor("embedded")
    assert (await phone.register(aor)).status == 200
    phone.close()
    ruid = server.core.fetch_contacts(aor)[0].ruid
    await LocalClient(server.core).call("unregister", aor=aor, ruid=ruid)
    await server.core.add_subscriber("erin@example.com", "pw")
    await server.core.remove_subscriber("erin@example.com")
    actions = _operator_actions(sub)
    assert [(e["actor"], e["pid"], e["action"], e["target"], e["result"]) for e in actions] == [
        ("console", os.getpid(), "unregister", aor, "ok"),
        ("api", os.getpid(), "subscriber.add", "erin@example.com", "ok"),
        ("api", os.getpid(), "subscriber.remove", "erin@example.com", "ok")]
    assert actions[0]["ruid"] == ruid and actions[0]["removed"] == 1
    assert f"action=unregister target={aor} result=ok ruid={ruid} removed=1" in caplog.records[0].getMessage()


async def test_a_crafted_name_cannot_forge_a_field_or_a_line(server, caplog):
    caplog.set_level(logging.INFO, logger="sipconsole.audit")
    crafted = "x result=ok\nAUDIT actor=api@example.com"
    with pytest.raises(SubscriberError):
        await server.core.add_subscriber(crafted, "pw")
    (message,) = [r.getMessage() for r in caplog.records if r.name == "sipconsole.audit"]
    assert "\n" not in message
    fields = re.findall(r' (\w+)=("(?:[^"\\]|\\.)*"|[^ "]+)', message)
    assert [key for key, _ in fields] == ["actor", "uid", "pid", "action", "target", "result", "reason"], message
    assert dict(fields)["actor"] == "api" and dict(fields)["result"] == "failed"
    assert json.loads(dict(fields)["target"]) == crafted

"""Policy preview and trim: `ctl policy max-contacts N` / `single-contact on` with `--dry-run`
(what would go, oldest first, nothing changed) and `--trim` (set and removed now), against a
running `sipconsole serve`; and max-contacts as a runtime policy that new REGISTERs obey."""

from __future__ import annotations

import asyncio

from registrar_core.control import ControlClient, RpcError

from .processes import ServeProcess, devices
from .sipclient import UdpPhone, free_port, register_bytes


async def bind(serve, aor: str, device: str, expires: int, port: int = 0) -> int:
    """``device`` of ``aor`` registers for ``expires`` seconds; returns the reply's status."""
    phone = await UdpPhone(("127.0.0.1", serve.port)).open()
    try:
        host, local = phone.local
        r = await phone.send(register_bytes(aor, [f"<sip:{device}@{host}:{local}>"], local=phone.local,
                                            expires=expires))
    finally:
        phone.close()
    return r.status


def device(contact: dict) -> str:
    return contact["addr"].split("@")[0].removeprefix("sip:")


async def fill(serve) -> None:
    """alice: 3 devices, bob: 2, carol: 1; longer expires = further from expiry."""
    for aor, names in (("alice@example.com", ("a600", "a1800", "a1200")),
                       ("bob@example.com", ("b900", "b300")), ("carol@example.com", ("c600",))):
        for name in names:
            assert await bind(serve, aor, name, int(name[1:])) == 200


async def ctl(serve, *args: str, json_output: bool = True):
    return await asyncio.to_thread(serve.ctl, *args, json_output=json_output)


async def test_max_contacts_dry_run_lists_oldest_first_and_changes_nothing(serve_process):
    serve = serve_process.start()
    await fill(serve)
    code, preview = await ctl(serve, "policy", "max-contacts", "1", "--dry-run")
    assert code == 0, preview
    assert [(e["aor"], [device(c) for c in e["contacts"]]) for e in preview["aors"]] == [
        ("alice@example.com", ["a600", "a1200"]), ("bob@example.com", ["b300"])]
    assert preview["count"] == 3
    code, text = await ctl(serve, "policy", "max-contacts", "1", "--dry-run", json_output=False)
    assert code == 0
    head, *rows = text.splitlines()
    assert head == ("max-contacts 1 for every AOR without its own value: would remove 3 contacts of 2 AORs "
                    "(dry run: nothing changed)")
    assert [r.split()[1].split("@")[0].removeprefix("sip:") for r in rows[1:]] == ["a600", "a1200", "b300"]
    # Nothing changed: neither the policy nor a binding.
    code, policy = await ctl(serve, "policy", "show")
    assert code == 0 and policy["max_contacts"] == 0
    assert devices(serve, "alice@example.com") == ["a1200", "a1800", "a600"]
    assert devices(serve, "bob@example.com") == ["b300", "b900"]
    # One AOR only.
    code, preview = await ctl(serve, "policy", "max-contacts", "2", "--aor", "alice@example.com", "--dry-run")
    assert code == 0 and [(e["aor"], [device(c) for c in e["contacts"]]) for e in preview["aors"]] == [
        ("alice@example.com", ["a600"])]


async def test_max_contacts_trim_removes_exactly_the_preview_with_reason_and_audit(serve_process):
    serve = serve_process.start()
    await fill(serve)
    client = await ControlClient(serve.control).connect()
    seen: list[dict] = []
    audited = asyncio.Event()

    async def collect():
        async for batch in client.events():
            seen.extend(batch)
            if any(e["kind"] == "operator.action" for e in batch):
                audited.set()

    task = asyncio.create_task(collect())
    try:
        await asyncio.sleep(0)  # subscribed before the trim
        assert await client.call("subscribe") == {"subscribed": True}
        code, preview = await ctl(serve, "policy", "max-contacts", "1", "--dry-run")
        expected = {c["ruid"] for e in preview["aors"] for c in e["contacts"]}
        code, result = await ctl(serve, "policy", "max-contacts", "1", "--trim")
        assert code == 0, result
        assert {c["ruid"] for c in result["removed"]} == expected and len(expected) == 3
        await asyncio.wait_for(audited.wait(), 5)
    finally:
        task.cancel()
        await client.close()
    assert result["max_contacts"] == 1
    assert devices(serve, "alice@example.com") == ["a1800"]
    assert devices(serve, "bob@example.com") == ["b900"]
    assert devices(serve, "carol@example.com") == ["c600"]
    gone = [(e["ruid"], e["reason"]) for e in seen if e["kind"] == "contact.removed"]
    assert sorted(gone) == sorted((ruid, "evicted") for ruid in expected)
    action = next(e for e in seen if e["kind"] == "operator.action")
    assert (action["actor"], action["action"], action["target"], action["value"], action["trim"],
            action["removed"]) == ("ctl", "policy.max-contacts", "global", "1", True, 3)
    assert "action=policy.max-contacts target=global result=ok value=1 trim=on removed=3" in serve.log.read_text()


async def test_max_contacts_policy_applies_to_new_registers_and_reports_what_is_over(serve_process):
    serve = serve_process.start()
    await fill(serve)
    code, text = await ctl(serve, "policy", "max-contacts", "2", json_output=False)
    assert code == 0
    assert "max-contacts:   2 (global)" in text
    assert "1 AOR over the policy by 1 contact(s)" in text and "--trim" in text
    # Existing bindings stay (as Kamailio); a new one over the limit is refused (503), a refresh is not.
    assert devices(serve, "alice@example.com") == ["a1200", "a1800", "a600"]
    assert await bind(serve, "bob@example.com", "b4", 600) == 503
    assert await bind(serve, "carol@example.com", "c2", 600) == 200
    # Per AOR: bob may have 3, carol 1 more than the global limit would not allow.
    code, policy = await ctl(serve, "policy", "max-contacts", "3", "--aor", "bob@example.com")
    assert code == 0 and policy["max_contacts_overrides"] == {"bob@example.com": 3}
    assert await bind(serve, "bob@example.com", "b4", 600) == 200
    assert await bind(serve, "carol@example.com", "c3", 600) == 503
    # inherit: bob follows the global limit again; a global inherit gives back the configured 0.
    code, policy = await ctl(serve, "policy", "max-contacts", "inherit", "--aor", "bob@example.com")
    assert code == 0 and policy["max_contacts_overrides"] == {}
    code, policy = await ctl(serve, "policy", "max-contacts", "inherit")
    assert code == 0 and policy["max_contacts"] == 0
    assert await bind(serve, "carol@example.com", "c3", 600) == 200


async def test_max_contacts_runtime_policy_survives_a_restart_and_per_aor_trim(serve_process):
    serve = serve_process.start("--max-contacts", "5")
    await fill(serve)
    code, policy = await ctl(serve, "policy", "show")
    assert code == 0 and policy["max_contacts"] == 5  # the configured default
    code, result = await ctl(serve, "policy", "max-contacts", "1", "--aor", "alice@example.com", "--trim")
    assert code == 0 and sorted(device(c) for c in result["removed"]) == ["a1200", "a600"]
    assert devices(serve, "bob@example.com") == ["b300", "b900"]  # another AOR: untouched
    serve.stop()
    serve.start("--max-contacts", "5")
    code, policy = await ctl(serve, "policy", "show")
    assert code == 0 and policy["max_contacts"] == 5 and policy["max_contacts_overrides"] == {"alice@example.com": 1}
    assert await bind(serve, "alice@example.com", "a2", 600) == 503


async def test_single_contact_dry_run_and_trim_keep_the_newest(serve_process):
    serve = serve_process.start()
    await fill(serve)  # the newest binding of alice is a1200, of bob b300
    code, preview = await ctl(serve, "policy", "single-contact", "on", "--dry-run")
    assert code == 0
    assert [(e["aor"], [device(c) for c in e["contacts"]]) for e in preview["aors"]] == [
        ("alice@example.com", ["a600", "a1800"]), ("bob@example.com", ["b900"])]
    code, policy = await ctl(serve, "policy", "show")
    assert policy["single_contact"] is False and devices(serve, "bob@example.com") == ["b300", "b900"]
    # An AOR that keeps its own "off" is left out of a global trim.
    assert (await ctl(serve, "policy", "single-contact", "off", "--aor", "bob@example.com"))[0] == 0
    code, result = await ctl(serve, "policy", "single-contact", "on", "--trim")
    assert code == 0 and result["single_contact"] is True
    assert sorted(device(c) for c in result["removed"]) == ["a1800", "a600"]
    assert devices(serve, "alice@example.com") == ["a1200"]
    assert devices(serve, "bob@example.com") == ["b300", "b900"]
    assert "action=policy.single-contact target=global result=ok value=on trim=on removed=2" in serve.log.read_text()


async def test_bad_max_contacts_values_over_the_control_socket(serve_process):
    serve = serve_process.start()
    client = await ControlClient(serve.control).connect()
    try:
        for value in (-1, "2", True, 1.5):
            try:
                await client.call("policy.set", name="max_contacts", value=value)
            except RpcError as exc:
                assert "max_contacts must be a whole number" in str(exc)
            else:
                raise AssertionError(f"max_contacts {value!r} was accepted")
        preview = await client.call("policy.preview", name="single_contact", value=True)
        assert preview == {"name": "single_contact", "value": True, "aor": None, "table": "location",
                           "count": 0, "aors": []}
    finally:
        await client.close()


async def test_max_contacts_policy_set_on_one_node_applies_on_another_sharing_the_database(pg_dsn, short_dir):
    nodes = []
    try:
        for name in ("a", "b"):
            node = ServeProcess(short_dir, free_port(), "-" + name)
            node.db = pg_dsn  # type: ignore[assignment]  # the command line takes str(db)
            nodes.append(node.start())
        a, b = nodes
        for name in ("d1", "d2"):
            assert await bind(b, "judy@example.com", name, 600) == 200
        code, result = await ctl(a, "policy", "max-contacts", "1", "--aor", "judy@example.com", "--dry-run")
        assert code == 0 and [device(c) for c in result["aors"][0]["contacts"]] == ["d1"]
        assert (await ctl(a, "policy", "max-contacts", "1", "--aor", "judy@example.com"))[0] == 0
        deadline = asyncio.get_running_loop().time() + 10
        while (await ctl(b, "policy", "show"))[1]["max_contacts_overrides"] != {"judy@example.com": 1}:
            assert asyncio.get_running_loop().time() < deadline, "node b never saw the policy"
            await asyncio.sleep(0.1)
        assert await bind(b, "judy@example.com", "d3", 600) == 503
    finally:
        for node in nodes:
            node.stop()

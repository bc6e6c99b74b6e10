"""Single-contact policy (Kamailio save() flag 0x04 as state) against a running `sipconsole serve`.

Globally or per AOR, switched with `sipconsole ctl policy single-contact`, persisted across a
restart: with it on, the newest device's REGISTER leaves only its own binding.
"""

from __future__ import annotations

from .processes import devices, sipp_ok, sipp_register
from .sipclient import UdpPhone, query, register_bytes


async def register(serve, aor: str, device: str) -> list[str]:
    """A device of ``aor`` registers; returns the bindings listed in its 200."""
    phone = await UdpPhone(("127.0.0.1", serve.port)).open()
    try:
        host, port = phone.local
        r = await phone.send(register_bytes(aor, [f"<sip:{device}@{host}:{port}>"], local=phone.local))
    finally:
        phone.close()
    assert r.status == 200
    return [str(c.uri).split("@")[0].removeprefix("sip:") for c in r.contacts]


async def test_global_single_contact_on_then_off(serve_process, tmp_path):
    serve = serve_process.start()
    code, policy = serve.ctl("policy", "single-contact", "on")
    assert code == 0 and policy["single_contact"] is True
    sipp_register(serve, tmp_path, [("alice", "example.com", "desk", "1.0"),
                                    ("alice", "example.com", "mobile", "1.0")])
    assert devices(serve, "alice@example.com") == ["mobile"]
    # The newest REGISTER's 200 lists only that device's binding.
    assert await register(serve, "alice@example.com", "tablet") == ["tablet"]
    assert devices(serve, "alice@example.com") == ["tablet"]
    code, policy = serve.ctl("policy", "single-contact", "off")
    assert code == 0 and policy["single_contact"] is False
    assert sorted(await register(serve, "alice@example.com", "desk")) == ["desk", "tablet"]
    sipp_register(serve, tmp_path, [("alice", "example.com", "mobile", "0.5")], "again.csv")
    assert devices(serve, "alice@example.com") == ["desk", "mobile", "tablet"]


async def test_single_contact_per_aor_override(serve_process, tmp_path):
    serve = serve_process.start()
    code, policy = serve.ctl("policy", "single-contact", "on", "--aor", "sip:bob@example.com")
    assert code == 0
    assert policy["single_contact"] is False and policy["single_contact_overrides"] == {"bob@example.com": True}
    rows = [(user, "example.com", device, "1.0") for user in ("bob", "carol") for device in ("desk", "mobile")]
    sipp_register(serve, tmp_path, rows)
    assert devices(serve, "bob@example.com") == ["mobile"]
    assert devices(serve, "carol@example.com") == ["desk", "mobile"]
    # Globally on, carol excepted.
    assert serve.ctl("policy", "single-contact", "on")[0] == 0
    code, policy = serve.ctl("policy", "single-contact", "off", "--aor", "carol@example.com")
    assert code == 0 and policy["single_contact_overrides"] == {"bob@example.com": True, "carol@example.com": False}
    assert sorted(await register(serve, "carol@example.com", "tablet")) == ["desk", "mobile", "tablet"]
    assert await register(serve, "dave@example.com", "desk") == ["desk"]
    assert await register(serve, "dave@example.com", "mobile") == ["mobile"]
    # inherit drops carol's override: the global "on" applies to her next REGISTER.
    code, policy = serve.ctl("policy", "single-contact", "inherit", "--aor", "carol@example.com")
    assert code == 0 and policy["single_contact_overrides"] == {"bob@example.com": True}
    assert await register(serve, "carol@example.com", "laptop") == ["laptop"]
    assert devices(serve, "carol@example.com") == ["laptop"]


async def test_policies_survive_a_restart(serve_process, tmp_path):
    serve = serve_process.start()
    for args in (("single-contact", "on"), ("single-contact", "off", "--aor", "erin@example.com"),
                 ("caller-check", "on")):
        assert serve.ctl("policy", *args)[0] == 0
    code, before = serve.ctl("policy", "show")
    assert code == 0
    assert serve.stop() == 0
    serve.start()
    code, after = serve.ctl("policy", "show")
    assert code == 0 and after == before == {
        "single_contact": True, "single_contact_overrides": {"erin@example.com": False}, "caller_check": True,
        "max_contacts": 0, "max_contacts_overrides": {}}
    # And the registrar acts on them.
    rows = [(user, "example.com", device, "1.0") for user in ("erin", "frank") for device in ("desk", "mobile")]
    sipp_register(serve, tmp_path, rows)
    assert devices(serve, "frank@example.com") == ["mobile"]
    assert devices(serve, "erin@example.com") == ["desk", "mobile"]
    assert sipp_ok(serve, tmp_path, "invite_unregistered.xml", ("frank", "example.com", "mallory"))
    # A crash (SIGKILL) keeps them too: each change was committed before ctl got its answer.
    assert serve.ctl("policy", "single-contact", "off")[0] == 0
    serve.kill()
    serve.start()
    code, policy = serve.ctl("policy", "show")
    assert code == 0 and policy["single_contact"] is False and policy["caller_check"] is True
    assert sorted(await register(serve, "frank@example.com", "tablet")) == ["mobile", "tablet"]
    assert await query(serve, "frank@example.com") != []


async def test_single_contact_from_the_configuration(serve_process, tmp_path):
    serve = serve_process.start("--single-contact")
    code, policy = serve.ctl("policy", "show")
    assert code == 0 and policy["single_contact"] is True
    assert await register(serve, "gina@example.com", "desk") == ["desk"]
    assert await register(serve, "gina@example.com", "mobile") == ["mobile"]
    # A run-time change overrides the configured default.
    assert serve.ctl("policy", "single-contact", "off")[0] == 0
    assert sorted(await register(serve, "gina@example.com", "desk")) == ["desk", "mobile"]


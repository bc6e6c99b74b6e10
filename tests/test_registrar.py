"""registrar.py's per-AOR lock: held in one scope from the check to the reply, and let go
however the REGISTER ends (refused under the lock, committed to SQLite, or out of order),
so the next REGISTER for the AOR is never left waiting. A real SQLite file, in process."""

from __future__ import annotations

import asyncio

import pytest

from registrar_core.api import RegistrarCore
from registrar_core.config import build_config
from registrar_core.registrar import _contact_params
from registrar_core.sip.headers import parse_name_addr
from registrar_core.source import Source

from .sipclient import register_bytes

PHONE = ("127.0.0.1", 5062)
SOURCE = Source("udp", *PHONE, "udp:127.0.0.1:5060")


@pytest.fixture
async def core(tmp_path):
    core = RegistrarCore(build_config({"auth": False, "ip_budget": 0, "db": str(tmp_path / "location.db")}))
    await core.start()
    yield core
    await core.stop()


async def status(core: RegistrarCore, message: bytes) -> int:
    data, _ = await asyncio.wait_for(core.handle(message, SOURCE), 10)  # a lock never let go: a timeout
    return int(data.split(b" ", 2)[1])


async def test_every_outcome_under_the_lock_lets_the_next_register_in(core):
    aor = "alice@example.com"
    contact = ["<sip:alice@127.0.0.1:5062>"]
    assert await status(core, register_bytes(aor, contact, local=PHONE, expires=5)) == 423  # refused under the lock
    assert await status(core, register_bytes(aor, contact, local=PHONE, call_id="c1", cseq=5)) == 200  # committed
    assert await status(core, register_bytes(aor, contact, local=PHONE, call_id="c1", cseq=4)) == 500  # out of order
    assert await status(core, register_bytes(aor, ["<sip:alice@127.0.0.1:5063>"], local=PHONE)) == 200
    assert core.fetch_contacts(aor).count == 2


async def test_concurrent_registers_for_one_aor_are_serialised_and_none_is_lost(core):
    aor = "bob@example.com"
    messages = [register_bytes(aor, [f"<sip:bob@127.0.0.1:{6000 + n}>"], local=PHONE) for n in range(20)]
    assert await asyncio.gather(*(status(core, m) for m in messages)) == [200] * 20
    assert core.fetch_contacts(aor).count == 20


async def test_a_register_waiting_for_its_commit_holds_no_parsed_request(core):
    """Hundreds of REGISTERs wait for each group commit: each holds what its reply needs,
    not its parsed message (compiled, a closure over the request once kept it to the end)."""
    import gc

    replies: list[object] = []
    for n in range(50):
        core.pipeline.receive(register_bytes(f"u{n}@example.com", [f"<sip:u{n}@127.0.0.1:5062>"], local=PHONE),
                              SOURCE, replies.append)
    assert not replies  # all waiting for the commit
    gc.collect()
    assert sum(1 for o in gc.get_objects() if type(o).__name__ == "Request") == 0
    deadline = asyncio.get_running_loop().time() + 10
    while len(replies) < 50 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert len(replies) == 50 and all(r[0].startswith(b"SIP/2.0 200 ") for r in replies)  # type: ignore[index]


@pytest.mark.parametrize("contact", [
    "<sip:a@192.0.2.1>",
    "<sip:a@192.0.2.1>;expires=60;q=0.5",
    '<sip:a@192.0.2.1>;EXPIRES=60;Q=1;+sip.instance="<urn:uuid:1>";reg-id=1;ob;expires=5;x=y',
    "<sip:a@192.0.2.1>;q;+SIP.INSTANCE;Reg-Id;expires",
])
def test_contact_params_in_one_pass_read_as_name_addr_param_does(contact):
    """The first of each (any case), "" for a flag, None when absent; the rest but every expires
    and q written again as they came."""
    parsed = parse_name_addr(contact)
    kept = "".join(f";{n}" if v is None else f";{n}={v}" for n, v in parsed.params if n.lower() not in ("expires", "q"))
    assert _contact_params(parsed.params) == (parsed.param("expires"), parsed.param("q"), parsed.param("+sip.instance"),
                                              parsed.param("reg-id"), kept)

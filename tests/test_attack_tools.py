"""The registrar against sipvicious (PyPI), as an attacker would run it: svwar must find no
extension, svcrack must not lock the real user out. Their User-Agent is changed (a real
attacker does; "friendly-scanner" is dropped before anything else runs)."""

from __future__ import annotations

import asyncio
import logging
import re
import sys

import pytest

from registrar_core.sip import parse_message

from .sipclient import UdpPhone, authorization, challenges, free_port, register_bytes, server_address

# sipvicious has no User-Agent option: its request builder's default is rewritten, then the
# tool's own main() runs with the remaining arguments. svcrack 0.3.8 also ignores -b (its
# main() never hands the binding address on), so -b becomes its constructor's default.
_WITH_AGENT = (
    "import importlib, sys\n"
    "from sipvicious.libs import svhelper\n"
    "svhelper.makeRequest.__defaults__ = tuple('Yealink SIP-T46S 66.86.0.15' if d == 'friendly-scanner' else d\n"
    "                                          for d in svhelper.makeRequest.__defaults__)\n"
    "tool = sys.argv.pop(1)\n"
    "module = importlib.import_module('sipvicious.' + tool)\n"
    "if tool == 'svcrack' and '-b' in sys.argv:\n"
    "    init = module.ASipOfRedWine.__init__\n"
    "    init.__defaults__ = (init.__defaults__[0], sys.argv[sys.argv.index('-b') + 1], *init.__defaults__[2:])\n"
    "sys.argv[0] = tool\n"
    "module.main()\n"
)
EXTENSIONS = ("100", "101", "102")  # subscribers, none registered
REGISTERED = "103"  # registered: a redirect server must give its contacts (302), so it shows


async def sipvicious(tool: str, *args: str, timeout: float = 90) -> str:
    """Run sipvicious ``tool`` (svwar, svcrack) with a changed User-Agent; its output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WITH_AGENT, tool, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{tool} still running after {timeout} s")
    return out.decode(errors="replace")


def found(svwar_output: str) -> set[str]:
    """Extensions in svwar's result table (rows ``| 101 | reqauth |``)."""
    return set(re.findall(r"^\|\s*(\d+)\s*\|", svwar_output, re.M))


@pytest.fixture
async def pbx(make_server):
    """Defaults as shipped (auth on, MD5, per-IP budget, loopback trusted), on a free port."""
    srv = await make_server(auth=True, ip_budget=400, trusted="127.0.0.0/8,::1")
    for ext in (*EXTENSIONS, REGISTERED):
        await srv.core.subscribers.add(f"{ext}@127.0.0.1", f"pw-{ext}-long-enough")
    host, port = server_address(srv)
    request = parse_message(register_bytes(f"{REGISTERED}@127.0.0.1", [f"<sip:{REGISTERED}@127.0.0.1:5999>"],
                                           local=("127.0.0.1", 5999)))
    assert (await srv.core.save(request)).status == 200  # as if it had authenticated
    return srv


@pytest.mark.parametrize("method, extra", [("OPTIONS", ()), ("INVITE", ("--force",)), ("REGISTER", ())])
async def test_svwar_finds_no_extension(pbx, method, extra):
    host, port = server_address(pbx)
    out = await sipvicious("svwar", "-e100-110", "-m", method, *extra, "-P", str(free_port()),
                           "-b", "127.0.0.1", "--maximumtime", "10", f"udp://{host}:{port}")
    assert found(out) & set(EXTENSIONS) == set(), out
    if method == "REGISTER":
        assert not found(out), out  # every REGISTER gets the same 401, registered or not
    else:
        assert found(out) == {REGISTERED}, f"svwar works: it sees the registered one\n{out}"
    assert pbx.core.snapshot_stats()["security"].get("scanner", 0) == 0, "not dropped for its User-Agent"


async def test_svcrack_from_one_address_while_the_user_registers_from_another(make_server, caplog):
    srv = await make_server(auth=True, ip_budget=400, trusted="127.0.0.1")
    await srv.core.subscribers.add("100@127.0.0.1", "not-a-number-in-the-range")
    host, port = server_address(srv)
    caplog.set_level(logging.WARNING, logger="sipconsole.security")
    crack = asyncio.create_task(sipvicious(
        "svcrack", "-u", "100", "-r", "1-5000", "-b", "127.0.0.2", "-P", str(free_port()),
        "--maximumtime", "5", f"udp://{host}:{port}"))
    owner = await UdpPhone((host, port)).open("127.0.0.1")
    statuses = []
    cseq = 1
    while not crack.done():
        r = await owner.register("100@127.0.0.1", call_id="owner@t", cseq=cseq)
        ch = challenges(r)[0]
        r = await owner.register("100@127.0.0.1", call_id="owner@t", cseq=cseq + 1,
                                 extra=[authorization(ch, "100", "not-a-number-in-the-range", f"sip:{host}")])
        statuses.append(r.status)
        cseq += 2
        await asyncio.sleep(0.2)
    out = await crack
    assert "not-a-number" not in out
    assert statuses and set(statuses) == {200}, f"the real user kept registering: {statuses}"
    assert srv.core.snapshot_stats()["banned_ips"] == ["127.0.0.2"], out
    lines = [m.getMessage() for m in caplog.records]
    assert any(re.match(r'SIPSEC auth-failed src=127\.0\.0\.2:\d+ user="100"', m) for m in lines), \
        "svcrack's guesses were processed (not dropped as a scanner)"
    assert any(re.match(r'SIPSEC ban src=127\.0\.0\.2:', m) for m in lines)
    assert not any("src=127.0.0.1:" in m for m in lines if m.startswith("SIPSEC ban"))
    owner.close()

"""sipp as the real SIP peer against `sipconsole serve`."""

from __future__ import annotations

import pytest

from .processes import run_sipp, write_injection


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_ten_thousand_distinct_aors(serve_process, tmp_path, transport):
    serve_process.start()
    total = 10_000
    inf = write_injection(tmp_path / "aors.csv", [(f"{transport}-{i}", "example.com") for i in range(total)])
    result = run_sipp("register.xml", serve_process.port, "-inf", str(inf), "-l", "500",
                      calls=total, rate=4000, transport=transport, timeout=120)
    assert (result.successful, result.failed) == (total, 0), result.output[-3000:]
    code, stats = serve_process.ctl("stats")
    assert stats["registered_users"] == total and stats["accepted_regs"] == total


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_lifecycle_register_refresh_query_q_423_wildcard(serve_process, tmp_path, transport):
    serve_process.start()
    inf = write_injection(tmp_path / "aors.csv", [(f"life{i}", "example.com") for i in range(20)])
    result = run_sipp("register_lifecycle.xml", serve_process.port, "-inf", str(inf),
                      calls=20, rate=50, transport=transport)
    assert (result.successful, result.failed) == (20, 0), result.output[-3000:]
    code, dump = serve_process.ctl("dump")
    assert code == 0 and dump["aors"] == [], "Contact: * removed every binding"
    code, stats = serve_process.ctl("stats")
    assert stats["accepted_regs"] == 20 * 5 and stats["rejected_regs"] == 20

"""`sipconsole ctl --json dump` of a 250,000-binding table while sipp keeps registering.

The bindings are written into the database file before `serve` starts (seconds, where
registering them would take minutes); the registrar's peak RSS during the dump is read
from VmHWM, reset just before the dump starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from typing import Any

from registrar_core.control import ControlClient

from .processes import ServeProcess, peak_rss_kib, run_sipp, write_bindings, write_injection

BINDINGS = 250_000
#: What the registrar may grow by while it dumps the table: a few chunks in flight and
#: the sorted list of AOR names (~2 MB), plus what sipp's registrations add meanwhile
#: (measured: about 2 MiB in all). A reply built whole would be ~150 MB of JSON text
#: alone (the parsed dicts several times that).
RSS_GROWTH_BOUND_KIB = 32 * 1024
#: What `ctl` itself may hold: it prints each chunk as it comes (measured: about 33 MiB, most
#: of it the interpreter and its imports); keeping 250k AORs would take several hundred MiB.
CTL_RSS_BOUND_KIB = 100 * 1024
SIPP_CALLS, SIPP_RATE = 3000, 150  # 20 s of REGISTERs: longer than the dump takes here


def _compact(pairs: list[tuple[str, Any]]) -> Any:
    """object_pairs_hook: keep (aor, ruid) of a contact, not 24 attributes: the test process
    checks the whole document without holding 250k contact dicts."""
    keys = {k for k, _ in pairs}
    if "ruid" in keys:
        data = dict(pairs)
        return data["aor"], data["ruid"]
    return dict(pairs)


def test_json_dump_of_250k_bindings_while_sipp_registers(serve_process: ServeProcess, tmp_path):
    aors = write_bindings(serve_process.db, BINDINGS)
    serve = serve_process.start(timeout=120)
    inf = write_injection(tmp_path / "live.csv", [(f"live{i}", "example.com") for i in range(SIPP_CALLS)])

    async def dump_under_load() -> tuple[bytes, int, int]:
        sipp = asyncio.create_task(asyncio.to_thread(
            run_sipp, "register.xml", serve.port, "-inf", str(inf), calls=SIPP_CALLS, rate=SIPP_RATE, timeout=120))
        client = await ControlClient(serve.control).connect()
        try:
            deadline = time.monotonic() + 30
            while (await client.call("stats"))["accepted_regs"] == 0:  # sipp is registering
                assert time.monotonic() < deadline, "sipp got no REGISTER accepted"
                await asyncio.sleep(0.1)
            serve.reset_peak_rss()
            base = serve.peak_rss_kib()  # the RSS right now
            before = (await client.call("stats"))["accepted_regs"]
            dump = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sipconsole", "ctl", "--control", str(serve.control), "--json", "dump",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out_task = asyncio.create_task(dump.communicate())
            answered_meanwhile = 0  # another control client is answered while the dump runs
            ctl_peak = 0
            while not out_task.done():
                with contextlib.suppress(OSError, AttributeError):  # gone (or a zombie) at the end
                    ctl_peak = max(ctl_peak, peak_rss_kib(dump.pid))
                await asyncio.wait_for(client.call("stats"), 30)
                answered_meanwhile += not out_task.done()
                await asyncio.sleep(0.2)
            out, err = await out_task
            accepted_during = (await client.call("stats"))["accepted_regs"] - before
            assert dump.returncode == 0, err.decode()
            assert answered_meanwhile >= 1, "no other control request answered while the dump ran"
            assert accepted_during > 0, "no REGISTER accepted while the dump ran"
            print(f"ctl's peak RSS sampled during the dump: {ctl_peak / 1024:.0f} MiB")
            assert 0 < ctl_peak <= CTL_RSS_BOUND_KIB, f"ctl held {ctl_peak / 1024:.0f} MiB"
            return out, base, serve.peak_rss_kib()
        finally:
            await client.close()
            result = await sipp
            assert result.failed == 0 and result.successful == SIPP_CALLS, result.output[-3000:]

    out, rss_before, peak = asyncio.run(dump_under_load())
    document = json.loads(out, object_pairs_hook=_compact)
    del out
    assert set(document) == {"table", "aors"} and document["table"] == "location"
    names = [entry["aor"] for entry in document["aors"]]
    assert names == sorted(names) and len(set(names)) == len(names)
    bulk = [entry for entry in document["aors"] if entry["aor"].endswith("@bulk.test")]
    assert len(bulk) == BINDINGS == len(aors)
    assert all(entry["contacts"] == [(entry["aor"], f"bulk-{i:07d}")] for i, entry in enumerate(bulk))
    print(f"registrar RSS {rss_before / 1024:.0f} MiB before the dump, peak {peak / 1024:.0f} MiB during it")
    assert peak - rss_before <= RSS_GROWTH_BOUND_KIB, f"RSS grew by {(peak - rss_before) / 1024:.0f} MiB"

"""Policy preview and trim at table scale: `ctl policy max-contacts 1 --dry-run` and `--trim`.

Not a test. A RegistrarCore on a real SQLite file (in a temporary directory) is filled with
``--aors`` AORs, every other one with three contacts and the rest with one; then the preview of
max-contacts 1 (what would go) and its trim (set and remove now, through group commit) are
timed, and the longest the event loop went without a turn during each (the preview yields
every 2,048 AORs). The garbage collector is set up as ``sipconsole serve`` sets it. Run ``python bench/bench_policy_trim.py``; it writes
``bench/results/policy_trim.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import registrar_core  # noqa: E402
from registrar_core.api import RegistrarCore  # noqa: E402
from registrar_core.config import build_config  # noqa: E402
from registrar_core.location import Contact  # noqa: E402
from registrar_core.server import GC_THRESHOLDS  # noqa: E402


async def longest_gap(stop: asyncio.Event) -> float:
    """The longest time (s) the loop took to come back to this task, until ``stop``."""
    loop, worst = asyncio.get_running_loop(), 0.0
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0)
        worst = max(worst, loop.time() - before)
    return worst


async def timed(work) -> tuple[object, float, float]:
    """(result, seconds, longest loop stall) of awaiting ``work``."""
    stop = asyncio.Event()
    watcher = asyncio.create_task(longest_gap(stop))
    await asyncio.sleep(0)
    start = time.perf_counter()
    result = await work
    seconds = time.perf_counter() - start
    stop.set()
    return result, seconds, await watcher


async def measure(aors: int, directory: str) -> dict[str, float | int]:
    core = RegistrarCore(build_config({"auth": False, "db": f"{directory}/location.db"}))
    await core.location.start()
    try:
        now = time.time()
        puts = [(Contact(ruid=f"r{i}-{j}", aor=f"u{i}@example.com", addr=f"sip:u{i}@192.0.2.1:{5060 + j}",
                         expires=now + 3600 + j, callid=f"c{i}-{j}", cseq=1, modified=now + j), True)
                for i in range(aors) for j in range(3 if i % 2 == 0 else 1)]
        for start in range(0, len(puts), 5000):
            await core.location.apply("location", puts[start:start + 5000], [])
        contacts = len(puts)
        del puts[:]
        gc.set_threshold(*GC_THRESHOLDS)  # as Server.start: the table loaded, then frozen
        gc.freeze()
        over, preview_s, preview_stall = await timed(core.policy_preview("max_contacts", "1"))
        removed, trim_s, trim_stall = await timed(core.set_max_contacts(1, trim=True))
        assert isinstance(over, dict) and isinstance(removed, list)
        return {"aors": aors, "contacts": contacts, "aors_over": len(over), "removed": len(removed),
                "preview_s": preview_s, "preview_longest_stall_s": preview_stall,
                "trim_s": trim_s, "trim_longest_stall_s": trim_stall}
    finally:
        await core.location.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aors", type=int, default=50_000, help="AORs (default 50,000)")
    parser.add_argument("--quick", action="store_true", help="5,000 AORs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-trim-") as directory:
        result = asyncio.run(measure(5_000 if args.quick else args.aors, directory))
    print(f"build {registrar_core.build()}: {result['aors']:,} AORs, {result['contacts']:,} contacts; "
          f"preview of max-contacts 1: {result['aors_over']:,} AORs over in {result['preview_s']:.2f} s "
          f"(loop stalled at most {result['preview_longest_stall_s'] * 1000:.0f} ms); trim: "
          f"{result['removed']:,} removed in {result['trim_s']:.2f} s "
          f"(loop stalled at most {result['trim_longest_stall_s'] * 1000:.0f} ms)")
    out = ROOT / "bench" / "results" / "policy_trim.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"build": registrar_core.build(), **result}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Micro-benchmark: CPU per ``Registrar.save`` of a parsed REGISTER, in process, memory only.

What bench_core.py's ``plain`` case spends in the registrar (RFC 3261 §10.3 logic, the
``Contact``, apply to memory, the 200's headers), without the parse, the transaction table or
the transport: the requests are parsed (and their lazily parsed fields read) outside the timed
part, 100 at a time so that they are still in cache when saved, as in the server. Each pass
registers (first) or refreshes every AOR once; the figure is the median of the refreshing passes.

On a shared machine CPU time moves by 10 % from one run to the next; the instruction count
does not. Under callgrind, counting only inside ``Registrar.save`` (a compiled build):

    valgrind --tool=callgrind --toggle-collect=CPyDef_registrar___Registrar___save \\
        "$(python3 -c 'import sys; print(sys.executable)')" bench/bench_save.py --aors 2000 --passes 3

and divide callgrind's "Collected" by aors x passes. Set PYTHONHASHSEED=0 for equal runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import registrar_core  # noqa: E402
from bench_core import SOURCE, register  # noqa: E402
from registrar_core.api import RegistrarCore  # noqa: E402
from registrar_core.config import build_config  # noqa: E402
from registrar_core.sip import parse_message  # noqa: E402

CHUNK = 100  # requests parsed, then saved, at a time


async def passes(aors: int, count: int) -> list[float]:
    """CPU microseconds per save, one figure per pass over the AORs."""
    core = RegistrarCore(build_config({"auth": False, "ip_budget": 0, "db": ":memory:"}), memory_only=True)
    await core.start()
    registrar = core.registrar
    replies: list[object] = []
    out = []
    try:
        for cseq in range(1, count + 1):
            data = [register(n, cseq) for n in range(aors)]
            spent = 0.0
            for first in range(0, aors, CHUNK):
                requests = [parse_message(d) for d in data[first:first + CHUNK]]
                for r in requests:  # the fields parsed on first use, outside the timed part
                    r.contacts, r.expires, r.call_id, r.cseq, r.to
                start = time.process_time()
                for r in requests:
                    registrar.save("location", r, 0, SOURCE, replies.append)
                spent += time.process_time() - start
            ok = sum(1 for r in replies if getattr(r, "status", None) == 200)
            if ok != aors:
                raise SystemExit(f"only {ok} of {aors} saves answered 200")
            replies.clear()
            out.append(spent / aors * 1e6)
    finally:
        await core.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aors", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=8, help="the first registers, the rest refresh")
    parser.add_argument("--output", type=Path, help="JSON file for the figures")
    args = parser.parse_args()
    times = asyncio.run(passes(args.aors, args.passes))
    rest = times[1:] or times
    result = {"build": registrar_core.build(), "aors": args.aors, "us_per_save": times,
              "median_us": statistics.median(rest)}
    print(f"build {result['build']}, {args.aors:,} AORs: Registrar.save first {times[0]:.2f} us, "
          f"then median {result['median_us']:.2f} us (min {min(rest):.2f}, max {max(rest):.2f})")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

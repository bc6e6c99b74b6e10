"""Two (or more) checkouts' consoles on one registrar, in turn: the console's CPU per REGISTER.

``sipconsole serve`` of this checkout (as built) with ``--contacts`` AORs registered; then, for
``--rounds`` rounds, sipp closed loop for ``--seconds`` with no console and with ``sipconsole
attach`` of each checkout (the order rotating), each console on a pseudo-terminal of its own,
pinned to sipp's core as bench_console.py pins it. A console's figure on a shared machine is its
CPU time per REGISTER answered; the same registrar for all takes its own changes out.

    python bench/bench_console_ab.py base=/tmp/base new=. --output /tmp/console-ab.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_console as b  # noqa: E402
import common as c  # noqa: E402

from tests.processes import Terminal  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkouts", nargs="+", help="NAME=DIR: a checkout whose console to attach")
    p.add_argument("--contacts", type=int, default=100_000, help="AORs registered first (default 100,000)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of runs (default 2)")
    p.add_argument("--seconds", type=int, default=10, help="length of each run (default 10)")
    p.add_argument("--output", type=Path, default=c.RESULTS / "console-ab.json", help="JSON output path")
    args = p.parse_args()
    if not all("=" in a for a in args.checkouts):
        p.error("checkouts are NAME=DIR")
    args.checkouts = {name: str(Path(path).resolve()) for name, path in (a.split("=", 1) for a in args.checkouts)}
    return args


async def bench(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    sipp_core, server_core, _ = c.pick_cores()
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in ["none", *args.checkouts]}
    kinds = list(results)
    with tempfile.TemporaryDirectory(prefix="sc-bench-console-ab-") as tmp:
        work = Path(tmp)
        port, sipp_port = c.free_port(), c.free_port()  # sipp_port: every run refreshes the same bindings
        injection = work / "aors.csv"
        c.write_injection(injection, 0, args.contacts)
        server = b.serve(work, port, server_core)
        try:
            await asyncio.to_thread(b.closed_loop, port, injection, work / "preload", sipp_core, sipp_port,
                                    calls=args.contacts)
            for rnd in range(args.rounds):
                for kind in kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]:
                    label = work / f"{kind}-{rnd}"
                    if kind == "none":
                        run = await asyncio.to_thread(b.measured, port, injection, label, sipp_core, sipp_port,
                                                      args.seconds, {"registrar": server.pid})
                    else:
                        home = args.checkouts[kind]
                        term = Terminal(["attach", "--control", str(work / "control.sock")], size=b.SIZE,
                                        prefix=("env", "-C", home, *c.pinned([], sipp_core)),
                                        env={**b.registrar_env(work), "PYTHONPATH": home})
                        try:
                            await term.until(b.console_loaded(term, args.contacts), timeout=300)
                            run = await asyncio.to_thread(b.measured, port, injection, label, sipp_core, sipp_port,
                                                          args.seconds,
                                                          {"registrar": server.pid, "console": term.proc.pid})
                        finally:
                            term.close()
                    print(f"{kind} round {rnd}: {run['reg_per_s']:,} REG/s, CPU us/REG {run['cpu_us_per_register']}",
                          flush=True)
                    results[kind].append(run)
        finally:
            server.stop(timeout=60)
    return results


def main() -> None:
    args = parse_args()
    c.pin_self(c.pick_cores()[0])
    results = asyncio.run(bench(args))
    print()
    print(c.table(["console", "REG/s", "registrar CPU us/REG", "console CPU us/REG"], [
        [kind, ", ".join(f"{r['reg_per_s']:,}" for r in runs),
         " / ".join(str(r["cpu_us_per_register"]["registrar"]) for r in runs),
         " / ".join(str(r["cpu_us_per_register"].get("console", "-")) for r in runs)]
        for kind, runs in results.items()], right={1, 2, 3}))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"contacts": args.contacts, "checkouts": args.checkouts, "runs": results,
                                       "machine": c.machine(), "commit": c.source_revision()}, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()

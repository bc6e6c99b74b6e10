"""Durable REGISTER/s of one `sipconsole serve` on PostgreSQL against the same on SQLite, and of
two nodes sharing one PostgreSQL database with the delay until the other node sees a binding.

Each run starts the registrar afresh on an empty database (SQLite: a file in a temporary
directory; PostgreSQL: a throwaway server from tests/postgres.py, fsync and synchronous_commit
on, Unix socket) and lets sipp register distinct AORs closed-loop (``-l USERS``: that many in
flight) over UDP; the figure is successful REGISTERs over sipp's elapsed time. Targets
alternate within each repetition; the median of the runs is reported with min and max.

Two nodes: sipp registers half the AORs through each node at once (aggregate REG/s: all
REGISTERs over the longer sipp run); then, one at a time, a REGISTER through node A and
`show` polled on node B's control socket until the binding is there (p50/p99 of the delay
from A's 200).

    python bench/bench_postgres.py                # 3 repetitions x 20,000 REGISTERs
    python bench/bench_postgres.py --reps 1 --registers 5000

Runs from the repository root (it starts `python -m registrar_core.cli`, as the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.postgres import PostgresCluster  # noqa: E402  (the tests' throwaway server)
from tests.processes import SCENARIOS, ServeProcess, write_injection  # noqa: E402
from tests.sipclient import UdpPhone, free_port, next_aor  # noqa: E402

from registrar_core.control import ControlClient, RpcError  # noqa: E402


def one_run(db: str, registers: int, users: int, work: Path) -> float:
    """REGISTER/s answered 200 by a fresh registrar on ``db``."""
    serve = ServeProcess(work, free_port())
    serve.db = db  # type: ignore[assignment]
    serve.start()
    try:
        inf = write_injection(work / "users.csv", [(f"b{i}", "bench.test") for i in range(registers)])
        started = time.monotonic()
        done = subprocess.run(
            ["sipp", f"127.0.0.1:{serve.port}", "-sf", str(SCENARIOS / "register.xml"), "-inf", str(inf),
             "-m", str(registers), "-l", str(users), "-r", "100000", "-i", "127.0.0.1", "-nostdin",
             "-timeout", "300s"], capture_output=True, text=True, timeout=400)
        elapsed = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"sipp failed ({done.returncode}): {done.stdout[-1500:]}")
        return registers / elapsed
    finally:
        serve.stop()


def _sipp(port: int, inf: Path, registers: int, users: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIOS / "register.xml"), "-inf", str(inf),
         "-m", str(registers), "-l", str(users), "-r", "100000", "-i", "127.0.0.1", "-nostdin",
         "-timeout", "300s"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def two_nodes(dsn: str, registers: int, users: int, samples: int, work: Path) -> tuple[float, list[float]]:
    """(aggregate REG/s through two nodes at once, delays in seconds from a 200 on A to B)."""
    nodes = []
    try:
        for name in ("-a", "-b"):
            node = ServeProcess(work, free_port(), name)
            node.db = dsn  # type: ignore[assignment]
            nodes.append(node.start())
        half = registers // 2
        runs = []
        started = time.monotonic()
        for index, node in enumerate(nodes):
            inf = write_injection(work / f"users{index}.csv", [(f"n{index}x{i}", "bench.test") for i in range(half)])
            runs.append(_sipp(node.port, inf, half, users // 2))
        for run in runs:
            out, _ = run.communicate(timeout=400)
            if run.returncode != 0:
                raise RuntimeError(f"sipp failed ({run.returncode}): {out[-1500:]}")
        aggregate = 2 * half / (time.monotonic() - started)
        return aggregate, asyncio.run(_delays(nodes[0], nodes[1], samples))
    finally:
        for node in nodes:
            node.stop()


async def _delays(a: ServeProcess, b: ServeProcess, samples: int) -> list[float]:
    phone = await UdpPhone(("127.0.0.1", a.port)).open()
    control = await ControlClient(b.control).connect()
    delays = []
    try:
        for _ in range(samples):
            aor = next_aor("seen")
            assert (await phone.register(aor)).status == 200
            answered = time.monotonic()
            while True:
                try:
                    await control.call("show", aor=aor)
                    break
                except RpcError:
                    await asyncio.sleep(0.0005)
            delays.append(time.monotonic() - answered)
    finally:
        phone.close()
        await control.close()
    return delays


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--registers", type=int, default=20_000, help="REGISTERs (distinct AORs) per run")
    p.add_argument("--users", type=int, default=200, help="REGISTERs in flight (sipp -l)")
    p.add_argument("--samples", type=int, default=200, help="REGISTERs timed from node A to node B")
    args = p.parse_args(argv)
    cluster = PostgresCluster()
    cluster.start()
    figures: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    aggregates: list[float] = []
    delays: list[float] = []
    try:
        for rep in range(args.reps):
            order = ["sqlite", "postgresql"] if rep % 2 == 0 else ["postgresql", "sqlite"]
            for target in order:
                with tempfile.TemporaryDirectory(prefix="sc-bench-") as tmp:
                    work = Path(tmp)
                    db = cluster.new_database() if target == "postgresql" else str(work / "location.db")
                    figures[target].append(one_run(db, args.registers, args.users, work))
                print(f"rep {rep + 1} {target}: {figures[target][-1]:,.0f} REG/s", flush=True)
            with tempfile.TemporaryDirectory(prefix="sc-bench-") as tmp:
                aggregate, seen = two_nodes(cluster.new_database(), args.registers, args.users, args.samples, Path(tmp))
            aggregates.append(aggregate)
            delays += seen
            print(f"rep {rep + 1} two nodes: {aggregate:,.0f} REG/s", flush=True)
    finally:
        cluster.remove()
    for target, values in figures.items():
        print(f"{target:11} median {statistics.median(values):7,.0f} REG/s  (min {min(values):,.0f}, "
              f"max {max(values):,.0f}, {len(values)} runs of {args.registers:,})")
    ratio = statistics.median(figures["postgresql"]) / statistics.median(figures["sqlite"])
    print(f"postgresql / sqlite: {ratio:.2f}x")
    print(f"two nodes   median {statistics.median(aggregates):7,.0f} REG/s  (min {min(aggregates):,.0f}, "
          f"max {max(aggregates):,.0f})")
    q = statistics.quantiles(delays, n=100)
    print(f"visible on node B after A's 200: p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms "
          f"({len(delays)} REGISTERs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

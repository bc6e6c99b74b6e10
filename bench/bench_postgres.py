"""Durable REGISTER/s of one `sipconsole serve` on PostgreSQL against the same on SQLite.

Each run starts the registrar afresh on an empty database (SQLite: a file in a temporary
directory; PostgreSQL: a throwaway server from tests/postgres.py, fsync and synchronous_commit
on, Unix socket) and lets sipp register distinct AORs closed-loop (``-l USERS``: that many in
flight) over UDP; the figure is successful REGISTERs over sipp's elapsed time. Targets
alternate within each repetition; the median of the runs is reported with min and max.

    python bench/bench_postgres.py                # 3 repetitions x 20,000 REGISTERs
    python bench/bench_postgres.py --reps 1 --registers 5000

Runs from the repository root (it starts `python -m registrar_core.cli`, as the tests do).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.postgres import PostgresCluster  # noqa: E402  (the tests' throwaway server)
from tests.processes import SCENARIOS, ServeProcess, write_injection  # noqa: E402
from tests.sipclient import free_port  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--registers", type=int, default=20_000, help="REGISTERs (distinct AORs) per run")
    p.add_argument("--users", type=int, default=200, help="REGISTERs in flight (sipp -l)")
    args = p.parse_args(argv)
    cluster = PostgresCluster()
    cluster.start()
    figures: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    try:
        for rep in range(args.reps):
            order = ["sqlite", "postgresql"] if rep % 2 == 0 else ["postgresql", "sqlite"]
            for target in order:
                with tempfile.TemporaryDirectory(prefix="sc-bench-") as tmp:
                    work = Path(tmp)
                    db = cluster.new_database() if target == "postgresql" else str(work / "location.db")
                    figures[target].append(one_run(db, args.registers, args.users, work))
                print(f"rep {rep + 1} {target}: {figures[target][-1]:,.0f} REG/s", flush=True)
    finally:
        cluster.remove()
    for target, values in figures.items():
        print(f"{target:11} median {statistics.median(values):7,.0f} REG/s  (min {min(values):,.0f}, "
              f"max {max(values):,.0f}, {len(values)} runs of {args.registers:,})")
    ratio = statistics.median(figures["postgresql"]) / statistics.median(figures["sqlite"])
    print(f"postgresql / sqlite: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

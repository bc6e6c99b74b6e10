"""`sipconsole ctl dump` of a large table: wall time and the registrar's memory while it dumps.

For each table size the bindings (one contact per AOR) are written into a fresh database file
before `sipconsole serve` starts (tests/processes.py `write_bindings`); then `ctl --json dump`
and the plain `ctl dump` run ``--runs`` times each, their output to /dev/null. The registrar's
VmHWM is reset (clear_refs) before every dump and read after it: peak RSS during the dump.

    python bench/bench_ctl_dump.py                  # 100,000 and 250,000 bindings
    python bench/bench_ctl_dump.py --sizes 10000    # quicker

Prints a table and writes bench/results/ctl_dump.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common as c  # noqa: E402

from tests.processes import ServeProcess, write_bindings  # noqa: E402

FORMS = {"json": ["--json", "dump"], "plain": ["dump"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ctl dump time and the registrar's peak RSS at large tables.")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 250_000], help="bindings per run")
    p.add_argument("--runs", type=int, default=3, help="dumps per size and form (median reported)")
    return p.parse_args(argv)


def rss_kib(serve: ServeProcess) -> int:
    assert serve.proc is not None
    return c.rss_kib(serve.proc.pid)


def measure(size: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sc-bench-") as tmp:
        serve = ServeProcess(Path(tmp), c.free_port())
        t0 = time.monotonic()
        write_bindings(serve.db, size)
        written = time.monotonic() - t0
        serve.start(timeout=600)
        try:
            point: dict[str, Any] = {"bindings": size, "write_s": round(written, 2),
                                     "rss_before_kib": rss_kib(serve)}
            for form, args in FORMS.items():
                times, growth = [], []
                for _ in range(runs):
                    serve.reset_peak_rss()
                    base = serve.peak_rss_kib()
                    start = time.monotonic()
                    with open(os.devnull, "wb") as null:
                        done = subprocess.run([sys.executable, "-m", "sipconsole", "ctl", "--control",
                                               str(serve.control), *args], stdout=null, stderr=subprocess.PIPE,
                                              timeout=600)
                    times.append(time.monotonic() - start)
                    if done.returncode != 0:
                        raise RuntimeError(f"ctl {' '.join(args)} exited {done.returncode}: {done.stderr.decode()}")
                    growth.append(serve.peak_rss_kib() - base)
                point[form] = {"seconds": [round(t, 2) for t in times], "median_s": round(statistics.median(times), 2),
                               "peak_growth_kib": max(growth)}
            point["peak_rss_kib"] = serve.peak_rss_kib()
            return point
        finally:
            serve.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(c.ROOT)  # `python -m sipconsole` must find this checkout first
    data: dict[str, Any] = {"machine": c.machine(), "revision": c.source_revision(), "points": []}
    rows = []
    for size in args.sizes:
        point = measure(size, args.runs)
        data["points"].append(point)
        rows.append([f"{size:,}", f"{point['json']['median_s']:.1f}", f"{point['plain']['median_s']:.1f}",
                     f"{point['rss_before_kib'] / 1024:.0f}",
                     f"{max(point['json']['peak_growth_kib'], point['plain']['peak_growth_kib']) / 1024:.1f}"])
    print(c.table(["bindings", "--json dump s", "dump s", "RSS MiB", "peak growth MiB"], rows, right={1, 2, 3, 4}))
    print(f"results: {c.write_json('ctl_dump.json', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the open loop saturates, against the closed-loop maximum of the same server start.

One ``sipconsole serve`` start (durable SQLite, as bench_register.py runs it) takes sipp's
closed loop (500 users) first, then open-loop steps at fixed rates (``sipp -r``), each
``--seconds`` long. Per step: REG/s answered against offered, sipp's p50/p99, the server's CPU
per REGISTER, the mean rows per group commit (the registrar's metrics endpoint, the step's
delta) and, from ``perf stat`` syscall counts on the server, its event-loop wake-ups
(``epoll_wait``) and datagrams per read wake-up (each wake-up of the UDP listener ends with one
recvfrom that finds nothing). The question (issue 19.3): at which offered rate does the open
loop stop keeping up, and how far is that from the closed-loop maximum of the same start?

    python bench/bench_openloop.py --nice -10 --output /tmp/x.json      # 70, 80, 90, 100 % of the closed loop
    python bench/bench_openloop.py --rates 26000,30000 --starts 3 --nice -10
    python bench/bench_openloop.py --fractions 0.8 --starts 4 --transport tcp --nice -10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

# Event-loop waits (libuv: epoll_pwait or epoll_wait), datagram reads, and the reads that found nothing.
SYSCALLS = ("syscalls:sys_enter_epoll_pwait", "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_recvfrom",
            "syscalls:sys_exit_recvfrom")


def commit_totals(metrics_port: int) -> tuple[float, float, float]:
    """(group commits, rows, seconds) so far, from the registrar's Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    values = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("sipconsole_group_commit_"))
    return (float(values.get("sipconsole_group_commit_size_count", 0)),
            float(values.get("sipconsole_group_commit_size_sum", 0)),
            float(values.get("sipconsole_group_commit_seconds_sum", 0)))


class SyscallCounter:
    """``perf stat`` of the server's epoll_wait and recvfrom calls while a step runs (None
    when perf is missing or not allowed)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self.proc = subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(out), "-e", SYSCALLS[0], "-e", SYSCALLS[1],
                                          "-e", SYSCALLS[2], "-e", SYSCALLS[3], "--filter", "ret < 0",
                                          "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            self.proc = None

    def stop(self) -> dict[str, int] | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        counts: dict[str, int] = {}
        for line in self.out.read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2] in SYSCALLS and parts[0].isdigit():
                counts[parts[2].split(":")[1]] = int(parts[0])
        return counts or None


def step(server: c.Managed, port: int, metrics_port: int, injection: Path, work: Path, core: int | None,
         seconds: int, rate: int | None, sipp_port: int, transport: str = "udp") -> dict[str, Any]:
    """One closed-loop (``rate`` None) or open-loop step against the running server. Every step
    of a start sends from ``sipp_port``, so the steps refresh the same bindings (the Contact
    carries the port) instead of adding a binding to every AOR each."""
    sampler = c.CpuSampler()
    sampler.start(server.pid)
    before = commit_totals(metrics_port)
    counter = SyscallCounter(server.pid, work / "perf.txt")
    try:
        run = c.run_sipp(port, c.SCENARIOS / "register.xml", injection, work,
                         transport={"udp": "u1", "tcp": "t1"}[transport], users=500,
                         duration=seconds, core=core, sampler=sampler, timeout=seconds + 120, rate=rate,
                         local_port=sipp_port)
        sampler.sample()
    finally:
        syscalls = counter.stop()
        sampler.stop()
    after = commit_totals(metrics_port)
    periods = c.steady_periods(run, None if rate else 500, 2.0)
    answered = run.successful
    row: dict[str, Any] = {"offered": rate, "failed": run.failed, "retransmissions": run.retransmissions,
                           "answered": answered}
    if periods:
        w0, w1 = periods[0]["start"], periods[-1]["end"]
        rtts = [r for t, r in run.rtts if w0 * 1000 <= t <= w1 * 1000]
        cpu = sampler.between(run.started_epoch + w0, run.started_epoch + w1)
        reg_s = sum(p["ok"] for p in periods) / (w1 - w0)
        row.update(reg_per_s=round(reg_s), p50_ms=c.percentile(rtts, 50), p99_ms=c.percentile(rtts, 99),
                   cpu=cpu, us_per_register=round(cpu["server"] * 1e4 / reg_s, 1) if cpu["server"] and reg_s else None)
    commits, rows, secs = (b - a for a, b in zip(before, after))
    if commits:
        row.update(commits=int(commits), rows_per_commit=round(rows / commits, 1),
                   commit_ms_mean=round(secs / commits * 1000, 2))
    if syscalls:
        row["syscalls"] = syscalls
        waits = syscalls.get("sys_enter_epoll_pwait", 0) + syscalls.get("sys_enter_epoll_wait", 0)
        row["loop_waits"] = waits
        if transport == "udp":  # (TCP segments are read with read(), not recvfrom)
            reads, empty = syscalls.get("sys_enter_recvfrom", 0), syscalls.get("sys_exit_recvfrom", 0)
            row.update(datagrams=reads - empty, empty_reads=empty)
            if waits:
                row["datagrams_per_loop_wait"] = round((reads - empty) / waits, 1)
    return row


def describe(row: dict[str, Any]) -> str:
    what = f"open {row['offered']:,}/s ({row.get('of_closed_loop')})" if row["offered"] else "closed 500u"
    cpu = row.get("cpu") or {}
    return (f"{what:>14}: {row.get('reg_per_s', 0):>6,} REG/s p50 {row.get('p50_ms')} p99 {row.get('p99_ms')} ms, "
            f"failed {row['failed']}, retrans {row['retransmissions']}; server {cpu.get('server')} % "
            f"({row.get('us_per_register')} us/REG), other {cpu.get('other')} %; rows/commit "
            f"{row.get('rows_per_commit')}, commit {row.get('commit_ms_mean')} ms; datagrams/loop wait "
            f"{row.get('datagrams_per_loop_wait')} ({row.get('loop_waits')} waits, {row.get('empty_reads')} empty reads)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="", help="open-loop steps, REG/s, comma-separated")
    p.add_argument("--fractions", default="0.7,0.8,0.9,1.0",
                   help="open-loop steps as fractions of the start's closed-loop REG/s (when --rates is not given; "
                        "a loaded machine moves the maximum between starts)")
    p.add_argument("--transport", choices=["udp", "tcp"], default="udp", help="sipp's transport (tcp: one connection)")
    p.add_argument("--seconds", type=int, default=10, help="seconds per step (default 10)")
    p.add_argument("--starts", type=int, default=1, help="server starts, each with all the steps (default 1)")
    p.add_argument("--aors", type=int, default=10_000, help="distinct AORs (default 10,000)")
    p.add_argument("--nice", type=int, default=0, metavar="N", help="nice level of the server and sipp (root)")
    p.add_argument("--output", type=Path, default=c.RESULTS / "openloop.json", help="JSON output path")
    args = p.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    fractions = [] if rates else [float(f) for f in args.fractions.split(",") if f]
    sipp_core, server_core, core_note = c.pick_cores()
    c.pin_self(sipp_core)
    c.NICE = args.nice
    starts: list[dict[str, Any]] = []
    print(f"sipconsole {args.transport.upper()}, closed loop then open-loop steps of {args.seconds} s ({core_note})", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-openloop-") as tmp:
        work = Path(tmp)
        injection = work / "users.csv"
        c.write_injection(injection, 0, args.aors)
        for n in range(args.starts):
            port, metrics_port, sipp_port = c.free_port(), c.free_port(), c.free_port()
            target = dataclasses.replace(c.Target("sipconsole", "sipconsole", "durable"),
                                         options=("--metrics-listen", f"127.0.0.1:{metrics_port}"))
            server = target.start(work / f"server-{n}", port, server_core)
            steps = []
            load = Path("/proc/loadavg").read_text().split()[:3]
            try:
                closed = step(server, port, metrics_port, injection, work / f"sipp-{n}-0", sipp_core,
                              args.seconds, None, sipp_port, args.transport)
                steps.append(closed)
                print(f"start {n}: {describe(closed)}", flush=True)
                maximum = closed.get("reg_per_s") or 0
                for i, rate in enumerate(rates or [round(maximum * f) for f in fractions], 1):
                    row = step(server, port, metrics_port, injection, work / f"sipp-{n}-{i}", sipp_core,
                               args.seconds, rate, sipp_port, args.transport)
                    if maximum:
                        row["of_closed_loop"] = round(rate / maximum, 2)
                    steps.append(row)
                    print(f"start {n}: {describe(row)}", flush=True)
            finally:
                server.stop()
            starts.append({"load_average": load, "steps": steps})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"transport": args.transport, "starts": starts, "machine": c.machine(), "commit": c.source_revision(),
                                       "command": sys.argv, "started": time.time()}, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

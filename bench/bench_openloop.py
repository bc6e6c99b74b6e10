"""The open loop's p99 at a load it really was: each step bracketed by the closed-loop maximum.

One ``sipconsole serve`` start (durable SQLite, as bench_register.py runs it) alternates sipp's
closed loop (500 users: the start's maximum right now) with short open-loop steps at fixed
rates (``sipp -r``): closed, open, closed, open, ..., closed. A step at a fraction of the
maximum offers that fraction of the closed loop just before it, and is judged against that one
AND the one just after it: this VM's phases move CPU per REGISTER by a third within minutes, so
a rate that was 80 % when it was set can be 95 % of the core a minute later, and then anything
queues. Per step: offered REG/s, the two brackets and the offered rate's share of each, the
server's CPU utilization (CPU seconds of the server process / wall seconds, pinned to one core:
the share of its core it needed) and what other processes took of that core, sipp's
p50/p99/max, failed and retransmitted, CPU per REGISTER, rows per group commit (the metrics endpoint, the step's delta) and, from ``perf
stat`` syscall counts, event-loop wake-ups (``epoll_wait``) and datagrams per read wake-up.

A step *held* its fraction when the offered rate was at most fraction + ``--slack`` of both
brackets, the server used at most ``--max-cpu`` % of its core, and other processes (with the
hypervisor's steal) took at most ``--max-neighbours`` % of that core and
``--max-client-neighbours`` % of sipp's (a busy core makes sipp send and read late, and sipp
measures the response times); a step that did not is
listed with the reason, never counted as a run at that fraction. The summary, per fraction:
the median p99 (and range) over the steps that held, how many of them were within
``--target-ms``, and how many did not hold.

sipp's response times come in whole ticks of its clock (4 ms on this VM: kernel HZ 250): a
p99 of 20 ms is 16-24 ms. Each step's JSON has that resolution (the commonest gap between two
neighbouring distinct response times). Each p99 is a nearest-rank percentile of every response in the
step's steady window (a 6 s step at 20,000 REG/s: 80,000 responses, the p99 the 800th worst).
``--wait-quiet`` waits for a quieter machine before each start.

    python bench/bench_openloop.py --fractions 0.8 --repeat 4 --starts 2 --nice -10 --output /tmp/x.json
    python bench/bench_openloop.py --nice -10                 # 70, 80, 90, 100 % of the closed loop, once each
    python bench/bench_openloop.py --fractions 0.8 --repeat 4 --transport tcp --nice -10
    python bench/bench_openloop.py --rates 26000,30000 --starts 3 --nice -10
"""

from __future__ import annotations

import argparse
import collections
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


SLOW_COMMIT_MS = (10, 25, 50)  # bounds of the registrar's commit-time histogram (metrics.py)


def commit_totals(metrics_port: int) -> tuple[float, ...]:
    """(group commits, rows, seconds, then the commits that took longer than each of
    SLOW_COMMIT_MS) so far, from the registrar's Prometheus endpoint. A commit that waits for a
    slow fsync (the disk shared with other jobs) holds back its whole group's answers."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    values = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("sipconsole_group_commit_"))
    count = float(values.get("sipconsole_group_commit_size_count", 0))
    within = [float(values.get(f'sipconsole_group_commit_seconds_bucket{{le="{ms / 1000:g}"}}', count))
              for ms in SLOW_COMMIT_MS]
    return (count, float(values.get("sipconsole_group_commit_size_sum", 0)),
            float(values.get("sipconsole_group_commit_seconds_sum", 0)), *(count - w for w in within))


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
         seconds: int, rate: int | None, sipp_port: int, transport: str = "udp",
         server_core: int | None = None) -> dict[str, Any]:
    """One closed-loop (``rate`` None) or open-loop step against the running server. Every step
    of a start sends from ``sipp_port``, so the steps refresh the same bindings (the Contact
    carries the port) instead of adding a binding to every AOR each."""
    sampler = c.CpuSampler(core=server_core, client_core=core)
    sampler.start(server.pid)
    before = commit_totals(metrics_port)
    switches = c.thread_switches(server.pid)
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
    switched = switches_per_commit(server.pid, switches, c.thread_switches(server.pid), after[0] - before[0])
    # The closed loop is full from its first period; an open loop's first second still ramps.
    periods = c.steady_periods(run, None if rate else 500, 2.0 if rate else 1.0)
    answered = run.successful
    row: dict[str, Any] = {"offered": rate, "failed": run.failed, "retransmissions": run.retransmissions,
                           "answered": answered}
    if periods:
        w0, w1 = periods[0]["start"], periods[-1]["end"]
        rtts = [r for t, r in run.rtts if w0 * 1000 <= t <= w1 * 1000]
        cpu = sampler.between(run.started_epoch + w0, run.started_epoch + w1)
        reg_s = sum(p["ok"] for p in periods) / (w1 - w0)
        row.update(reg_per_s=round(reg_s), responses=len(rtts), p50_ms=c.percentile(rtts, 50),
                   p99_ms=c.percentile(rtts, 99), max_ms=max(rtts, default=None),
                   resolution_ms=resolution(rtts), cpu=cpu,
                   us_per_register=round(cpu["server"] * 1e4 / reg_s, 1) if cpu["server"] and reg_s else None)
    commits, rows, secs, *slow = (b - a for a, b in zip(before, after))
    if commits:
        row.update(commits=int(commits), rows_per_commit=round(rows / commits, 1),
                   commit_ms_mean=round(secs / commits * 1000, 2),
                   commits_over_ms={str(ms): int(n) for ms, n in zip(SLOW_COMMIT_MS, slow)},
                   switches_per_commit=switched)
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


def switches_per_commit(pid: int, before: dict[int, tuple[str, int, int]],
                        after: dict[int, tuple[str, int, int]], commits: float) -> dict[str, list[float]]:
    """Per server thread that switched (``main`` the event loop, the others by thread id; the
    group commit's is the busiest of them): [voluntary, involuntary] context switches per group
    commit over the step (with the whole step's other work: the loop's epoll waits, and the
    GIL handed between the threads that share the server's core)."""
    out: dict[str, list[float]] = {}
    for tid, (name, voluntary, involuntary) in after.items():
        _, v0, n0 = before.get(tid, (name, 0, 0))
        if commits and (voluntary - v0 or involuntary - n0):
            key = "main" if tid == pid else f"{name}-{tid}"
            out[key] = [round((voluntary - v0) / commits, 2), round((involuntary - n0) / commits, 2)]
    return out


def resolution(rtts: list[float]) -> float | None:
    """The commonest gap between two neighbouring distinct response times: the tick of sipp's
    clock (rounded to 0.01 ms: a rare odd value must not pass for the tick)."""
    distinct = sorted(set(rtts))
    gaps = collections.Counter(round(b - a, 2) for a, b in zip(distinct, distinct[1:]))
    return gaps.most_common(1)[0][0] if gaps else None


def judge(row: dict[str, Any], fraction: float | None, before: int, after: int, slack: float,
          max_cpu: float, max_neighbours: float, max_client_neighbours: float) -> None:
    """Set the open step's brackets, the offered rate's share of each and whether it held
    ``fraction`` (``why`` it did not: over a bracket, the server's core near full or shared with
    other processes, no steady window)."""
    offered = row["offered"]
    row["fraction"] = fraction
    row["brackets"] = [before, after]
    row["load"] = [round(offered / b, 3) if b else None for b in (before, after)]
    why = []
    if "p99_ms" not in row:
        why.append("no steady window")
    if fraction is not None:
        if None in row["load"]:
            why.append("a bracket without a steady window")
        elif max(row["load"]) > fraction + slack:
            why.append(f"offered {max(row['load'])} of a bracket")
    cpu = row.get("cpu") or {}
    if cpu.get("server") is None or cpu["server"] > max_cpu:
        why.append(f"server CPU {cpu.get('server')} %")
    if cpu.get("core_others") is not None and cpu["core_others"] > max_neighbours:
        why.append(f"others on its core {cpu['core_others']} %")
    if cpu.get("client_core_others") is not None and cpu["client_core_others"] > max_client_neighbours:
        why.append(f"others on sipp's core {cpu['client_core_others']} %")  # sipp's clock and sends run late
    row["held"] = fraction is not None and not why
    row["why"] = why


def describe(row: dict[str, Any]) -> str:
    cpu = row.get("cpu") or {}
    if row["offered"]:
        load = "/".join(f"{x:.2f}" if x is not None else "-" for x in row["load"])
        what = (f"open {row['offered']:>6,}/s = {load} of {row['brackets'][0]:,}/{row['brackets'][1]:,}: "
                + ("held" if row["held"] else f"NOT {row['fraction']}: " + ", ".join(row["why"]) if row["fraction"]
                   else ", ".join(row["why"]) or "ok"))
    else:
        what = "closed 500u"
    return (f"{what}\n    {row.get('reg_per_s', 0):>6,} REG/s p50 {row.get('p50_ms')} p99 {row.get('p99_ms')} "
            f"max {row.get('max_ms')} ms ({row.get('responses', 0):,} responses), failed {row['failed']}, "
            f"retrans {row['retransmissions']}; server CPU {cpu.get('server')} % of its core "
            f"({row.get('us_per_register')} us/REG), others on its core {cpu.get('core_others')} % "
            f"(steal {cpu.get('core_steal')}), on sipp's {cpu.get('client_core_others')} % (steal "
            f"{cpu.get('client_core_steal')}), other processes "
            f"{cpu.get('other')} %; rows/commit "
            f"{row.get('rows_per_commit')}, commit {row.get('commit_ms_mean')} ms (over 10/25/50 ms: "
            f"{'/'.join(str(n) for n in (row.get('commits_over_ms') or {}).values()) or '-'}); per commit, context "
            f"switches [voluntary, involuntary] by thread {row.get('switches_per_commit')}; datagrams/loop wait "
            f"{row.get('datagrams_per_loop_wait')} ({row.get('loop_waits')} waits, {row.get('empty_reads')} empty reads)")


def summarize(starts: list[dict[str, Any]], target_ms: float) -> list[dict[str, Any]]:
    """Per fraction: the p99s of the steps that held it, and the steps that did not."""
    by_fraction: dict[float, list[dict[str, Any]]] = {}
    for start in starts:
        for row in start["steps"]:
            if row["offered"] and row["fraction"] is not None:
                by_fraction.setdefault(row["fraction"], []).append(row)
    out = []
    for fraction, rows in sorted(by_fraction.items()):
        held = [r["p99_ms"] for r in rows if r["held"]]
        out.append({"fraction": fraction, "steps": len(rows), "held": len(held),
                    "p99_ms_median": c.median(held), "p99_ms_range": [min(held), max(held)] if held else None,
                    f"within_{target_ms:g}_ms": sum(1 for p in held if p <= target_ms),
                    "held_steps": [{"p99_ms": r["p99_ms"], "load": r["load"], "server_cpu": r["cpu"]["server"],
                                    "steal": [r["cpu"].get("core_steal"), r["cpu"].get("client_core_steal")]}
                                   for r in rows if r["held"]],
                    "not_held": [{"p99_ms": r.get("p99_ms"), "load": r["load"], "why": r["why"]}
                                 for r in rows if not r["held"]]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="", help="open-loop steps, REG/s, comma-separated (not judged against a fraction)")
    p.add_argument("--fractions", default="0.7,0.8,0.9,1.0",
                   help="open-loop steps as fractions of the closed loop just before each (when --rates is not given)")
    p.add_argument("--repeat", type=int, default=1, help="steps of each rate or fraction per start (default 1)")
    p.add_argument("--transport", choices=["udp", "tcp"], default="udp", help="sipp's transport (tcp: one connection)")
    p.add_argument("--seconds", type=int, default=6, help="seconds per open-loop step (default 6; the first 2 ramp)")
    p.add_argument("--closed-seconds", type=int, default=5,
                   help="seconds per closed-loop bracket (default 5; the first 1 ramps)")
    p.add_argument("--starts", type=int, default=1, help="server starts, each with all the steps (default 1)")
    p.add_argument("--aors", type=int, default=10_000, help="distinct AORs (default 10,000)")
    p.add_argument("--slack", type=float, default=0.02,
                   help="a step held its fraction up to fraction + this share of a bracket (default 0.02: "
                        "the closed loop's own noise over a few seconds)")
    p.add_argument("--max-cpu", type=float, default=88.0,
                   help="a step held its fraction only if the server used at most this %% of its core (default 88)")
    p.add_argument("--max-neighbours", type=float, default=10.0,
                   help="... and other processes (and the hypervisor's steal) took at most this %% of that core "
                        "(default 10: a neighbour's time slice queues every request behind it)")
    p.add_argument("--max-client-neighbours", type=float, default=20.0,
                   help="... and at most this %% of sipp's core (default 20: this script and perf run there too)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="before each start wait up to S seconds for other processes on the whole machine to go "
                        "below --max-neighbours %% of a core (default 0: do not wait)")
    p.add_argument("--target-ms", type=float, default=20.0, help="the p99 target the summary counts (default 20)")
    p.add_argument("--nice", type=int, default=0, metavar="N", help="nice level of the server and sipp (root)")
    p.add_argument("--output", type=Path, default=c.RESULTS / "openloop.json", help="JSON output path")
    args = p.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    fractions = [] if rates else [float(f) for f in args.fractions.split(",") if f]
    plan: list[tuple[int | None, float | None]] = [(r, None) for r in rates] or [(None, f) for f in fractions]
    plan = [s for s in plan for _ in range(args.repeat)]
    sipp_core, server_core, core_note = c.pick_cores()
    c.pin_self(sipp_core)
    c.NICE = args.nice
    starts: list[dict[str, Any]] = []
    print(f"sipconsole {args.transport.upper()}: closed loop {args.closed_seconds} s, then open-loop steps of "
          f"{args.seconds} s each followed by a closed loop ({core_note})", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-openloop-") as tmp:
        work = Path(tmp)
        injection = work / "users.csv"
        c.write_injection(injection, 0, args.aors)
        for n in range(args.starts):
            if args.wait_quiet:
                print(f"start {n}: other processes at {c.wait_quiet(args.max_neighbours, args.wait_quiet)} % of a core",
                      flush=True)
            port, metrics_port, sipp_port = c.free_port(), c.free_port(), c.free_port()
            target = dataclasses.replace(c.Target("sipconsole", "sipconsole", "durable"),
                                         options=("--metrics-listen", f"127.0.0.1:{metrics_port}"))
            server = target.start(work / f"server-{n}", port, server_core)
            steps: list[dict[str, Any]] = []
            load = Path("/proc/loadavg").read_text().split()[:3]

            def closed(i: int) -> int:
                row = step(server, port, metrics_port, injection, work / f"sipp-{n}-{i}", sipp_core,
                           args.closed_seconds, None, sipp_port, args.transport, server_core)
                steps.append(row)
                print(f"start {n}: {describe(row)}", flush=True)
                return int(row.get("reg_per_s") or 0)

            try:
                maximum = closed(0)
                for i, (rate, fraction) in enumerate(plan, 1):
                    offered = rate or round(maximum * (fraction or 0))
                    if not offered:
                        print(f"start {n}: no closed-loop maximum to take a fraction of", flush=True)
                        break
                    row = step(server, port, metrics_port, injection, work / f"sipp-{n}-{i}o", sipp_core,
                               args.seconds, offered, sipp_port, args.transport, server_core)
                    steps.append(row)
                    before, maximum = maximum, closed(i)
                    judge(row, fraction, before, maximum, args.slack, args.max_cpu, args.max_neighbours,
                          args.max_client_neighbours)
                    print(f"start {n}: {describe(row)}", flush=True)
            finally:
                server.stop()
            starts.append({"load_average": load, "steps": steps})
    summary = summarize(starts, args.target_ms)
    for s in summary:
        print(f"at {s['fraction']:.0%} of the closed loop: {s['held']} of {s['steps']} steps held it; their p99 median "
              f"{s['p99_ms_median']} ms (range {s['p99_ms_range']}), {s[f'within_{args.target_ms:g}_ms']} within "
              f"{args.target_ms:g} ms (" + ", ".join(f"{h['p99_ms']:g} ms at {max(h['load']):.2f}" for h in s["held_steps"])
              + "); not held: "
              + ("; ".join(f"p99 {r['p99_ms']} ms ({', '.join(r['why'])})" for r in s["not_held"]) or "none"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"transport": args.transport, "summary": summary, "starts": starts,
                                       "settings": {k: str(v) for k, v in vars(args).items()},
                                       "machine": c.machine(), "commit": c.source_revision(),
                                       "command": sys.argv, "started": time.time()}, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

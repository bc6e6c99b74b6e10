"""Where an open-loop REGISTER's latency goes: ``sipconsole serve`` probed under sipp ``-r``.

The registrar runs with a probe loaded before it (this file with ``--probe``, wrapped around
``python -m sipconsole serve``): a 1 ms ticker on the event loop (its lateness: stalls,
each split by the loop thread's ``/proc`` schedstat into its own CPU, its wait in the run queue
and blocked time, so that a neighbour's time slice is told from our own work),
``gc.callbacks`` (every collection's pause), every store write timed in three legs (to the
SQLite thread, in it, back to the loop) with the bytes the writer's thread wrote (a commit that
also copied a WAL checkpoint writes megabytes), and, over UDP, each datagram's time from
``datagram_received`` to its reply. The probe costs a few microseconds per request: compare
its runs with each other, not with ``bench_register.py``'s. Beside sipp's p50/p99 it prints
what of the tail each part explains (bench/README.md, "The open-loop tail").

    python bench/bench_tail.py --rate 19000                 # UDP, 10 s
    python bench/bench_tail.py --rate 25000 --transport tcp --nice -10
    python bench/bench_tail.py --table 1500000      # the transaction table's worst single operation

``--table N`` times the transaction table (registrar_core/transactions.py, the build of this
checkout) alone under the churn of N UDP REGISTERs (lookup, begin, complete each, the bound at
200,000 reached after 200,000): each request's CPU time (thread time, so that another process
taking the core does not count) and the worst ones, with the request's number: a dict that
rebuilds itself shows as the same numbers every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

PROBE_ENV = "BENCH_TAIL_OUT"  # where the probe writes its JSON when the registrar exits
PER_WAKE_ENV = "BENCH_TAIL_PER_WAKE"  # datagrams the UDP listener reads per wake-up (--per-wake)


def probe(argv: list[str]) -> None:
    """Run ``-m sipconsole serve ...`` with the probes in place; their records go to
    $BENCH_TAIL_OUT at exit."""
    import asyncio
    import atexit
    import gc
    import runpy

    import collections

    from registrar_core import server, transport
    from registrar_core.location import sqlite_store

    clock = time.perf_counter
    record: dict[str, Any] = {"gc": [], "lateness_ms": {}, "stalls": [], "writes": [], "served": []}

    def wchar() -> int:
        with open("/proc/thread-self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
        return 0

    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = clock()
        else:
            record["gc"].append((info["generation"], clock() - gc_start[0]))

    gc.callbacks.append(on_gc)

    async def ticker() -> None:
        """A 1 ms timer's lateness; a tick 2 ms or more late is a stall, split into the event-loop
        thread's own CPU (the loop's work: ours; its thread clock), its wait in the run queue
        (another thread or process had the core; its schedstat, exact whenever the thread runs,
        as it does when it reads it) and the rest (blocked: the GIL, a syscall)."""
        loop = asyncio.get_running_loop()
        lateness: dict[int, int] = record["lateness_ms"]
        stalls: list[tuple[float, float, float]] = record["stalls"]
        schedstat = open("/proc/thread-self/schedstat", "rb", buffering=0)  # the loop's thread: this one

        def sched() -> tuple[int, int]:
            schedstat.seek(0)
            return time.thread_time_ns(), int(schedstat.read().split()[1])

        while True:  # (perf_counter, not loop.time(): uvloop's is the iteration's start, in whole ms)
            t = clock()
            ran, waited = sched()
            await asyncio.sleep(0.001)
            late = clock() - t - 0.001
            lateness[int(late * 1000)] = lateness.get(int(late * 1000), 0) + 1
            if late >= 0.002:
                ran2, waited2 = sched()
                stalls.append((late * 1000, (ran2 - ran) / 1e6, (waited2 - waited) / 1e6))

    start = server.Server.start

    async def started(self: server.Server) -> None:
        await start(self)
        record["_ticker"] = asyncio.get_running_loop().create_task(ticker())

    server.Server.start = started  # type: ignore[method-assign]
    # The group commit's writes: the store's write_then queues one call into the database thread
    # (sqlite_store._commit), which hands the outcome back itself: the legs and what the thread wrote.
    write_then = sqlite_store.SqliteStore.write_then
    commit = sqlite_store._commit
    queued: collections.deque[list[float]] = collections.deque()  # the thread takes them in order

    def timed_write_then(self: sqlite_store.SqliteStore, batch: Any, done: Any) -> None:
        legs = [clock(), 0.0, 0.0, 0]

        def back(error: Any) -> None:
            now = clock()
            record["writes"].append((legs[1] - legs[0], legs[2] - legs[1], now - legs[2], legs[3], now - legs[0]))
            done(error)

        queued.append(legs)
        write_then(self, batch, back)

    def timed_commit(conn: Any, batch: Any, check: Any, loop: Any, then: Any) -> None:
        legs = queued.popleft()
        legs[1] = clock()
        written = wchar()

        def checked() -> None:  # the write is done: what is left in the thread is a stat
            legs[2], legs[3] = clock(), wchar() - written
            check()

        commit(conn, batch, checked, loop, then)

    sqlite_store.SqliteStore.write_then = timed_write_then  # type: ignore[method-assign]
    sqlite_store._commit = timed_commit  # type: ignore[assignment]
    listener = transport.UdpListener  # compiled (udp.py): its methods cannot be replaced, its core entry point can

    def timed_listener(sock: Any, local: str, receive: Any) -> Any:
        def timed_receive(data: bytes, source: Any, respond: Any) -> None:
            began = clock()

            def answered(reply: Any) -> None:
                record["served"].append(clock() - began)
                respond(reply)

            receive(data, source, answered)

        made = listener(sock, local, timed_receive)
        if os.environ.get(PER_WAKE_ENV):
            made.per_wake = int(os.environ[PER_WAKE_ENV])
        return made

    transport.UdpListener = timed_listener  # type: ignore[misc,assignment]

    def dump() -> None:
        record.pop("_ticker", None)
        served = record["served"]
        record["served"] = served[len(served) // 5:len(served) - len(served) // 10]  # the steady middle
        with open(os.environ[PROBE_ENV], "w") as f:
            json.dump(record, f)

    atexit.register(dump)
    assert argv[:2] == ["-m", "sipconsole"], argv
    sys.argv = ["sipconsole", *argv[2:]]
    runpy.run_module("sipconsole", run_name="__main__", alter_sys=True)


def table_worst(n: int) -> dict[str, Any]:
    """The transaction table's per-request CPU time under n requests' churn (see --table)."""
    import gc

    from registrar_core.transactions import TransactionTable

    table, response, clock = TransactionTable(), b"x" * 400, time.thread_time_ns
    keys = (f"z9hG4bK{i:016x} 127.0.0.1:5061 REGISTER" for i in range(n))
    times: list[int] = []
    gc.disable()  # the collector's pauses are not the table's (bench_tail's probe measures them apart)
    for key in keys:
        began = clock()
        if table.lookup(key) is None:
            table.begin(key)
            table.complete(key, response)
        times.append(clock() - began)
    gc.enable()
    worst = sorted(range(n), key=times.__getitem__)[-8:][::-1]
    ordered = sorted(times)
    return {"requests": n, "p50_us": ordered[n // 2] / 1000, "p99_99_us": ordered[int(n * 0.9999)] / 1000,
            "over_1ms": sum(1 for t in times if t > 1_000_000),
            "worst": [(i, round(times[i] / 1e6, 2)) for i in worst]}


def stall_summary(stalls: list[list[float]]) -> dict[str, Any]:
    """The stalls of 5 ms or more, each as (late, own CPU, run-queue wait, blocked) ms over the tick's
    whole interval (the 1 ms sleep and the lateness), their parts' totals, and the longest own CPU
    in any stall: how long the loop's own work kept a timer waiting."""
    big = [(late, ran, waited, max(0.0, late + 1 - ran - waited)) for late, ran, waited in stalls if late >= 5]
    totals = [round(sum(x[i] for x in big), 1) for i in range(4)]
    return {"over_2ms": len(stalls), "over_5ms": len(big), "ms_late_own_cpu_run_queue_blocked": totals,
            "longest_own_cpu_ms": round(max((x[1] for x in stalls), default=0.0), 2),
            "worst": [[round(v, 2) for v in x] for x in sorted(big, reverse=True)[:8]]}


def describe_stalls(s: dict[str, Any]) -> str:
    late, ran, waited, blocked = s["ms_late_own_cpu_run_queue_blocked"]
    interval = late + s["over_5ms"]  # each tick's interval is its 1 ms sleep and its lateness
    share = (lambda part: f"{part / interval:.0%}") if late else (lambda part: "-")
    return (f"event-loop stalls (a 1 ms timer 5 ms or more late): {s['over_5ms']}, {late} ms late in all: the loop's own "
            f"CPU {share(ran)}, waiting in the run queue (another thread or process on the core) {share(waited)}, "
            f"blocked {share(blocked)}; longest own CPU in a stall {s['longest_own_cpu_ms']} ms; worst (late, own, "
            f"queue, blocked ms): {s['worst'][:4]}")


def quantiles(values: list[float], scale: float = 1000.0) -> str:
    if not values:
        return "-"
    return (f"p50 {c.percentile(values, 50) * scale:.2f} p99 {c.percentile(values, 99) * scale:.2f} "
            f"max {max(values) * scale:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, help="REGISTERs per second offered (sipp -r)")
    p.add_argument("--table", type=int, metavar="N", help="time the transaction table alone under N requests' churn")
    p.add_argument("--transport", choices=["udp", "tcp"], default="udp")
    p.add_argument("--seconds", type=int, default=10, help="seconds of load (default 10)")
    p.add_argument("--per-wake", type=int, metavar="N",
                   help="datagrams the UDP listener reads per wake-up (default: udp.py's DATAGRAMS_PER_WAKE)")
    p.add_argument("--aors", type=int, default=10_000, help="distinct AORs (default 10,000)")
    p.add_argument("--nice", type=int, default=0, metavar="N", help="nice level of the server and sipp (root)")
    p.add_argument("--output", type=Path, default=c.RESULTS / "tail.json", help="JSON output path")
    args = p.parse_args(argv)
    if args.table:
        sys.path.insert(0, str(c.ROOT))
        worst = table_worst(args.table)
        print(f"transaction table, {worst['requests']:,} requests: CPU per request p50 {worst['p50_us']} us, "
              f"p99.99 {worst['p99_99_us']} us, {worst['over_1ms']} over 1 ms; worst (request, ms): {worst['worst']}")
        return 0
    if not args.rate:
        p.error("--rate (or --table) is needed")
    sipp_core, server_core, core_note = c.pick_cores()
    c.pin_self(sipp_core)
    c.NICE = args.nice
    with tempfile.TemporaryDirectory(prefix="bench-tail-") as tmp:
        work = Path(tmp)
        injection = work / "users.csv"
        c.write_injection(injection, 0, args.aors)
        probed = work / "probe.json"
        target = c.Target("sipconsole", "sipconsole", "durable")
        sampler = c.CpuSampler(core=server_core, client_core=sipp_core)
        port = c.free_port()
        env = {PROBE_ENV: str(probed), **({PER_WAKE_ENV: str(args.per_wake)} if args.per_wake else {})}
        server = target.start(work / "server", port, server_core, extra_env=env,
                              wrap=[str(Path(__file__).resolve()), "--probe"])
        try:
            sampler.start(server.pid)
            run = c.run_sipp(port, c.SCENARIOS / "register.xml", injection, work / "sipp",
                             transport={"udp": "u1", "tcp": "t1"}[args.transport], users=500,
                             duration=args.seconds, core=sipp_core, sampler=sampler,
                             timeout=args.seconds + 120, rate=args.rate)
            sampler.sample()
        finally:
            sampler.stop()
            server.stop()
        if not probed.exists():
            print(f"bench_tail: the registrar left no probe record; its log:\n{server.tail()}", file=sys.stderr)
            return 1
        record = json.loads(probed.read_text())
    periods = c.steady_periods(run, None, 2.0)
    if not periods:
        print("bench_tail: no steady period (sipp could not start calls at that rate)", file=sys.stderr)
        return 1
    w0, w1 = periods[0]["start"], periods[-1]["end"]
    rtts = [r for t, r in run.rtts if w0 * 1000 <= t <= w1 * 1000]
    cpu = sampler.between(run.started_epoch + w0, run.started_epoch + w1)
    writes = record["writes"]
    copying = [w for w in writes if w[3] > 512 * 1024]
    lateness = {int(k): v for k, v in record["lateness_ms"].items()}
    collections: dict[int, list[float]] = {}
    for generation, seconds in record["gc"]:
        collections.setdefault(generation, []).append(seconds)
    reg_s = c.median([p["rate"] for p in periods]) or 0
    summary = {
        "transport": args.transport, "offered": args.rate, "per_wake": args.per_wake, "reg_per_s": round(reg_s),
        "sipp_p50_ms": c.percentile(rtts, 50), "sipp_p99_ms": c.percentile(rtts, 99),
        "failed": run.failed, "retransmissions": run.retransmissions, "cpu": cpu,
        "commits": len(writes), "commits_copying_a_checkpoint": len(copying),
        "loop_lateness_ms": dict(sorted(lateness.items())),
        "gc_pauses": {g: len(v) for g, v in collections.items()},
        "us_per_register": round(cpu["server"] * 1e4 / reg_s, 1) if cpu["server"] and reg_s else None,
        "stalls": stall_summary(record["stalls"]),
    }
    lines = [
        f"sipconsole open loop, {args.transport.upper()}, {args.rate:,}/s offered for {args.seconds} s"
        + (f", {args.per_wake} datagrams per wake-up" if args.per_wake else "") + f" ({core_note})",
        f"sipp: {summary['reg_per_s']:,} REG/s, p50 {summary['sipp_p50_ms']} ms, p99 {summary['sipp_p99_ms']} ms, "
        f"failed {run.failed}, retransmissions {run.retransmissions}; CPU % server {cpu['server']} "
        f"({summary['us_per_register']} us/REG), sipp {cpu['sipp']}, other {cpu['other']}; others on the "
        f"server's core {cpu.get('core_others')} (steal {cpu.get('core_steal')}), on sipp's "
        f"{cpu.get('client_core_others')} (steal {cpu.get('client_core_steal')})",
        f"group commits ({len(writes)}), ms: whole {quantiles([w[4] for w in writes])}; to the SQLite thread "
        f"{quantiles([w[0] for w in writes])}; in it {quantiles([w[1] for w in writes])}; back to the loop "
        f"{quantiles([w[2] for w in writes])}",
        f"commits that also copied a WAL checkpoint (> 512 KiB written): {len(copying)}"
        + (f", ms {quantiles([w[4] for w in copying])}" if copying else ""),
        "event-loop lateness of a 1 ms timer, ms (count): "
        + (", ".join(f"{k}: {v}" for k, v in sorted(lateness.items()) if k >= 2) or "never 2 ms or more"),
        describe_stalls(summary["stalls"]),
        "garbage collections: " + ("; ".join(f"generation {g}: {len(v)}, pause {quantiles(v)} ms"
                                             for g, v in sorted(collections.items())) or "none"),
    ]
    if args.transport == "udp" and record["served"]:  # (over TCP only the start's UDP probe would be there)
        served = record["served"]
        summary["served_p50_ms"], summary["served_p99_ms"] = c.percentile(served, 50), c.percentile(served, 99)
        lines.append(f"each datagram from its arrival in the registrar to its reply, ms: {quantiles(served)} "
                     "(sipp's figure less this: the socket's queue and sipp itself)")
    print("\n".join(lines))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"summary": summary, "machine": c.machine(), "commit": c.source_revision(),
                                       "command": sys.argv}, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        probe(sys.argv[2:])
    else:
        sys.exit(main())

"""Durable REGISTER/s of one `sipconsole serve` on PostgreSQL beside the same on SQLite and
Kamailio (usrloc db_mode 3 on PostgreSQL, and in memory); then two sipconsole nodes sharing one
PostgreSQL database: aggregate REGISTER/s and the delay until the other node sees a binding.

Targets, alternating within each repetition (the order rotates from one repetition to the next),
each run on a fresh server and an empty database:

* ``sipconsole-postgres``: ``serve --db postgresql://...`` (group commit, 200 after COMMIT);
* ``sipconsole-sqlite``: ``serve`` on its default SQLite file (WAL, synchronous=FULL);
* ``kamailio-postgres``: ``bench/kamailio/registrar-postgres.cfg``, usrloc db_mode 3 (DB only),
  on Kamailio's own location schema;
* ``kamailio-memory``: ``bench/kamailio/registrar-memory.cfg``, usrloc db_mode 0.

PostgreSQL is a throwaway server (tests/postgres.py: initdb in a temporary directory, Unix socket
only, fsync and synchronous_commit on), one database per run. sipp registers ``--registers``
distinct AORs closed loop (``--users`` in flight, UDP); REG/s is sipp's successful calls over its
own elapsed time; after the run the rows in the database are counted (a durable target must hold
one per AOR); the registrar's group commits (mean size, mean time until durable) come from its
metrics endpoint. Two nodes: sipp registers half the AORs through each node at once (aggregate
REG/s: all successful REGISTERs over the span from the first sipp's start to the last one's end),
then the time until both nodes' memory holds every binding; then, under an open-loop load below
saturation and with none, REGISTERs through node A are timed from A's 200 until ``show`` on node
B's control socket finds the binding (p50/p99 of that delay).

    python bench/bench_postgres.py                       # 3 repetitions x 50,000 REGISTERs
    python bench/bench_postgres.py --reps 5 --registers 20000
    python bench/bench_postgres.py --targets sipconsole-postgres --profile py-spy

Runs from any directory (it starts ``python -m sipconsole`` from this checkout, as the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402
from registrar_core.control import NOT_FOUND, ControlClient, RpcError  # noqa: E402
from tests.postgres import PostgresCluster, bin_dir  # noqa: E402  (the tests' throwaway server)
from tests.sipclient import UdpPhone, next_aor  # noqa: E402

TARGETS = ("sipconsole-postgres", "sipconsole-sqlite", "kamailio-postgres", "kamailio-memory")
SCENARIO = c.SCENARIOS / "register.xml"
SEEN_TIMEOUT = 5.0  # a binding not visible on node B within this is counted as not seen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--registers", type=int, default=50_000,
                   help="REGISTERs (distinct AORs) per run (default 50,000: a few seconds at full speed)")
    p.add_argument("--users", type=int, default=200, help="REGISTERs in flight (sipp -users; default 200)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma list (default {','.join(TARGETS)})")
    p.add_argument("--kamailio-children", type=int, default=8,
                   help="Kamailio UDP workers for kamailio-postgres (default 8, the stock kamailio.cfg's: "
                        "each blocks on its database round trip)")
    p.add_argument("--no-two-nodes", action="store_true", help="skip the two-node runs")
    p.add_argument("--samples", type=int, default=200,
                   help="REGISTERs timed from node A to node B with no load (default 200)")
    p.add_argument("--visible-rate", type=int, default=1000,
                   help="REG/s offered to each of the two nodes while the delay to the other node is "
                        "timed under load (open loop; default 1,000)")
    p.add_argument("--visible-seconds", type=float, default=10, help="seconds of that load (default 10)")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="run the servers and sipp at this nice level (negative needs root)")
    p.add_argument("--noisy", type=float, default=25.0, metavar="PCT",
                   help="a run during which other processes used more than PCT%% of a core is flagged noisy")
    p.add_argument("--profile", choices=["py-spy"],
                   help="attach py-spy to sipconsole-postgres in each of its runs and print its hot spots")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, sipp files)")
    p.add_argument("--output", default="postgres.json", help="file name in bench/results/ (default postgres.json)")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in args.targets:
        if t not in TARGETS:
            p.error(f"unknown target {t!r} (choose from {', '.join(TARGETS)})")
    if args.registers <= args.users or args.users < 2:
        p.error("--registers must exceed --users, and --users must be at least 2")
    if args.profile and shutil.which("py-spy") is None:
        p.error("--profile py-spy: py-spy is not installed (pip install py-spy)")
    return args


# -- what can run -------------------------------------------------------------------------

def skipped_targets(targets: list[str]) -> dict[str, str]:
    """Target -> why it cannot run on this machine."""
    why: dict[str, str] = {}
    if shutil.which("sipp") is None:
        return {t: "sipp is not installed (Debian sip-tester)" for t in targets}
    postgres_missing = None
    try:
        bin_dir()
    except RuntimeError as exc:
        postgres_missing = str(exc)
    asyncpg_missing = None if importlib.util.find_spec("asyncpg") else \
        "asyncpg is not installed (pip install 'sipconsole[postgresql]')"
    for t in targets:
        if t in ("sipconsole-postgres", "kamailio-postgres") and postgres_missing:
            why[t] = postgres_missing
        elif t == "sipconsole-postgres" and asyncpg_missing:
            why[t] = asyncpg_missing
        elif t == "kamailio-postgres":
            ok, reason = c.kamailio_postgres_available()
            if not ok:
                why[t] = reason
        elif t == "kamailio-memory":
            ok, reason = c.kamailio_available()
            if not ok:
                why[t] = reason
    return why


# -- databases ----------------------------------------------------------------------------

def postmaster_pid(cluster: PostgresCluster) -> int:
    """The PostgreSQL server's PID (its backends are its children: their CPU is the database's)."""
    return int((cluster.data / "postmaster.pid").read_text().split("\n", 1)[0])


def new_database(cluster: PostgresCluster, target: str) -> str:
    dsn = cluster.new_database()
    if target == "kamailio-postgres":
        cluster.query(dsn, c.kamailio_postgres_schema())
    return dsn


def rows_stored(cluster: PostgresCluster | None, target: str, dsn: str | None, work: Path) -> int | None:
    """Bindings in the run's database once the server has stopped (None: kept in memory only)."""
    if target == "sipconsole-sqlite":
        with contextlib.closing(sqlite3.connect(work / "location.db")) as db:
            return int(db.execute("SELECT count(*) FROM contacts").fetchone()[0])
    if dsn is None or cluster is None:
        return None
    table = "location" if target == "kamailio-postgres" else "contacts"
    return int(cluster.query(dsn, f"SELECT count(*) FROM {table}")[0])


# -- one single-node run ------------------------------------------------------------------

def make_target(name: str, dsn: str | None, children: int, metrics_port: int) -> c.Target:
    if name.startswith("sipconsole"):
        return c.Target(name, "sipconsole", "durable", dsn=dsn, options=("--metrics-listen", f"127.0.0.1:{metrics_port}"))
    if name == "kamailio-postgres":
        return c.Target(name, "kamailio", "postgres", dsn=dsn, children=children)
    return c.Target(name, "kamailio", "memory")


def sipp_rate(run: c.SippRun) -> float | None:
    """Successful REGISTERs over sipp's elapsed time (its statistics' first start to last row)."""
    if not run.rows:
        return None
    elapsed = run.ended_epoch - run.started_epoch
    return run.successful / elapsed if elapsed > 0 else None


def one_run(name: str, rep: int, args: argparse.Namespace, cluster: PostgresCluster | None, work: Path,
            injection: Path, cores: tuple[int | None, int | None]) -> dict[str, Any]:
    sipp_core, server_core = cores
    rundir = work / f"{name}-{rep}"
    dsn = new_database(cluster, name) if cluster is not None and name.endswith("-postgres") else None
    port = c.free_port()
    result: dict[str, Any] = {"target": name, "rep": rep}
    sampler, db_sampler = c.CpuSampler(), c.CpuSampler()
    metrics_port = c.free_port()
    server = make_target(name, dsn, args.kamailio_children, metrics_port).start(rundir, port, server_core)
    commits: dict[str, float | None] = {}
    profiler = None
    try:
        sampler.start(server.pid)
        if cluster is not None and dsn is not None:
            db_sampler.start(postmaster_pid(cluster))
        if args.profile and name == "sipconsole-postgres":
            profiler = subprocess.Popen(["py-spy", "record", "--nonblocking", "-f", "raw", "-o",
                                         str(rundir / "py-spy.txt"), "-p", str(server.pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run = c.run_sipp(port, SCENARIO, injection, rundir / "sipp", users=args.users, calls=args.registers,
                         core=sipp_core, sampler=sampler, timeout=900)
        if name.startswith("sipconsole"):
            commits = c.group_commits(metrics_port)
    finally:
        sampler.stop()
        db_sampler.stop()
        if profiler is not None:
            profiler.send_signal(2)  # SIGINT: py-spy writes its samples
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
        server.stop()
    end = run.ended_epoch
    cpu = sampler.between(run.started_epoch, end)
    db_cpu = db_sampler.between(run.started_epoch, end)["server"] if dsn is not None else None
    other = cpu["other"]
    if other is not None and db_cpu is not None:
        other = round(max(0.0, other - db_cpu), 1)
    rtts = [ms for _, ms in run.rtts]
    rate = sipp_rate(run)
    result.update({
        "reg_per_s": rate, "successful": run.successful, "failed": run.failed,
        "retransmissions": run.retransmissions, "sipp_returncode": run.returncode,
        "p50_ms": c.percentile(rtts, 50), "p99_ms": c.percentile(rtts, 99),
        "rows": rows_stored(cluster, name, dsn, rundir), "cpu_server_pct": cpu["server"], "cpu_db_pct": db_cpu,
        "cpu_sipp_pct": cpu["sipp"], "cpu_other_pct": other, "noisy": other is not None and other > args.noisy,
        "errors": run.errors[:5], **commits,
        # CPU per REGISTER: what a loaded machine disturbs least (it slows everything alike).
        "server_us_per_reg": _per_reg(cpu["server"], rate), "db_us_per_reg": _per_reg(db_cpu, rate),
    })
    if profiler is not None:
        result["profile"] = str(rundir / "py-spy.txt")
    return result


# -- two nodes ------------------------------------------------------------------------------

async def visibility(a_port: int, b_control: Path, count: int | None, until: threading.Event | None) -> dict[str, Any]:
    """REGISTERs through node A, each timed from A's 200 to ``show`` finding it on node B: ``count``
    of them, or as many as fit until ``until`` is set. One at a time."""
    phone = await UdpPhone(("127.0.0.1", a_port)).open()
    control = await ControlClient(b_control).connect()
    delays: list[float] = []
    not_answered = not_seen = 0
    try:
        while (count is None or len(delays) + not_seen < count) and not (until is not None and until.is_set()):
            aor = next_aor("seen")
            try:
                response = await phone.register(aor)
            except asyncio.TimeoutError:
                not_answered += 1
                continue
            answered = time.monotonic()
            if response.status != 200:
                not_answered += 1
                continue
            while True:
                try:
                    await control.call("show", aor=aor)
                    delays.append(time.monotonic() - answered)
                    break
                except RpcError as exc:
                    if exc.code != NOT_FOUND:
                        raise
                if time.monotonic() - answered > SEEN_TIMEOUT:
                    not_seen += 1
                    break
                await asyncio.sleep(0.0005)
    finally:
        phone.close()
        await control.close()
    return {"samples": len(delays), "not_answered": not_answered, "not_seen": not_seen,
            "p50_ms": _ms(c.percentile(delays, 50)), "p99_ms": _ms(c.percentile(delays, 99)),
            "max_ms": _ms(max(delays, default=None)), "delays_ms": [_ms(d) for d in delays]}


def _per_reg(cpu_pct: float | None, rate: float | None) -> float | None:
    """Microseconds of CPU per REGISTER from a CPU share (percent of one core) and REG/s."""
    return None if cpu_pct is None or not rate else round(cpu_pct / 100 / rate * 1e6, 1)


def _seconds(value: float | None) -> str:
    return "not within 120 s" if value is None else f"{value:.2f} s"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def both_nodes(ports: list[int], rundir: Path, phase: str, first_aor: int, calls: int, users: int,
               rate: int | None = None, seconds: float | None = None) -> list[c.SippRun]:
    """One sipp per node at once, each on AORs of its own; returns when both have finished."""
    runs: list[c.SippRun | None] = [None, None]

    def load(i: int) -> None:
        injection = rundir / f"{phase}-users-{i}.csv"
        c.write_injection(injection, first_aor + i * calls, calls)
        runs[i] = c.run_sipp(ports[i], SCENARIO, injection, rundir / f"{phase}-sipp-{i}", users=users,
                             calls=calls, rate=rate, timeout=(seconds or 0) + 900)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in runs if r is not None]


def span_rate(runs: list[c.SippRun]) -> float | None:
    """All successful REGISTERs over the span from the first sipp's start to the last one's end."""
    done = [r for r in runs if r.rows]
    if not done:
        return None
    span = max(r.ended_epoch for r in done) - min(r.started_epoch for r in done)
    return sum(r.successful for r in done) / span if span > 0 else None


def caught_up(controls: list[Path], bindings: int, timeout: float = 120.0) -> float | None:
    """Seconds until every node's memory holds ``bindings`` contacts (None: not within ``timeout``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(c.control_call(path, "stats")["location_contacts"] >= bindings for path in controls):
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def two_nodes(rep: int, args: argparse.Namespace, cluster: PostgresCluster, work: Path) -> dict[str, Any]:
    """Two nodes on one fresh database, unpinned (they, PostgreSQL and two sipps share the cores).

    1. Both at full speed (closed loop): aggregate REG/s, then how long until each node's memory
       holds every binding (the feed's backlog drained).
    2. Both at ``--visible-rate`` REG/s each (open loop, below saturation) while REGISTERs through
       A are timed until B shows them; 3. the same with no load."""
    dsn = cluster.new_database()
    rundir = work / f"two-nodes-{rep}"
    nodes, ports = [], []
    half, users = args.registers // 2, max(1, args.users // 2)
    try:
        for name in ("a", "b"):
            ports.append(c.free_port())
            nodes.append(c.Target(f"node-{name}", "sipconsole", "durable", dsn=dsn).start(rundir / name, ports[-1], None))
        controls = [rundir / name / "control.sock" for name in ("a", "b")]
        closed = both_nodes(ports, rundir, "closed", 1_000_000, half, users)
        catch_up = caught_up(controls, sum(r.successful for r in closed))
        loaded = threading.Event()
        opened: list[c.SippRun] = []
        calls = int(args.visible_rate * args.visible_seconds)

        def open_load() -> None:
            opened.extend(both_nodes(ports, rundir, "open", 3_000_000, calls, max(10, args.visible_rate // 20),
                                     rate=args.visible_rate, seconds=args.visible_seconds))
            loaded.set()

        loader = threading.Thread(target=open_load)
        loader.start()
        under_load = asyncio.run(visibility(ports[0], controls[1], None, loaded))
        loader.join()
        idle = asyncio.run(visibility(ports[0], controls[1], args.samples, None))
    finally:
        for node in nodes:
            node.stop()
    return {"rep": rep, "aggregate_reg_per_s": span_rate(closed), "successful": sum(r.successful for r in closed),
            "failed": sum(r.failed for r in closed + opened), "caught_up_s": catch_up,
            "open_reg_per_s": span_rate(opened), "rows": int(cluster.query(dsn, "SELECT count(*) FROM contacts")[0]),
            "visible_under_load": under_load, "visible_idle": idle}


# -- summary --------------------------------------------------------------------------------

def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def spread(values: list[float], fmt: str = ",.0f") -> str:
    """median (min-max)"""
    if not values:
        return "n/a"
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def summarize(runs: list[dict[str, Any]], targets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in targets:
        mine = [r for r in runs if r["target"] == t and r["reg_per_s"]]
        if not mine:
            continue
        rates = [r["reg_per_s"] for r in mine]
        out[t] = {"reg_per_s_median": statistics.median(rates), "reg_per_s_min": min(rates),
                  "reg_per_s_max": max(rates), "runs": len(mine),
                  "p50_ms_median": c.median([r["p50_ms"] for r in mine if r["p50_ms"] is not None]),
                  "p99_ms_median": c.median([r["p99_ms"] for r in mine if r["p99_ms"] is not None]),
                  "failed": sum(r["failed"] for r in mine), "noisy_runs": sum(bool(r["noisy"]) for r in mine),
                  "cpu_server_pct_median": c.median([r["cpu_server_pct"] for r in mine if r["cpu_server_pct"] is not None]),
                  "cpu_db_pct_median": c.median([r["cpu_db_pct"] for r in mine if r["cpu_db_pct"] is not None]),
                  "server_us_per_reg_median": c.median([r["server_us_per_reg"] for r in mine
                                                        if r["server_us_per_reg"] is not None]),
                  "db_us_per_reg_median": c.median([r["db_us_per_reg"] for r in mine if r["db_us_per_reg"] is not None]),
                  "commit_rows_median": c.median([r["commit_rows_mean"] for r in mine if r.get("commit_rows_mean")]),
                  "commit_ms_median": c.median([r["commit_ms_mean"] for r in mine if r.get("commit_ms_mean")])}
    return out


def ratios(runs: list[dict[str, Any]], summary: dict[str, Any], ours: str) -> dict[str, Any]:
    """``ours`` over every other target: ratio of the medians and the range of per-repetition ratios."""
    out: dict[str, Any] = {}
    if ours not in summary:
        return out
    by_rep = {(r["target"], r["rep"]): r["reg_per_s"] for r in runs if r["reg_per_s"]}
    for other in summary:
        if other == ours:
            continue
        per_rep = [by_rep[(ours, rep)] / by_rep[(other, rep)] for (t, rep) in by_rep
                   if t == other and (ours, rep) in by_rep]
        out[other] = {"median_ratio": summary[ours]["reg_per_s_median"] / summary[other]["reg_per_s_median"],
                      "per_rep_min": min(per_rep, default=None), "per_rep_max": max(per_rep, default=None)}
    return out


def hot_spots(paths: list[Path], top: int = 15) -> list[tuple[str, float]]:
    """Leaf functions of py-spy's collapsed stacks ("a;b;c COUNT" per line), as a share of samples
    (with the event loop idle, the leaf is ``Runner.run``)."""
    leaves: dict[str, int] = {}
    total = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1].strip()) or "(unknown)"  # per function
            leaves[leaf] = leaves.get(leaf, 0) + int(count)
            total += int(count)
    return [(leaf, n / total * 100) for leaf, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]] if total else []


def report(args: argparse.Namespace, runs: list[dict[str, Any]], pairs: list[dict[str, Any]],
           skipped: dict[str, str], notes: list[str]) -> dict[str, Any]:
    summary = summarize(runs, args.targets)
    rows = []
    for t in args.targets:
        s = summary.get(t)
        if s is None:
            rows.append([t, f"skipped: {skipped.get(t, 'no run succeeded')}", "", "", "", "", "", "", ""])
            continue
        mine = [r for r in runs if r["target"] == t]
        stored = [r["rows"] for r in mine]
        rows.append([t, spread([r["reg_per_s"] for r in mine if r["reg_per_s"]]),
                     f"{round(s['p50_ms_median'], 1):g}/{round(s['p99_ms_median'], 1):g}" if s["p99_ms_median"] is not None else "n/a",
                     str(s["failed"]),
                     "memory" if stored[0] is None else ("all" if all(n == args.registers for n in stored)
                                                         else "/".join(map(str, stored))),
                     _fmt(s["server_us_per_reg_median"]), _fmt(s["db_us_per_reg_median"]),
                     "" if s["commit_ms_median"] is None else f"{s['commit_rows_median']:.0f} / {s['commit_ms_median']:.1f}",
                     str(s["noisy_runs"])])
    print()
    print(c.table(["target", "REG/s median (min-max)", "p50/p99 ms", "failed", "rows", "srv us/REG", "db us/REG",
                   "commit rows / ms", "noisy"],
                  rows, right={2, 3, 5, 6, 7, 8}))
    ratio = ratios(runs, summary, "sipconsole-postgres")
    for other, r in ratio.items():
        print(f"sipconsole-postgres / {other}: {r['median_ratio']:.2f}x "
              f"(per repetition {r['per_rep_min']:.2f}-{r['per_rep_max']:.2f})")
    two: dict[str, Any] = {}
    if pairs:
        aggregates = [p["aggregate_reg_per_s"] for p in pairs if p["aggregate_reg_per_s"]]
        two = {"aggregate_reg_per_s": aggregates, "runs": pairs}
        catch_ups = [p["caught_up_s"] for p in pairs if p["caught_up_s"] is not None]
        opened = [p["open_reg_per_s"] for p in pairs if p["open_reg_per_s"]]
        two["caught_up_s"] = [p["caught_up_s"] for p in pairs]
        print(f"two nodes on one PostgreSQL: aggregate {spread(aggregates)} REG/s, "
              f"failed {sum(p['failed'] for p in pairs)}; every binding in both nodes' memory "
              f"{spread(catch_ups, '.2f')} s after that load ({len(pairs) - len(catch_ups)} runs not within 120 s)")
        for key, label in (("visible_under_load", f"under {spread(opened)} REG/s in all"),
                           ("visible_idle", "with no other load")):
            p99s = [p[key]["p99_ms"] for p in pairs if p[key]["p99_ms"] is not None]
            p50s = [p[key]["p50_ms"] for p in pairs if p[key]["p50_ms"] is not None]
            samples = sum(p[key]["samples"] for p in pairs)
            lost = sum(p[key]["not_seen"] for p in pairs)
            two[key] = {"p50_ms": p50s, "p99_ms": p99s, "samples": samples, "not_seen": lost}
            print(f"  visible on node B after A's 200, {label}: p50 {spread(p50s, '.1f')} ms, "
                  f"p99 {spread(p99s, '.1f')} ms ({samples} REGISTERs, {lost} not seen within {SEEN_TIMEOUT:g} s)")
    for note in notes:
        print(f"note: {note}")
    profiles = hot_spots([Path(r["profile"]) for r in runs if r.get("profile")])
    if profiles:
        print("\nsipconsole-postgres hot spots (py-spy, leaf frames, % of samples):")
        for leaf, share in profiles:
            print(f"  {share:5.1f}  {leaf}")
    return {"summary": summary, "ratios_sipconsole_postgres": ratio, "two_nodes": two,
            "hot_spots": [{"frame": leaf, "pct": share} for leaf, share in profiles]}


# -- main -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sipp_core, server_core, core_note = c.pick_cores()
    c.pin_self(sipp_core)
    c.NICE = args.nice
    notes = [core_note, "PostgreSQL is not pinned (it stands for a database server of its own)"]
    skipped = skipped_targets(args.targets)
    for t, why in skipped.items():
        print(f"{t}: skipped: {why}", flush=True)
    runnable = [t for t in args.targets if t not in skipped]
    want_cluster = any(t.endswith("-postgres") for t in runnable)
    two_nodes_skip = "--no-two-nodes" if args.no_two_nodes else skipped_targets(["sipconsole-postgres"]).get(
        "sipconsole-postgres")
    if two_nodes_skip:
        notes.append(f"two nodes skipped: {two_nodes_skip}")
    work = Path(tempfile.mkdtemp(prefix="sc-bench-pg-"))
    cluster = PostgresCluster() if want_cluster or not two_nodes_skip else None
    runs: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        if cluster is not None:
            cluster.start()
        injection = work / "users.csv"
        c.write_injection(injection, 0, args.registers)
        for rep in range(args.reps):
            order = runnable[rep % len(runnable):] + runnable[:rep % len(runnable)] if runnable else []
            for name in order:
                result = one_run(name, rep, args, cluster, work, injection, (sipp_core, server_core))
                runs.append(result)
                rate = f"{result['reg_per_s']:,.0f}" if result["reg_per_s"] else "n/a"
                print(f"rep {rep + 1} {name:20} {rate:>8} REG/s  failed {result['failed']}  rows {result['rows']}"
                      f"  srv {result['cpu_server_pct']}%  db {result['cpu_db_pct']}%  other {result['cpu_other_pct']}%",
                      flush=True)
            if not two_nodes_skip and cluster is not None:
                pair = two_nodes(rep, args, cluster, work)
                pairs.append(pair)
                print(f"rep {rep + 1} two nodes            {pair['aggregate_reg_per_s'] or 0:>8,.0f} REG/s  "
                      f"caught up after {_seconds(pair['caught_up_s'])}; p99 visible on B: "
                      f"{pair['visible_under_load']['p99_ms']} ms under {pair['open_reg_per_s'] or 0:,.0f} REG/s, "
                      f"{pair['visible_idle']['p99_ms']} ms idle", flush=True)
        figures = report(args, runs, pairs, skipped, notes)
        data = {"started": started.isoformat(timespec="seconds"), "command": sys.argv,
                "revision": c.source_revision(), "machine": c.machine(),
                "settings": {k: v for k, v in vars(args).items()}, "skipped": skipped, "notes": notes,
                "runs": runs, **figures}
        print(f"\nJSON: {c.write_json(args.output, data)}")
    finally:
        if cluster is not None:
            cluster.remove()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

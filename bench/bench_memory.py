"""Memory per contact and restart time of ``sipconsole serve`` (durable default).

1. Start the registrar on an empty database and read its VmRSS (baseline).
2. Register distinct AORs with sipp (closed loop, UDP) until 10,000, then 100,000 bindings are
   held; check the count with the control socket's ``stats``; read VmRSS right after the burst
   and again once the transaction table has let go of the burst (Timer J, 32 s, then one request
   so that it purges). RSS per contact = (RSS - baseline) / bindings.
3. Restart with 100,000 bindings: SIGTERM, then time from process start until the control socket
   answers and ``stats`` shows every binding (and the same after SIGKILL, i.e. crash recovery),
   and the CPU time the registrar process had used by then (what a busy machine leaves alone).
   The RSS after a restart (bindings loaded, no request history) is the cleanest per-contact figure.

When Kamailio is installed, the same is done for reference with Kamailio usrloc in SQLite
(db_mode 1; memory as PSS of its process tree, restart until it answers SIP).

    python bench/bench_memory.py           # 10k and 100k bindings, 3 restarts
    python bench/bench_memory.py --quick   # 2k and 10k bindings, no settling, 1 restart

Prints a table and writes bench/results/memory.json (``--output`` elsewhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

TIMER_J = 32.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="RSS per contact and restart time of sipconsole serve.",
                                epilog="Writes bench/results/memory.json.")
    p.add_argument("--quick", action="store_true", help="2k and 10k bindings, no settling, 1 restart")
    p.add_argument("--counts", help="comma list of binding counts (default 10000,100000)")
    p.add_argument("--restarts", type=int, help="restarts timed per kind (default 3)")
    p.add_argument("--settle", type=float, help=f"seconds to wait for the transaction table to expire "
                                                f"(default {TIMER_J + 2:.0f}; 0 skips)")
    p.add_argument("--users", type=int, default=500, help="concurrent sipp users while registering (default 500)")
    p.add_argument("--no-kamailio", action="store_true", help="skip the Kamailio reference")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="run the server and sipp at this nice level (negative needs root; on a shared "
                        "machine -10 keeps other jobs from skewing the figures; default 0)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--output", type=Path, default=c.RESULTS / "memory.json", help="JSON output path")
    args = p.parse_args(argv)
    args.counts = [int(x) for x in (args.counts or ("2000,10000" if args.quick else "10000,100000")).split(",")]
    if args.counts != sorted(args.counts) or args.counts[0] <= 0:
        p.error("--counts must be increasing and positive")
    args.restarts = args.restarts or (1 if args.quick else 3)
    args.settle = args.settle if args.settle is not None else (0.0 if args.quick else TIMER_J + 2)
    return args


def register(port: int, start: int, count: int, work: Path, users: int, core: int | None) -> c.SippRun:
    injection = work / f"aors-{start}-{start + count}.csv"
    c.write_injection(injection, start, count)
    run = c.run_sipp(port, c.SCENARIOS / "register.xml", injection, work / f"sipp-{start}", transport="u1",
                     users=min(users, count), calls=count, core=core, rtt=False, timeout=600)
    return run


def stats(control: Path) -> dict[str, Any]:
    return c.control_call(control, "stats")


def wait_contacts(control: Path, want: int, proc: c.Managed, timeout: float = 300) -> tuple[float | None, float]:
    """Poll the control socket until ``stats`` shows ``want`` contacts.

    Returns (seconds until the control socket first answered, seconds until it showed them all),
    both since the process was started.
    """
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"registrar exited {proc.proc.returncode}:\n{proc.tail()}")
        try:
            got = stats(control).get("location_contacts")
            if first is None:
                first = time.monotonic() - proc.started
            if got == want:
                return first, time.monotonic() - proc.started
        except (OSError, RuntimeError, ValueError):
            pass
        time.sleep(0.005)
    raise RuntimeError(f"stats never showed {want} contacts")


def ctl_stats_cli(control: Path) -> dict[str, Any] | str:
    """`sipconsole ctl --json stats`, as an operator would run it."""
    done = subprocess.run([sys.executable, "-m", "sipconsole", "ctl", "--control", str(control), "--json",
                           "stats"], capture_output=True, text=True, cwd=c.ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(c.ROOT)})
    if done.returncode != 0:
        return done.stderr.strip()
    return json.loads(done.stdout)


def poke(port: int) -> None:
    """One request, so that the transaction table purges what Timer J has expired."""
    c.sip_probe(port, "OPTIONS")


def measure_sipconsole(args: argparse.Namespace, work: Path, cores: tuple[int | None, int | None]) -> dict[str, Any]:
    sipp_core, server_core = cores
    target = c.Target("sipconsole", "sipconsole", "durable")
    port = c.free_port()
    sdir = work / "sipconsole"
    control = sdir / "server" / "control.sock"
    out: dict[str, Any] = {"target": "sipconsole serve (durable)", "points": [], "restarts": []}
    server = target.start(sdir / "server", port, server_core)
    try:
        time.sleep(0.5)
        base = c.rss_kib(server.pid)
        out["baseline_rss_kib"] = base
        held = 0
        for count in args.counts:
            print(f"sipconsole: registering {count - held:,} more AORs ...", flush=True)
            t0 = time.monotonic()
            run = register(port, held, count - held, sdir, args.users, sipp_core)
            took = time.monotonic() - t0
            held = count
            contacts = stats(control).get("location_contacts")
            rss_burst = c.rss_kib(server.pid)
            point: dict[str, Any] = {
                "bindings": count, "contacts_reported": contacts, "sipp_failed": run.failed,
                "register_seconds": round(took, 1),
                "rss_after_burst_kib": rss_burst,
                "per_contact_after_burst_bytes": round((rss_burst - base) * 1024 / count),
            }
            if args.settle:
                print(f"sipconsole: waiting {args.settle:.0f} s for the transaction table to expire ...", flush=True)
                time.sleep(args.settle)
                poke(port)
                time.sleep(0.5)
                rss_settled = c.rss_kib(server.pid)
                point["rss_settled_kib"] = rss_settled
                point["per_contact_settled_bytes"] = round((rss_settled - base) * 1024 / count)
            out["points"].append(point)
            if contacts != count:
                out.setdefault("problems", []).append(f"stats shows {contacts} contacts after registering {count}")
        db = sdir / "server" / "location.db"
        out["db_bytes"] = sum(Path(str(db) + s).stat().st_size for s in ("", "-wal") if Path(str(db) + s).exists())
    finally:
        server.stop(timeout=60)
    held = args.counts[-1]
    # Each restart is labelled by how the previous process ended: SIGTERM (clean shutdown) or
    # SIGKILL (a crash: SQLite recovers the WAL on open).
    plan = [signal.SIGTERM] * args.restarts + [signal.SIGKILL] * args.restarts
    names = {signal.SIGTERM: "after SIGTERM", signal.SIGKILL: "after SIGKILL"}
    for i, previous in enumerate(plan):
        kind = names[previous]
        sig = plan[i + 1] if i + 1 < len(plan) else signal.SIGTERM  # how this one ends
        print(f"sipconsole: restart {kind} with {held:,} bindings ...", flush=True)
        server = target.start(sdir / "server", port, server_core, keep_db=True, wait=False)
        try:
            t_ctl, ready = wait_contacts(control, held, server)
            cpu = c.cpu_seconds([server.pid])  # what a loaded machine leaves alone, unlike the wall time
            t_ctl = round(t_ctl, 3) if t_ctl is not None else None
            rss = c.rss_kib(server.pid)
            entry = {"kind": kind, "seconds": round(ready, 3), "cpu_seconds": round(cpu, 3),
                     "control_answered_s": t_ctl,
                     "rss_kib": rss, "per_contact_loaded_bytes": round((rss - base) * 1024 / held)}
            if i == 0:
                cli = ctl_stats_cli(control)
                entry["ctl_stats_contacts"] = cli.get("location_contacts") if isinstance(cli, dict) else cli
            out["restarts"].append(entry)
        finally:
            server.stop(timeout=60, sig=sig)
    return out


def measure_kamailio(args: argparse.Namespace, work: Path, cores: tuple[int | None, int | None]) -> dict[str, Any]:
    """Reference: Kamailio usrloc db_mode 1 (SQLite). Memory = PSS of its process tree."""
    sipp_core, server_core = cores
    # usrloc preloads the whole table through db_sqlite, which keeps the result in private memory.
    target = c.Target("kamailio-sqlite", "kamailio", "sqlite", pkg_mb=512)
    port = c.free_port()
    kdir = work / "kamailio"
    out: dict[str, Any] = {"target": "Kamailio usrloc db_mode 1 (SQLite, WAL)", "points": [], "restarts": []}
    server = target.start(kdir / "server", port, server_core)
    db = kdir / "server" / "kamailio.db"
    try:
        time.sleep(0.5)
        base = c.pss_kib(c.process_tree(server.pid))
        out["baseline_pss_kib"] = base
        held = 0
        for count in args.counts:
            print(f"kamailio: registering {count - held:,} more AORs ...", flush=True)
            run = register(port, held, count - held, kdir, args.users, sipp_core)
            held = count
            pss = c.pss_kib(c.process_tree(server.pid))
            rows = _rows(db)
            out["points"].append({"bindings": count, "db_rows": rows, "sipp_failed": run.failed, "pss_kib": pss,
                                  "per_contact_bytes": round((pss - base) * 1024 / count)})
    finally:
        server.stop(timeout=30)
    held = args.counts[-1]
    for i in range(args.restarts):
        print(f"kamailio: restart #{i + 1} with {held:,} bindings in SQLite ...", flush=True)
        t0 = time.monotonic()
        server = target.start(kdir / "server", port, server_core, keep_db=True)
        try:
            out["restarts"].append({"kind": "after SIGTERM", "seconds": round(time.monotonic() - t0, 3),
                                    "pss_kib": c.pss_kib(c.process_tree(server.pid))})
        finally:
            server.stop(timeout=30)
    return out


def _rows(db: Path) -> int | None:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM location").fetchone()[0]
    except sqlite3.Error:
        return None


def render(data: dict[str, Any]) -> str:
    rows = []
    s = data.get("sipconsole")
    if s:
        for p in s["points"]:
            rows.append(["sipconsole", f"{p['bindings']:,}", "after burst", f"{p['rss_after_burst_kib'] / 1024:,.1f} MiB",
                         f"{p['per_contact_after_burst_bytes']:,} B", ""])
            if "rss_settled_kib" in p:
                rows.append(["sipconsole", f"{p['bindings']:,}", "settled (Timer J)", f"{p['rss_settled_kib'] / 1024:,.1f} MiB",
                             f"{p['per_contact_settled_bytes']:,} B", ""])
        for kind in ("after SIGTERM", "after SIGKILL"):
            rs = [r for r in s["restarts"] if r["kind"] == kind]
            if rs:
                secs = sorted(r["seconds"] for r in rs)
                cpu = sorted(r["cpu_seconds"] for r in rs)
                rows.append(["sipconsole", f"{data['counts'][-1]:,}", f"restart {kind}",
                             f"{rs[0]['rss_kib'] / 1024:,.1f} MiB", f"{rs[0]['per_contact_loaded_bytes']:,} B",
                             f"{c.median(secs):.2f} s ({secs[0]:.2f}-{secs[-1]:.2f}), CPU {c.median(cpu):.2f} s"])
    k = data.get("kamailio")
    if isinstance(k, dict) and k.get("points"):
        for p in k["points"]:
            rows.append(["kamailio-sqlite", f"{p['bindings']:,}", "PSS, all processes", f"{p['pss_kib'] / 1024:,.1f} MiB",
                         f"{p['per_contact_bytes']:,} B", ""])
        if k["restarts"]:
            secs = sorted(r["seconds"] for r in k["restarts"])
            rows.append(["kamailio-sqlite", f"{data['counts'][-1]:,}", "restart (until it answers SIP)", "", "",
                         f"{c.median(secs):.2f} s ({secs[0]:.2f}-{secs[-1]:.2f})"])
    return c.table(["target", "bindings", "when", "memory", "per contact", "restart (median, min-max)"], rows,
                   right={1, 3, 4})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("sipp") is None:
        print("bench_memory: sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    machine = c.machine()  # before pinning: it records the CPUs this script may use
    sipp_core, server_core, core_note = c.pick_cores()
    c.pin_self(sipp_core)
    c.NICE = args.nice
    work = Path(tempfile.mkdtemp(prefix="sipconsole-bench-mem-"))
    started = dt.datetime.now(dt.timezone.utc)
    data: dict[str, Any] = {
        "benchmark": "memory",
        "started": started.isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, c.ROOT), *(argv or sys.argv[1:])]),
        "machine": machine,
        "commit": c.source_revision(),
        "counts": args.counts,
        "settings": {"users": args.users, "restarts": args.restarts, "settle_s": args.settle, "nice": args.nice},
        "notes": [core_note, "RSS = VmRSS of the registrar process; per contact = (RSS - RSS of the empty "
                             "registrar) / bindings; restart = process start until `stats` shows every binding"],
    }
    try:
        data["sipconsole"] = measure_sipconsole(args, work, (sipp_core, server_core))
        ok, why = c.kamailio_sqlite_available()
        if args.no_kamailio:
            data["kamailio"] = "skipped (--no-kamailio)"
        elif not ok:
            data["kamailio"] = f"skipped: {why}"
        else:
            try:
                data["kamailio"] = measure_kamailio(args, work, (sipp_core, server_core))
            except Exception as exc:  # the reference must not cost us our own figures
                data["kamailio"] = f"failed: {type(exc).__name__}: {str(exc)[-500:]}"
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    data["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    path = args.output
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print()
    print(f"memory and restart, {started:%Y-%m-%d %H:%M} UTC")
    print(render(data))
    if isinstance(data.get("kamailio"), str):
        print(f"note: Kamailio {data['kamailio']}")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

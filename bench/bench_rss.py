"""Memory of ``sipconsole serve`` under sustained load: where a registrar at full load keeps it.

bench_memory.py measures memory per binding after a burst; this measures what the process holds
while it works: ``--contacts`` AORs registered, then sipp refreshing them in a closed loop (200
in flight, UDP, durable SQLite) for ``--seconds``, then Timer J (32 s) of quiet. Every
``--interval`` seconds it samples /proc/PID/status (VmRSS, RssAnon, RssFile) and the control
socket's ``stats`` (transactions held).

With ``--probe`` the registrar runs under this script as a wrapper (``python bench_rss.py --inside
-m sipconsole serve ...``): a thread in the registrar writes, at every sample, SQLite's own count of
the memory it holds (sqlite3_memory_used), glibc's heap (mallinfo2: in use, free, mmapped) and
pymalloc's arenas (sys._debugmallocstats); at the end of the load, the Python objects by type (gc).
The probe takes the GIL for a moment per sample; the gc count, once, for about a second.

    python bench/bench_rss.py                       # 100,000 contacts, 180 s of load
    python bench/bench_rss.py --seconds 60 --probe  # shorter, with the attribution

Prints a table and writes bench/results/rss.json (``--output`` elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

if TYPE_CHECKING:
    from tests.processes import Terminal

IN_FLIGHT = 200  # REGISTERs sipp keeps outstanding by default (as bench_console.py)
TIMER_J = 32.0
PROBE_ENV = "BENCH_RSS_PROBE"  # where the probe in the registrar appends its samples (JSON lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="RSS of sipconsole serve under sustained closed-loop load.",
                                epilog="Writes bench/results/rss.json.")
    p.add_argument("--contacts", type=int, default=100_000, help="AORs registered and refreshed (default 100,000)")
    p.add_argument("--seconds", type=int, default=180, help="seconds of closed-loop refreshes (default 180)")
    p.add_argument("--users", type=int, default=IN_FLIGHT, help=f"REGISTERs sipp keeps in flight (default {IN_FLIGHT})")
    p.add_argument("--rounds", type=int, default=1, help="load and quiet, this many times (default 1)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--settle", type=float, default=TIMER_J + 3,
                   help=f"seconds of quiet after the load (default {TIMER_J + 3:.0f}: Timer J and a little)")
    p.add_argument("--probe", action="store_true",
                   help="sample SQLite, glibc and pymalloc memory inside the registrar, and gc objects by type")
    p.add_argument("--attach", action="store_true",
                   help="a `sipconsole attach` (on a pseudo-terminal, the load's core) shows the table meanwhile")
    p.add_argument("--nice", type=int, default=0, metavar="N", help="nice level of the registrar (default 0)")
    p.add_argument("--option", action="append", default=[], metavar="OPT",
                   help="one more `sipconsole serve` option (repeat; e.g. --option=--max-transactions=...)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--output", type=Path, default=c.RESULTS / "rss.json", help="JSON output path")
    args = p.parse_args(argv)
    if min(args.contacts, args.seconds, args.interval, args.rounds, args.users) <= 0:
        p.error("--contacts, --seconds, --interval, --rounds and --users must be positive")
    return args


# -- the probe, inside the registrar ------------------------------------------------------------

class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


def _pymalloc_mib() -> dict[str, float]:
    """pymalloc's arenas: allocated (what the process holds for small objects) and in use."""
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+") as f:  # _debugmallocstats writes to the C stderr
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read()
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().replace(",", "")
        if key.startswith("# bytes in allocated blocks"):
            out["pymalloc_used_mib"] = round(int(value) / 2**20, 1)
        elif "bytes/arena" in key:
            out["pymalloc_arenas_mib"] = round(int(value) / 2**20, 1)
    return out


def _probe_sample(sqlite: Any, libc: Any) -> dict[str, Any]:
    m = libc.mallinfo2()
    return {"t": time.time(), "sqlite_mib": round(sqlite.sqlite3_memory_used() / 2**20, 1),
            "sqlite_highwater_mib": round(sqlite.sqlite3_memory_highwater(0) / 2**20, 1),
            "malloc_used_mib": round(m.uordblks / 2**20, 1), "malloc_free_mib": round(m.fordblks / 2**20, 1),
            "malloc_mmapped_mib": round(m.hblkhd / 2**20, 1), **_pymalloc_mib()}


def _objects_by_type(top: int = 15) -> dict[str, Any]:
    """Python objects (those gc tracks) by type, and what holds the most numerous kind:
    references to it by the type of the holder (a dict, a deque, an object's attribute)."""
    import gc
    objects = gc.get_objects()
    counts: dict[str, int] = {}
    for o in objects:
        name = type(o).__name__
        counts[name] = counts.get(name, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    most = next((name for name, _ in ranked if name not in ("tuple", "dict", "list", "function")), "")
    holders: dict[str, int] = {}
    for o in objects:
        n = sum(1 for r in gc.get_referents(o) if type(r).__name__ == most)
        if n:
            name = type(o).__name__
            holders[name] = holders.get(name, 0) + n
    return {"by_type": dict(ranked[:top]), "holders_of": most,
            "holders": dict(sorted(holders.items(), key=lambda kv: -kv[1])[:top])}


def inside(argv: list[str]) -> None:
    """Run ``-m MODULE ARGS`` (the registrar) with a sampling thread beside it."""
    import runpy
    import sqlite3  # noqa: F401  (loads the libsqlite3 the registrar uses)
    path = Path(os.environ[PROBE_ENV])
    sqlite = ctypes.CDLL("libsqlite3.so.0")
    sqlite.sqlite3_memory_used.restype = sqlite.sqlite3_memory_highwater.restype = ctypes.c_int64
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    trigger = Path(str(path) + ".gc")

    def run() -> None:
        while True:
            time.sleep(1.0)
            sample = _probe_sample(sqlite, libc)
            if trigger.exists():  # asked for once, at the end of the load
                trigger.unlink()
                sample["objects"] = _objects_by_type()
            with open(path, "a") as f:
                f.write(json.dumps(sample) + "\n")

    threading.Thread(target=run, daemon=True, name="bench-rss-probe").start()
    if argv[:1] != ["-m"] or len(argv) < 2:
        raise SystemExit("usage: bench_rss.py --inside -m MODULE [ARGS]")
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


# -- the bench ----------------------------------------------------------------------------------

def status_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def last_probe(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return json.loads(path.read_text().splitlines()[-1])
    return {}


def sample(server: c.Managed, control: Path, probe: Path | None, phase: str, t0: float) -> dict[str, Any]:
    s = {"t": round(time.monotonic() - t0, 1), "phase": phase,
         **{k: round(v / 1024, 1) for k, v in status_kib(server.pid).items()}}
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        st = c.control_call(control, "stats")
        s["contacts"] = st.get("location_contacts")
        s["transactions"] = st.get("transactions")
        s["accepted"] = st.get("accepted_regs")
    if probe is not None:
        s.update({k: v for k, v in last_probe(probe).items() if k not in ("t", "objects")})
    return s


def sample_until(stop: threading.Event, samples: list[dict[str, Any]], interval: float, *args: Any) -> None:
    while not stop.wait(interval):
        samples.append(sample(*args))


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    sipp_core, server_core, cores_note = c.pick_cores()
    c.pin_self(sipp_core)
    port = c.free_port()
    sipp_port = c.free_port()  # one for every run: the load refreshes the bindings the preload made
    injection = work / "aors.csv"
    c.write_injection(injection, 0, args.contacts)
    sdir = work / "server"
    control = sdir / "control.sock"
    probe = work / "probe.jsonl" if args.probe else None
    target = c.Target("sipconsole", "sipconsole", "durable", options=tuple(args.option))
    wrap = [str(Path(__file__).resolve()), "--inside"] if probe else None
    env = {PROBE_ENV: str(probe)} if probe else None
    server = target.start(sdir, port, server_core, extra_env=env, wrap=wrap)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, server.pid, args.nice)
    out: dict[str, Any] = {"contacts": args.contacts, "seconds": args.seconds, "cores": cores_note,
                           "machine": c.machine(), "commit": c.source_revision(), "build": c.sipconsole_build(),
                           "options": args.option, "samples": []}
    t0 = time.monotonic()
    try:
        time.sleep(1.5)
        out["samples"].append(sample(server, control, probe, "started", t0))
        print(f"registering {args.contacts:,} AORs ...", flush=True)
        pre = c.run_sipp(port, c.SCENARIOS / "register.xml", injection, work / "preload", users=args.users,
                         calls=args.contacts, core=sipp_core, rtt=False, local_port=sipp_port)
        out["preload"] = {"ok": pre.successful, "failed": pre.failed, "wall_s": round(pre.wall, 1)}
        out["samples"].append(sample(server, control, probe, "registered", t0))
        console = attach(control, sdir, sipp_core, args.contacts) if args.attach else None
        if console is not None:
            out["samples"].append(sample(server, control, probe, "attached", t0))
        out["loads"] = []
        for n in range(1, args.rounds + 1):
            suffix = str(n) if args.rounds > 1 else ""
            out["loads"].append(load_round(args, out, (port, sipp_port, sipp_core), injection, work / f"load{suffix}",
                                           (server, control, probe, t0), suffix))
        out["load"] = out["loads"][0]
        if console is not None:
            out["console_rss_mib"] = round(c.rss_kib(console.proc.pid) / 1024, 1)
            console.close()
    finally:
        server.stop(timeout=60)
    return out


def attach(control: Path, sdir: Path, core: int | None, contacts: int, timeout: float = 300) -> Terminal:
    """`sipconsole attach` as a user runs it, once its table shows every AOR."""
    sys.path.insert(0, str(c.ROOT))
    from tests.processes import Terminal
    print("attaching a console ...", flush=True)
    term = Terminal(["attach", "--control", str(control)], size=(160, 50), prefix=tuple(c.pinned([], core)),
                    env={"PYTHONPATH": str(c.ROOT), "XDG_DATA_HOME": str(sdir / "xdg-data"),
                         "XDG_RUNTIME_DIR": str(sdir / "xdg-run")})
    title = f"AORs · {contacts:,} ·".encode()
    deadline = time.monotonic() + timeout
    while title not in term.output:
        if time.monotonic() > deadline or term.proc.poll() is not None:
            term.close()
            raise RuntimeError(f"the console never showed {contacts:,} AORs: {bytes(term.output[-500:])!r}")
        time.sleep(0.2)
    return term


def load_round(args: argparse.Namespace, out: dict[str, Any], ports: tuple[int, int, int | None], injection: Path,
               work: Path, watched: tuple[c.Managed, Path, Path | None, float], suffix: str) -> dict[str, Any]:
    """One closed-loop run, sampled; the Python objects after it (--probe); then the quiet."""
    port, sipp_port, sipp_core = ports
    server, control, probe, t0 = watched
    print(f"closed loop for {args.seconds} s, sampling every {args.interval:g} s ...", flush=True)
    stop = threading.Event()
    sampler = threading.Thread(target=sample_until, args=(stop, out["samples"], args.interval, server,
                                                           control, probe, f"load{suffix}", t0))
    sampler.start()
    try:
        run = c.run_sipp(port, c.SCENARIOS / "register.xml", injection, work, users=args.users,
                         duration=args.seconds, core=sipp_core, rtt=False, timeout=args.seconds + 120,
                         local_port=sipp_port)
    finally:
        stop.set()
        sampler.join()
    if probe is not None:
        Path(str(probe) + ".gc").touch()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(str(probe) + ".gc").exists():
            time.sleep(0.2)
        time.sleep(1.5)
        with contextlib.suppress(OSError, ValueError):
            out["objects_after_load"] = next(json.loads(line)["objects"] for line in
                                             reversed(probe.read_text().splitlines()) if '"objects"' in line)
    out["samples"].append(sample(server, control, probe, f"loaded{suffix}", t0))
    if args.settle:
        print(f"quiet for {args.settle:.0f} s ...", flush=True)
        time.sleep(args.settle)
        c.sip_probe(port, "OPTIONS")  # the transaction table purges on its next request
        time.sleep(1.5)
        out["samples"].append(sample(server, control, probe, f"settled{suffix}", t0))
    return {"ok": run.successful, "failed": run.failed, "wall_s": round(run.wall, 1),
            "reg_per_s": round(run.successful / max(run.wall, 1e-9))}


def render(r: dict[str, Any]) -> str:
    cols = ["t", "phase", "VmRSS", "RssAnon", "RssFile", "transactions", "sqlite_mib", "malloc_used_mib",
            "malloc_free_mib", "pymalloc_arenas_mib", "pymalloc_used_mib"]
    have = [k for k in cols if any(k in s for s in r["samples"])]
    rows = [[str(s.get(k, "")) for k in have] for s in r["samples"]]
    loads = "; ".join(f"{x['reg_per_s']:,} REG/s, {x['failed']} failed" for x in r.get("loads", []))
    head = f"sipconsole serve, {r['contacts']:,} contacts, closed loop {r['seconds']} s x {len(r.get('loads', []))} ({loads}); MiB\n"
    text = head + c.table(have, rows, right=set(range(2, len(have))))
    if "console_rss_mib" in r:
        text += f"\nthe attached console's own process: {r['console_rss_mib']} MiB RSS"
    if "objects_after_load" in r:
        objects = r["objects_after_load"]
        text += ("\nPython objects after the load: " + ", ".join(f"{k} {v:,}" for k, v in objects["by_type"].items())
                 + f"\nreferences to {objects['holders_of']} by holder: "
                 + ", ".join(f"{k} {v:,}" for k, v in objects["holders"].items()))
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--inside"]:
        inside(argv[1:])
        return 0
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sc-bench-rss-"))
    try:
        result = measure(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(render(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

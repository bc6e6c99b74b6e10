"""Console at scale: what a console costs the registrar at 100,000 contacts, and its keys.

Everything is the real thing: ``sipconsole serve`` (durable SQLite) on one core, sipp on the
other, and the console as a user runs it, on a pseudo-terminal of its own: ``sipconsole
attach``, and ``sipconsole`` (the registrar, with its console in a child process).

1. sipp registers ``--contacts`` distinct AORs (one contact each) into ``sipconsole serve``.
2. A console's cost, in pairs (``--repeat`` per kind): closed-loop throughput (sipp, 200 in
   flight, ``--seconds`` each) with the console beside a run without one, next to it, the order
   alternating between pairs. Attached: all pairs in one ``serve`` start, ``sipconsole attach``
   started (its table loaded) and quit between runs, as a user would. ``sipconsole`` is the
   registrar's own process, so it cannot share a start with ``serve``: its run is paired with a
   ``serve`` run on the same database just before its start or just after its exit. Each run
   gives REG/s and the CPU time per REGISTER answered of the registrar and of the console's
   process (/proc). Per pair: REG/s with the console / without, and the registrar's CPU per
   REGISTER with minus without; then the median of the pairs and their min-max. (The VM's
   speed drifts by a third within minutes: one run of each kind says nothing of a 90 % target.)
   Consoles are pinned to sipp's core, the registrar keeps its own (``sipconsole``'s console
   process is moved there once started). ``--kinds bare``: a compact subscriber that reads the
   events a console gets and drops them (this script, ``--subscribe``), in pairs as attached: the
   registrar's side of a console without the console's own work on sipp's core.
3. The console (Pilot, headless, in this process, attached to the serve process like the
   console's own process) opens while sipp sends ``--rate`` REGISTERs/s: time until the rows
   are loaded, how the registrar answered meanwhile; then keypress -> updated-frame latency
   (the frame time is when Textual composes the first frame that shows the key's effect).

    python bench/bench_console.py            # 100,000 contacts, 4 pairs per console, 10-s runs, 1,000 REG/s
    python bench/bench_console.py --quick    # 20,000 contacts, 5-s runs
    python bench/bench_console.py --repeat 0 # only the load and the keys (no throughput runs)

Prints a table and writes bench/results/console.json (``--output``: elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common as c  # noqa: E402

from console import memory  # noqa: E402
from console.app import SipConsole  # noqa: E402
from registrar_core.control import ControlClient  # noqa: E402
from registrar_core.server import install_fast_loop  # noqa: E402
from tests.processes import Terminal  # noqa: E402

SIZE = (160, 50)
IN_FLIGHT = 200


class TimedConsole(SipConsole):
    """The console, noting when the first frame showing an expected state is composed."""

    expect: Callable[[], bool] | None = None
    shown_at = 0.0

    def _display(self, screen: Any, renderable: Any) -> None:
        if renderable is not None and self.expect is not None and self.expect():
            self.shown_at = time.perf_counter()
            self.expect = None
        super()._display(screen, renderable)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20,000 contacts and 5-s runs")
    p.add_argument("--contacts", type=int, help="AORs registered before the console opens (default 100,000)")
    p.add_argument("--rate", type=int, default=1000, help="paced REGISTERs/s during the key presses (default 1,000)")
    p.add_argument("--seconds", type=int, help="length of each throughput run (default 10)")
    p.add_argument("--presses", type=int, default=25, help="presses of each key (default 25)")
    p.add_argument("--repeat", type=int, default=4,
                   help="pairs of throughput runs per console kind (default 4; 0: only the console's load and keys)")
    p.add_argument("--kinds", default="attached,embedded",
                   help="consoles measured in pairs with a run without one: attached, embedded, bare "
                        "(a subscriber without a console; default attached,embedded)")
    p.add_argument("--output", type=Path, default=c.RESULTS / "console.json", help="JSON output path")
    p.add_argument("--subscribe", metavar="SOCKET", help=argparse.SUPPRESS)  # the bare kind's subscriber process
    args = p.parse_args()
    args.kinds = args.kinds.split(",")
    if not set(args.kinds) <= {"attached", "embedded", "bare"}:
        p.error("--kinds: a comma list of attached, embedded, bare (each is paired with a run without a console)")
    args.contacts = args.contacts or (20_000 if args.quick else 100_000)
    args.seconds = args.seconds or (5 if args.quick else 10)
    return args


def closed_loop(port: int, injection: Path, work: Path, core: int | None, local_port: int, *,
                seconds: int | None = None, calls: int | None = None) -> dict[str, Any]:
    """sipp with IN_FLIGHT REGISTERs always outstanding; REGISTERs/s answered 200. Every sipp
    run sends from ``local_port``: its Contact carries the port, so runs from one port refresh
    the preloaded bindings (from a new port each would add a binding to every AOR: 100,000 more
    a run, and the later runs measured a bigger table)."""
    run = c.run_sipp(port, c.SCENARIOS / "register.xml", injection, work, users=IN_FLIGHT, duration=seconds,
                     calls=calls, core=core, rtt=False, local_port=local_port)
    periods = c.steady_periods(run, IN_FLIGHT, warmup=1.0)
    rate = c.median([p["rate"] for p in periods]) if periods else run.successful / run.wall
    return {"ok": run.successful, "failed": run.failed, "wall_s": round(run.wall, 2),
            "reg_per_s": round(rate or 0), "retransmissions": run.retransmissions}


def paced(port: int, injection: Path, work: Path, core: int | None, local_port: int, rate: int,
          seconds: int) -> dict[str, Any]:
    """sipp sending ``rate`` REGISTERs/s for ``seconds``: how many were answered, and how fast."""
    work.mkdir(parents=True, exist_ok=True)
    stat = work / "paced.csv"
    cmd = ["sipp", f"127.0.0.1:{port}", "-sf", str(c.SCENARIOS / "register.xml"), "-inf", str(injection),
           "-r", str(rate), "-m", str(rate * seconds), "-t", "u1", "-i", "127.0.0.1", "-p", str(local_port),
           "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1", "-buff_size", str(4 << 20),
           "-timeout", f"{seconds + 30}s", "-trace_rtt", "-rtt_freq", "100"]
    t0 = time.monotonic()
    subprocess.run(c.pinned(cmd, core), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work,
                   env={**os.environ, "TERM": "dumb"}, timeout=seconds + 60)
    wall = time.monotonic() - t0
    lines = [line.rstrip(";").split(";") for line in stat.read_text().splitlines() if line.strip()]
    last = dict(zip(lines[0], lines[-1]))
    rtts = [float(line.split(";")[1]) for f in work.glob("*_rtt.csv")
            for line in f.read_text().splitlines()[1:] if line.count(";") >= 1]
    ok = int(last["SuccessfulCall(C)"])
    return {"offered_per_s": rate, "ok": ok, "failed": int(last["FailedCall(C)"]),
            "answered_per_s": round(ok / wall), "rtt_ms_p50": c.median(rtts), "rtt_ms_p99": c.percentile(rtts, 99)}


async def until(pilot: Any, condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await pilot.pause(0.02)


async def press(pilot: Any, app: TimedConsole, keys: list[str], shown: Callable[[], bool]) -> float:
    """Milliseconds from the first key to the first frame where ``shown()`` holds."""
    app.shown_at = 0.0
    app.expect = shown
    t0 = time.perf_counter()
    await pilot.press(*keys)
    try:
        await until(pilot, lambda: app.shown_at, timeout=10)
    except TimeoutError:
        main = app.main
        raise TimeoutError(f"{keys}: no frame showed the effect; screen {app.screen}, focus {app.focused}, "
                           f"cursor {main.aors.cursor} of {len(main.registry)}, sort {main.registry.sort}, "
                           f"filter {main.registry.filter!r}, paused {main.paused}") from None

    return (app.shown_at - t0) * 1000


async def key_latencies(pilot: Any, app: TimedConsole, presses: int) -> dict[str, list[float]]:
    main = app.main
    table, registry = main.aors, main.registry
    rng = random.Random(7)
    field = main.query_one("#filter")
    out: dict[str, list[float]] = {k: [] for k in ("down", "pagedown", "sort (<, >)", "open filter (/)",
                                                    "type a filter digit", "clear filter (esc)", "pause (p)")}
    for i in range(presses):
        if table.cursor > len(registry) - 3 * table._page_size():
            await pilot.press("home")
        await pilot.pause(rng.uniform(0.05, 0.3))  # land anywhere between two flushes
        target = table.cursor + 1
        out["down"].append(await press(pilot, app, ["down"], lambda: table.cursor == target))
        target = table.cursor + table._page_size()
        out["pagedown"].append(await press(pilot, app, ["pagedown"], lambda: table.cursor == target))
        key, sort = ("greater_than_sign", "contacts") if i % 2 == 0 else ("less_than_sign", "aor")
        out["sort (<, >)"].append(await press(pilot, app, [key], lambda: registry.sort == sort))
        digit = str(i % 10)
        out["open filter (/)"].append(await press(pilot, app, ["slash"], lambda: field.has_focus))
        out["type a filter digit"].append(await press(pilot, app, [digit], lambda: registry.filter == digit))
        out["clear filter (esc)"].append(await press(pilot, app, ["escape"], lambda: not registry.filter))
        paused = not main.paused
        out["pause (p)"].append(await press(pilot, app, ["p"], lambda: main.status.flags.paused == paused))
    if main.paused:
        await pilot.press("p")
    return out


@contextmanager
def collections_timed() -> Iterator[dict[str, Any]]:
    """The garbage collector's passes in the block, per generation: how many, their total and
    longest milliseconds (a full pass over a large heap is a stall the keys may meet), in wall
    time and in the CPU time of the thread that collected (the wall time of a pass includes
    whatever a loaded machine took from this process meanwhile; the CPU time does not)."""
    pauses: dict[str, Any] = {}
    started = [0.0, 0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = time.perf_counter(), time.thread_time()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        cpu_ms = (time.thread_time() - started[1]) * 1000
        gen = pauses.setdefault(f"gen{info['generation']}", {"n": 0, "total_ms": 0.0, "max_ms": 0.0,
                                                             "cpu_total_ms": 0.0, "cpu_max_ms": 0.0})
        gen["n"] += 1
        gen["total_ms"] = round(gen["total_ms"] + ms, 1)
        gen["max_ms"] = round(max(gen["max_ms"], ms), 1)
        gen["cpu_total_ms"] = round(gen["cpu_total_ms"] + cpu_ms, 1)
        gen["cpu_max_ms"] = round(max(gen["cpu_max_ms"], cpu_ms), 1)

    gc.callbacks.append(timed)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(timed)


def registrar_args(work: Path, port: int) -> list[str]:
    """The options ``sipconsole serve`` and ``sipconsole`` get: the bench's lab settings."""
    return ["--listen", f"udp:127.0.0.1:{port}", "--db", str(work / "location.db"), "--control",
            str(work / "control.sock"), *c.sipconsole_lab_options(False)]


def registrar_env(work: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(c.ROOT), "XDG_DATA_HOME": str(work / "xdg-data"),
            "XDG_RUNTIME_DIR": str(work / "xdg-run")}


def serve(work: Path, port: int, core: int | None) -> c.Managed:
    proc = c.Managed(c.pinned([sys.executable, "-m", "sipconsole", "serve", *registrar_args(work, port)], core),
                     work / "serve.log", cwd=c.ROOT, env={**os.environ, **registrar_env(work)})
    c.wait_sip(port, proc)
    return proc


def console_loaded(term: Terminal, contacts: int) -> Callable[[], bool]:
    """The AOR table's title once every row is in (before: "AORs · loading ...")."""
    title = f"AORs · {contacts:,} ·".encode()
    return lambda: title in term.output


def pin(pid: int, core: int | None) -> None:
    if core is not None and shutil.which("taskset"):
        subprocess.run(["taskset", "-pc", str(core), str(pid)], check=True, stdout=subprocess.DEVNULL)


def measured(port: int, injection: Path, work: Path, core: int | None, local_port: int, seconds: int,
             pids: dict[str, int]) -> dict[str, Any]:
    """A closed-loop run, with the CPU time per REGISTER answered of each process in ``pids``."""
    before = {name: c.cpu_seconds([pid]) for name, pid in pids.items()}
    run = closed_loop(port, injection, work, core, local_port, seconds=seconds)
    spent = {name: c.cpu_seconds([pid]) - before[name] for name, pid in pids.items()}
    run["cpu_us_per_register"] = {name: round(cpu / max(1, run["ok"]) * 1e6, 1) for name, cpu in spent.items()}
    run["rss_mib"] = {name: round(c.rss_kib(pid) / 1024) for name, pid in pids.items()}
    return run


class Runs:
    """The closed-loop runs on one database: ``serve`` (restarted only around an embedded run),
    sipp, and the consoles as a user starts and stops them."""

    def __init__(self, args: argparse.Namespace, work: Path, port: int, injection: Path,
                 cores: tuple[int | None, int | None]) -> None:
        self.args, self.work, self.port, self.injection = args, work, port, injection
        self.sipp_core, self.server_core = cores
        self.server = serve(work, port, self.server_core)
        self.start = 1  # the serve process's start, counted from 1 (an embedded run restarts it)
        self.done = 0

    def _measured(self, pids: dict[str, int]) -> Awaitable[dict[str, Any]]:
        self.done += 1
        return asyncio.to_thread(measured, self.port, self.injection, self.work / f"run-{self.done}",
                                 self.sipp_core, self.args.sipp_port, self.args.seconds, pids)

    async def none(self) -> dict[str, Any]:
        return {**await self._measured({"registrar": self.server.pid}), "start": self.start}

    async def attached(self) -> dict[str, Any]:
        """``sipconsole attach`` started, its table loaded, the run, the console closed."""
        term = Terminal(["attach", "--control", str(self.work / "control.sock")], size=SIZE,
                        prefix=tuple(c.pinned([], self.sipp_core)), env=registrar_env(self.work))
        try:
            await term.until(console_loaded(term, self.args.contacts), timeout=300)
            run = await self._measured({"registrar": self.server.pid, "console": term.proc.pid})
        finally:
            term.close()
        return {**run, "start": self.start}

    async def bare(self) -> dict[str, Any]:
        """A bare compact subscriber (``--subscribe``) on sipp's core, the run, the subscriber stopped."""
        log = self.work / f"subscriber-{self.done + 1}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--subscribe", str(self.work / "control.sock")]
        sub = c.Managed(c.pinned(cmd, self.sipp_core), log, cwd=c.ROOT, env={**os.environ, **registrar_env(self.work)})
        try:
            deadline = time.monotonic() + 60
            while b"subscribing" not in log.read_bytes():
                if not sub.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the bare subscriber did not connect: {sub.tail()}")
                await asyncio.sleep(0.05)
            run = await self._measured({"registrar": self.server.pid, "console": sub.pid})
        finally:
            sub.stop()
        return {**run, "start": self.start}

    async def embedded(self) -> dict[str, Any]:
        """``serve`` stopped, ``sipconsole`` on the same database (a registrar start of its own),
        the run, ``sipconsole`` quit, ``serve`` started again."""
        self.server.stop(timeout=60)
        self.start += 1
        term = Terminal(registrar_args(self.work, self.port), size=SIZE,
                        prefix=tuple(c.pinned([], self.server_core)), env=registrar_env(self.work))
        try:
            await term.until(lambda: term.children(), timeout=60)
            child = term.children()[0]
            pin(child, self.sipp_core)
            await term.until(console_loaded(term, self.args.contacts), timeout=300)
            run = {**await self._measured({"registrar": term.proc.pid, "console": child}), "start": self.start}
            term.type("q")
            await term.until(lambda: b"Stop and quit" in term.output)
            term.type("y")
            await term.until(lambda: term.proc.poll() is not None, timeout=60)
        finally:
            term.close()
        self.server = serve(self.work, self.port, self.server_core)
        self.start += 1
        return run


def paired(kind: str, runs: dict[str, dict[str, Any]], first: str) -> dict[str, Any]:
    """One pair: the console's run beside its adjacent run without one, and what the console
    changed (REG/s as a ratio, the registrar's CPU per REGISTER as a difference)."""
    none, cons = runs["none"], runs[kind]
    return {"first": first, "none": none, kind: cons,
            "reg_ratio": round(cons["reg_per_s"] / max(1, none["reg_per_s"]), 3),
            "registrar_cpu_us_diff": round(cons["cpu_us_per_register"]["registrar"]
                                           - none["cpu_us_per_register"]["registrar"], 1)}


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min and max (a handful of pairs: min-max says more than an interquartile range)."""
    return {"median": round(c.median(values) or 0.0, 3), "min": min(values), "max": max(values), "n": len(values)}


async def throughput(args: argparse.Namespace, runs: Runs) -> dict[str, list[dict[str, Any]]]:
    """``--repeat`` pairs per console kind; the serve process is running at the end.

    The VM's speed moves the registrar's CPU per REGISTER by a third within minutes, more than
    a console costs: a console's run is compared only with a run without one next to it, the
    order alternating between pairs so that a drift favours neither. The attached pairs all run
    in one ``serve`` start (the console attached and detached between runs). ``sipconsole`` is
    the registrar's own process, so it cannot share a start with ``serve``: its run is paired
    with a ``serve`` run just before its start or just after its exit.
    """
    pairs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in args.kinds}
    for kind in args.kinds:
        run_console = {"attached": runs.attached, "embedded": runs.embedded, "bare": runs.bare}[kind]
        for i in range(args.repeat):
            order = ("none", kind) if i % 2 == 0 else (kind, "none")
            print(f"pair {i + 1}/{args.repeat}, {kind}: {order[0]} then {order[1]}, sipp closed loop "
                  f"for {args.seconds} s each ...", flush=True)
            done = {}
            for k in order:
                done[k] = await (runs.none() if k == "none" else run_console())
            pairs[kind].append(paired(kind, done, order[0]))
    return pairs


def reclaim_timed() -> dict[str, Any]:
    """The console's reclaim of the cycles that died frozen (console/memory.py), run once after
    the key presses: the stall it costs an idle operator, with the whole table in memory."""
    frozen = gc.get_freeze_count()
    wall, cpu = time.perf_counter(), time.thread_time()
    found = memory.reclaim()
    return {"ms": round((time.perf_counter() - wall) * 1000, 1), "cpu_ms": round((time.thread_time() - cpu) * 1000, 1),
            "found": found, "frozen_before": frozen, "frozen_after": gc.get_freeze_count()}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    sipp_core, server_core, cores_note = c.pick_cores()
    c.pin_self(sipp_core)
    with tempfile.TemporaryDirectory(prefix="sc-bench-console-") as tmp:
        work = Path(tmp)
        port = c.free_port()
        args.sipp_port = c.free_port()  # every sipp run's source port: they refresh the same bindings
        injection = work / "aors.csv"
        c.write_injection(injection, 0, args.contacts)
        result: dict[str, Any] = {"contacts": args.contacts, "cores": cores_note, "machine": c.machine(),
                                  "commit": c.source_revision()}
        print(f"registering {args.contacts:,} AORs with sipp ...", flush=True)
        runs = Runs(args, work, port, injection, (sipp_core, server_core))
        result["preload"] = await asyncio.to_thread(closed_loop, port, injection, work / "preload", sipp_core,
                                                    args.sipp_port, calls=args.contacts)
        result["pairs"] = await throughput(args, runs)
        result["summary"] = {kind: {"reg_ratio": spread([p["reg_ratio"] for p in ps]),
                                    "registrar_cpu_us_diff": spread([p["registrar_cpu_us_diff"] for p in ps]),
                                    "console_cpu_us": spread([p[kind]["cpu_us_per_register"]["console"] for p in ps])}
                             for kind, ps in result["pairs"].items() if ps}
        server = runs.server
        try:
            client = await ControlClient(str(work / "control.sock"), actor="console").connect()
            app = TimedConsole(client, embedded=False)
            window = 15 if args.quick else 30
            print(f"{args.rate:,} REG/s for {window} s while the console loads the table ...", flush=True)
            during_load = asyncio.create_task(asyncio.to_thread(
                paced, port, injection, work / "paced-load", sipp_core, args.sipp_port, args.rate, window))
            await asyncio.sleep(2)  # the rate is up
            t0 = time.perf_counter()
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.main.loaded, timeout=120)
                result["console_load_s"] = round(time.perf_counter() - t0, 2)
                result["load_under_traffic"] = await during_load
                result["rows"] = len(app.main.registry)
                result["frozen_after_load"] = gc.get_freeze_count()  # the reclaim's base (console/memory.py)
                print(f"console loaded {result['rows']:,} rows in {result['console_load_s']} s", flush=True)
                seconds = max(20, args.presses * 2)
                print(f"{args.rate:,} REG/s for up to {seconds} s while pressing keys ...", flush=True)
                sender = asyncio.create_task(asyncio.to_thread(
                    paced, port, injection, work / "paced", sipp_core, args.sipp_port, args.rate, seconds))
                await asyncio.sleep(2)  # the rate is up
                with collections_timed() as pauses:
                    latencies = await key_latencies(pilot, app, args.presses)
                result["gc_during_keys"] = pauses
                result["paced_load"] = await sender
                result["reclaim"] = reclaim_timed()
            await client.close()
        finally:
            server.stop(timeout=60)
    result["key_latency_ms"] = {k: {"p50": round(c.median(v), 1), "p95": round(c.percentile(v, 95), 1),
                                    "max": round(max(v), 1), "n": len(v), "each": [round(x, 1) for x in v]}
                                for k, v in latencies.items()}
    return result


LABELS = {"attached": "sipconsole attach (another process)", "embedded": "sipconsole (console in a child process)",
          "bare": "a compact subscriber, no console"}


def report_pairs(r: dict[str, Any]) -> list[str]:
    """The summary (median of the pairs, min-max) and every pair, for the throughput runs."""
    if not r["summary"]:
        return []

    def ranged(v: dict[str, Any], fmt: str) -> str:
        return f"{v['median']:{fmt}} ({v['min']:{fmt}} to {v['max']:{fmt}})"

    summary = [[LABELS[kind], str(v["reg_ratio"]["n"]), ranged(v["reg_ratio"], ".0%"),
                ranged(v["registrar_cpu_us_diff"], "+.1f"), ranged(v["console_cpu_us"], ".1f")]
               for kind, v in r["summary"].items()]
    each = []
    for kind, pairs in r["pairs"].items():
        for i, p in enumerate(pairs, 1):
            none, cons = p["none"], p[kind]
            each.append([f"{kind} {i}", f"{none['start']}/{cons['start']}", f"{p['first']} first",
                         f"{none['reg_per_s']:,}", f"{cons['reg_per_s']:,}", f"{p['reg_ratio']:.0%}",
                         f"{none['cpu_us_per_register']['registrar']:.1f}",
                         f"{cons['cpu_us_per_register']['registrar']:.1f}", f"{p['registrar_cpu_us_diff']:+.1f}",
                         f"{cons['cpu_us_per_register']['console']:.1f}"])
    return [
        "a console's cost: pairs of sipp closed-loop runs (UDP), the console's run beside a run without one",
        "in the same serve start (sipconsole: the serve run just before its start or after its exit)",
        c.table(["console", "pairs", "REG/s of none: median (min to max)",
                 "registrar CPU us/REG, console minus none", "console's own CPU us/REG"], summary,
                right={1, 2, 3, 4}),
        "",
        c.table(["pair", "start none/console", "order", "none REG/s", "console REG/s", "of none",
                 "none us/REG", "console us/REG", "difference", "console's own us/REG"], each,
                right={3, 4, 5, 6, 7, 8, 9}),
        "RSS after each kind's last pair, MiB: " + "; ".join(
            f"{kind}: " + ", ".join(f"{name} {v}" for name, v in pairs[-1][kind]["rss_mib"].items())
            for kind, pairs in r["pairs"].items() if pairs),
        "",
    ]


def report(r: dict[str, Any]) -> str:
    load = r["paced_load"]
    lines = [
        f"{r['contacts']:,} contacts ({r['rows']:,} AOR rows) · {r['cores']}",
        "",
        *report_pairs(r),
        f"console load: {r['console_load_s']} s for the initial load (pages of 1,000 AORs); meanwhile "
        f"{r['load_under_traffic']['offered_per_s']:,} REG/s offered: "
        f"{r['load_under_traffic']['answered_per_s']:,}/s answered, {r['load_under_traffic']['failed']} failed, "
        f"response p50 {r['load_under_traffic']['rtt_ms_p50']} ms / p99 {r['load_under_traffic']['rtt_ms_p99']} ms",
        f"during the key presses: {load['offered_per_s']:,} REG/s offered, {load['answered_per_s']:,}/s answered, "
        f"{load['failed']} failed, response p50 {load['rtt_ms_p50']} ms / p99 {load['rtt_ms_p99']} ms",
        "garbage collector during the key presses (this process): " + ("; ".join(
            f"{gen} {v['n']} passes, {v['total_ms']} ms in all (CPU {v['cpu_total_ms']}), "
            f"longest {v['max_ms']} ms (CPU {v['cpu_max_ms']})"
            for gen, v in sorted(r.get("gc_during_keys", {}).items())) or "no pass"),
        "the console's reclaim after them (console/memory.py, run when idle): " + (
            "{ms} ms (CPU {cpu_ms}), {found:,} unreachable objects found, frozen {frozen_before:,} -> "
            "{frozen_after:,} ({loaded:,} after the load)".format(**r["reclaim"], loaded=r["frozen_after_load"])
            if "reclaim" in r else "not measured"),
        "",
        c.table(["key -> updated frame", "p50 ms", "p95 ms", "max ms", "n"], [
            [k, f"{v['p50']}", f"{v['p95']}", f"{v['max']}", str(v["n"])] for k, v in r["key_latency_ms"].items()
        ], right={1, 2, 3, 4}),
    ]
    return "\n".join(lines)


async def subscribe(control: str) -> None:
    """The bare kind's subscriber: a console's compact event stream, read and dropped."""
    client = await ControlClient(control, actor="console").connect()
    print("connected, subscribing", flush=True)
    with contextlib.suppress(ConnectionError):
        async for _ in client.events(compact=True, expand=False):
            pass


def main() -> None:
    args = parse_args()
    install_fast_loop()
    if args.subscribe:
        asyncio.run(subscribe(args.subscribe))
        return
    result = asyncio.run(bench(args))
    print()
    print(report(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()

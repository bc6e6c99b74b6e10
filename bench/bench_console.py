"""Console at scale: 100,000 contacts, ~1,000 REGISTERs/s, and the keys must stay responsive.

The registrar runs in this process with the console beside it on the same event loop, exactly
as ``sipconsole`` runs them; the console is headless (Pilot), everything else is real: sipp sends
REGISTERs over UDP from the other core, the core commits to SQLite, events reach the console.

1. sipp registers ``--contacts`` distinct AORs (one contact each).
2. Registrar throughput without the console: sipp closed loop (200 in flight) for ``--seconds``.
3. The console opens while sipp sends ``--rate`` REGISTERs/s: time until the 100,000 rows are
   loaded (in pages of 1,000 AORs, the registrar serving between two pages), and how the
   registrar answered meanwhile (answered/s, failures, response-time p99).
   And at ``--rate`` REGISTERs/s (sipp paced): the CPU this process spends.
4. Registrar throughput with the console open: the same closed loop; the CPU at ``--rate``.
5. sipp paced at ``--rate`` REGISTERs/s while keys are pressed: keypress -> updated-frame latency.
   The frame time is taken when Textual composes the first frame that shows the key's effect
   (``App._display``, called in headless mode too, after the compositor rendered the update).
6. Throughput with the console again, then without it again (after it quit): runs alternate so
   that drift on a shared machine does not favour either side.

    python bench/bench_console.py            # 100,000 contacts, 1,000 REG/s, 10-s throughput runs
    python bench/bench_console.py --quick    # 20,000 contacts, 5-s runs

Prints a table and writes bench/results/console.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common as c  # noqa: E402

from console.app import SipConsole  # noqa: E402
from registrar_core.config import build_config  # noqa: E402
from registrar_core.control import LocalClient  # noqa: E402
from registrar_core.server import Server, install_fast_loop  # noqa: E402

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
    args = p.parse_args()
    args.contacts = args.contacts or (20_000 if args.quick else 100_000)
    args.seconds = args.seconds or (5 if args.quick else 10)
    return args


def closed_loop(port: int, injection: Path, work: Path, core: int | None, *, seconds: int | None = None,
                calls: int | None = None) -> dict[str, Any]:
    """sipp with IN_FLIGHT REGISTERs always outstanding; REGISTERs/s answered 200."""
    run = c.run_sipp(port, c.SCENARIOS / "register.xml", injection, work, users=IN_FLIGHT, duration=seconds,
                     calls=calls, core=core, rtt=False)
    periods = c.steady_periods(run, IN_FLIGHT, warmup=1.0)
    rate = c.median([p["rate"] for p in periods]) if periods else run.successful / run.wall
    return {"ok": run.successful, "failed": run.failed, "wall_s": round(run.wall, 2),
            "reg_per_s": round(rate or 0), "retransmissions": run.retransmissions}


def paced(port: int, injection: Path, work: Path, core: int | None, rate: int, seconds: int) -> dict[str, Any]:
    """sipp sending ``rate`` REGISTERs/s for ``seconds``: how many were answered, and how fast."""
    work.mkdir(parents=True, exist_ok=True)
    stat = work / "paced.csv"
    cmd = ["sipp", f"127.0.0.1:{port}", "-sf", str(c.SCENARIOS / "register.xml"), "-inf", str(injection),
           "-r", str(rate), "-m", str(rate * seconds), "-t", "u1", "-i", "127.0.0.1", "-p", str(c.free_port()),
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


async def paced_cpu(port: int, injection: Path, work: Path, core: int | None, rate: int,
                    seconds: int) -> dict[str, Any]:
    """A paced run, plus the CPU this process (registrar, and console if open) spent meanwhile."""
    cpu, wall = time.process_time(), time.monotonic()
    result = await asyncio.to_thread(paced, port, injection, work, core, rate, seconds)
    result["cpu_percent_of_a_core"] = round((time.process_time() - cpu) / (time.monotonic() - wall) * 100, 1)
    return result


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


# What `sipconsole attach` asks of the registrar: the event stream over the control socket,
# read by another process (the console's own rendering then costs the registrar nothing).
ATTACHED_READER = """
import asyncio, sys
from registrar_core.control import ControlClient
async def main():
    client = await ControlClient(sys.argv[1]).connect()
    async for _ in client.events():
        pass
asyncio.run(main())
"""


def attached_reader(control: Path, core: int | None) -> subprocess.Popen[bytes]:
    """A process that subscribes to the registrar's events and reads them all, as an attached console."""
    return subprocess.Popen(c.pinned([sys.executable, "-c", ATTACHED_READER, str(control)], core),
                            env={**os.environ, "PYTHONPATH": str(c.ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def rss_mib() -> float:
    return c.rss_kib(os.getpid()) / 1024


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    sipp_core, server_core, cores_note = c.pick_cores()
    c.pin_self(server_core)
    with tempfile.TemporaryDirectory(prefix="sc-bench-console-") as tmp:
        work = Path(tmp)
        port = c.free_port()
        config = build_config({"listen": [f"udp:127.0.0.1:{port}"], "db": str(work / "location.db"),
                               "control": str(work / "control.sock"), "auth": False, "ip_budget": 0,
                               "max_expires": 7200})
        injection = work / "aors.csv"
        c.write_injection(injection, 0, args.contacts)
        server = Server(config)
        await server.start()
        result: dict[str, Any] = {"contacts": args.contacts, "cores": cores_note, "machine": c.machine()}
        try:
            print(f"registering {args.contacts:,} AORs with sipp ...", flush=True)
            result["preload"] = await asyncio.to_thread(closed_loop, port, injection, work / "preload",
                                                        sipp_core, calls=args.contacts)
            alone, shared = [], []

            async def run(into: list[dict[str, Any]], label: str) -> None:
                print(f"throughput {label}: sipp closed loop for {args.seconds} s ...", flush=True)
                into.append(await asyncio.to_thread(closed_loop, port, injection, work / f"{label}-{len(into)}",
                                                    sipp_core, seconds=args.seconds))

            await run(alone, "without the console")
            reader = attached_reader(work / "control.sock", sipp_core)
            try:
                await asyncio.sleep(1)  # subscribed
                attached: list[dict[str, Any]] = []
                await run(attached, "with a console attached (event stream to another process)")
                result["throughput_attached"] = attached
            finally:
                reader.terminate()
                reader.wait(timeout=10)
            print(f"{args.rate:,} REG/s for {args.seconds} s without the console: CPU ...", flush=True)
            result["cpu_without_console"] = await paced_cpu(port, injection, work / "cpu-alone", sipp_core,
                                                            args.rate, args.seconds)
            rss_before = rss_mib()
            app = TimedConsole(LocalClient(server.core), embedded=True)
            window = 15 if args.quick else 30
            print(f"{args.rate:,} REG/s for {window} s while the console loads the table ...", flush=True)
            during_load = asyncio.create_task(asyncio.to_thread(
                paced, port, injection, work / "paced-load", sipp_core, args.rate, window))
            await asyncio.sleep(2)  # the rate is up
            t0 = time.perf_counter()
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.main.loaded, timeout=120)
                result["console_load_s"] = round(time.perf_counter() - t0, 2)
                result["load_under_traffic"] = await during_load
                await until(pilot, lambda: app.main.status.stats is not None, timeout=10)
                result["console_rss_mib"] = round(rss_mib() - rss_before)
                result["rows"] = len(app.main.registry)
                print(f"console loaded {result['rows']:,} rows in {result['console_load_s']} s", flush=True)
                await run(shared, "with the console open")
                print(f"{args.rate:,} REG/s for {args.seconds} s with the console open: CPU ...", flush=True)
                result["cpu_with_console"] = await paced_cpu(port, injection, work / "cpu-console", sipp_core,
                                                             args.rate, args.seconds)
                seconds = max(20, args.presses * 2)
                print(f"{args.rate:,} REG/s for up to {seconds} s while pressing keys ...", flush=True)
                sender = asyncio.create_task(asyncio.to_thread(
                    paced, port, injection, work / "paced", sipp_core, args.rate, seconds))
                await asyncio.sleep(2)  # the rate is up
                latencies = await key_latencies(pilot, app, args.presses)
                result["paced_load"] = await sender
                await run(shared, "with the console open")
            await run(alone, "without the console")
            result["throughput_without_console"] = alone
            result["throughput_with_console"] = shared
        finally:
            await server.stop()
    result["key_latency_ms"] = {k: {"p50": round(c.median(v), 1), "p95": round(c.percentile(v, 95), 1),
                                    "max": round(max(v), 1), "n": len(v)} for k, v in latencies.items()}
    return result


def report(r: dict[str, Any]) -> str:
    alone = [run["reg_per_s"] for run in r["throughput_without_console"]]
    shared = [run["reg_per_s"] for run in r["throughput_with_console"]]
    attached = [run["reg_per_s"] for run in r["throughput_attached"]]
    load = r["paced_load"]
    lines = [
        f"{r['contacts']:,} contacts ({r['rows']:,} AOR rows) · {r['cores']}",
        f"console load: {r['console_load_s']} s for the initial load (pages of 1,000 AORs) · "
        f"+{r['console_rss_mib']} MiB RSS",
        f"meanwhile, {r['load_under_traffic']['offered_per_s']:,} REG/s offered: "
        f"{r['load_under_traffic']['answered_per_s']:,}/s answered, {r['load_under_traffic']['failed']} failed, "
        f"response p50 {r['load_under_traffic']['rtt_ms_p50']} ms / p99 {r['load_under_traffic']['rtt_ms_p99']} ms",
        "",
        c.table(["registrar throughput (sipp closed loop, UDP)", "REG/s (mean)", "runs"], [
            ["without the console", f"{sum(alone) / len(alone):,.0f}", ", ".join(f"{v:,}" for v in alone)],
            ["with the console open (same process)", f"{sum(shared) / len(shared):,.0f}",
             ", ".join(f"{v:,}" for v in shared)],
            ["with a console attached (another process)", f"{attached[0]:,}", ""],
            ["ratio open / without", f"{sum(shared) / len(shared) / max(1, sum(alone) / len(alone)):.0%}", ""],
            ["ratio attached / without", f"{attached[0] / max(1, sum(alone) / len(alone)):.0%}", ""],
        ], right={1}),
        "",
        c.table([f"CPU of the registrar process at {load['offered_per_s']:,} REG/s", "% of a core"], [
            ["without the console", f"{r['cpu_without_console']['cpu_percent_of_a_core']}"],
            ["with the console open (idle)", f"{r['cpu_with_console']['cpu_percent_of_a_core']}"],
        ], right={1}),
        "",
        f"during the key presses: {load['offered_per_s']:,} REG/s offered, {load['answered_per_s']:,}/s answered, "
        f"{load['failed']} failed, response p50 {load['rtt_ms_p50']} ms / p99 {load['rtt_ms_p99']} ms",
        "",
        c.table(["key -> updated frame", "p50 ms", "p95 ms", "max ms", "n"], [
            [k, f"{v['p50']}", f"{v['p95']}", f"{v['max']}", str(v["n"])] for k, v in r["key_latency_ms"].items()
        ], right={1, 2, 3, 4}),
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    install_fast_loop()
    result = asyncio.run(bench(args))
    print()
    print(report(result))
    print(f"\nwrote {c.write_json('console.json', result)}")


if __name__ == "__main__":
    main()

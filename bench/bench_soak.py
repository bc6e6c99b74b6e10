#!/usr/bin/env python3
"""Soak benchmark (issue 9, item 6): keep 10,000 contacts refreshing against `sipconsole serve`
for 30 minutes and watch the registrar's memory and file descriptors over time.

    python3 bench/bench_soak.py                  # 10,000 contacts, 30 minutes
    python3 bench/bench_soak.py --minutes 3      # a short run

What the load does, per refresh interval (default 60 s, Expires twice that):

* every contact re-REGISTERs once (same Call-ID, next CSeq), spread evenly over the interval;
  --tcp of them do it over their own long-lived TCP connection, the rest over UDP;
* --churn of the slots (default 1 %) drop their AOR and take a new one: the old binding is
  left to expire (the expiry timer deletes it), the new one is an insert;
* --unregister of the refreshes (default 1 %) are a removal followed by a fresh registration
  under a new Call-ID (delete + insert).

So the location table holds about --contacts bindings the whole time, while rows, AORs,
expiry-heap entries and transactions keep coming and going: a leak in any of them shows as
growth. Every --sample seconds it records the registrar's RSS (and peak), descriptors,
threads, CPU, database and WAL size, the contacts it holds (``stats`` over the control
socket), and the client's view: REGISTERs sent, answered 200, failed, unanswered, and the
latency p50/p99. Warm-up lasts Expires + one interval (default 180 s): the table fills in
the first interval, and only after Expires do churned bindings start expiring and the
expiry heap and transaction table reach their steady size. "Flat" means the RSS after
warm-up grew less than max(5 MiB, 5 %) by the end and, when the steady part lasted 10
minutes or more, the fitted slope is below 1 MiB per 10 minutes. Results go to stdout and
to --out (JSON); the exit status is 0 when memory was flat and every REGISTER got its 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# -- the registrar under test ------------------------------------------------------------

class Registrar:
    def __init__(self, workdir: Path, port: int, extra: list[str]) -> None:
        self.workdir = workdir
        self.port = port
        self.db = workdir / "location.db"
        self.control = workdir / "control.sock"
        self.log = workdir / "serve.log"
        cmd = [sys.executable, "-m", "sipconsole", "serve",
               "--listen", f"udp:127.0.0.1:{port}", "--listen", f"tcp:127.0.0.1:{port}",
               "--db", str(self.db), "--control", str(self.control),
               "--auth", "off", "--ip-budget", "0", "--max-tcp-per-ip", "0", *extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            if self.control.exists():
                try:
                    self.rpc("stats")
                    return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("serve did not come up")

    def rpc(self, method: str, **params) -> dict:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.control))
            s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)["result"]

    def sample(self) -> dict:
        pid = self.proc.pid
        status = {k: v.strip() for k, _, v in (line.partition(":") for line in
                                               Path(f"/proc/{pid}/status").read_text().splitlines())}
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        wal = Path(f"{self.db}-wal")
        return {
            "rss_kb": int(status["VmRSS"].split()[0]),
            "hwm_kb": int(status["VmHWM"].split()[0]),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(status["Threads"]),
            "cpu_s": (int(stat[11]) + int(stat[12])) / CLK_TCK,
            "db_kb": self.db.stat().st_size // 1024 if self.db.exists() else 0,
            "wal_kb": wal.stat().st_size // 1024 if wal.exists() else 0,
        }

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


# -- the load ----------------------------------------------------------------------------

@dataclass
class Slot:
    index: int
    tcp: bool
    generation: int = 0
    call_id: str = ""
    cseq: int = 0

    @property
    def aor(self) -> str:
        return f"soak{self.index}g{self.generation}@soak.test"


@dataclass
class Window:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    unanswered: int = 0
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        pct = (lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)) if lat else (lambda p: None)
        return {"sent": self.sent, "ok": self.ok, "failed": self.failed, "unanswered": self.unanswered,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def register(aor: str, call_id: str, cseq: int, contact: str, expires: int, via: str, transport: str) -> bytes:
    return (
        f"REGISTER sip:soak.test SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {via};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:{aor}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:{aor}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: {contact}\r\n"
        f"Expires: {expires}\r\n"
        f"User-Agent: sipconsole-soak\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def call_id_of(data: bytes) -> str | None:
    for line in data.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"call-id", b"i"):
            return value.strip().decode("latin-1")
    return None


def status_of(data: bytes) -> int:
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


class Load:
    def __init__(self, port: int, args: argparse.Namespace) -> None:
        self.port = port
        self.args = args
        self.rng = random.Random(args.seed)
        self.expires = int(args.interval * 2)
        self.window = Window()
        self.waiting: dict[str, tuple[float, asyncio.Future[int]]] = {}
        self.udp: list[asyncio.DatagramTransport] = []
        self.tcp: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self.slots = [Slot(i, tcp=i < args.tcp) for i in range(args.contacts)]

    # transports
    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        load = self

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr) -> None:
                load.answered(data)

        for _ in range(self.args.udp_sockets):
            transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
            self.udp.append(transport)

    async def tcp_connection(self, slot: Slot) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        conn = self.tcp.get(slot.index)
        if conn is None or conn[1].is_closing():
            conn = await asyncio.open_connection("127.0.0.1", self.port)
            self.tcp[slot.index] = conn
            asyncio.ensure_future(self.read_tcp(slot.index, conn[0]))
        return conn

    async def read_tcp(self, index: int, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() in (b"content-length", b"l"):
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                self.answered(head)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            self.tcp.pop(index, None)

    def answered(self, data: bytes) -> None:
        entry = self.waiting.get(call_id_of(data) or "")
        if entry is not None and not entry[1].done():
            entry[1].set_result(status_of(data))

    # one REGISTER, waited for
    async def send(self, slot: Slot, expires: int) -> None:
        slot.cseq += 1
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[slot.call_id] = (time.monotonic(), fut)
        if slot.tcp:
            reader, writer = await self.tcp_connection(slot)
            host, port = writer.get_extra_info("sockname")[:2]
            contact = f"<sip:{slot.aor.split('@')[0]}@{host}:{port};transport=tcp>"
            writer.write(register(slot.aor, slot.call_id, slot.cseq, contact, expires, f"{host}:{port}", "TCP"))
        else:
            transport = self.udp[slot.index % len(self.udp)]
            host, port = transport.get_extra_info("sockname")[:2]
            contact = f"<sip:{slot.aor.split('@')[0]}@{host}:{port}>"
            data = register(slot.aor, slot.call_id, slot.cseq, contact, expires, f"{host}:{port}", "UDP")
            transport.sendto(data, ("127.0.0.1", self.port))
        self.window.sent += 1
        start = time.monotonic()
        try:
            status = await asyncio.wait_for(asyncio.shield(fut), self.args.timeout)
        except asyncio.TimeoutError:
            self.window.unanswered += 1
            return
        finally:
            self.waiting.pop(slot.call_id, None)
        self.window.latencies.append(time.monotonic() - start)
        if status == 200:
            self.window.ok += 1
        else:
            self.window.failed += 1

    async def refresh(self, slot: Slot) -> None:
        if not slot.call_id or self.rng.random() < self.args.churn:
            if slot.call_id:
                slot.generation += 1  # the old AOR's binding is left to expire
            slot.call_id = f"{secrets.token_hex(8)}@soak"
            slot.cseq = 0
        elif self.rng.random() < self.args.unregister:
            await self.send(slot, 0)
            slot.call_id = f"{secrets.token_hex(8)}@soak"
            slot.cseq = 0
        await self.send(slot, self.expires)

    async def run(self, seconds: float) -> None:
        """Each slot refreshes once per interval, spread evenly, until ``seconds`` have passed."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        step = self.args.interval / len(self.slots)
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while True:
            at = start + n * step
            if at - start >= seconds:
                break
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(self.refresh(self.slots[n % len(self.slots)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.wait(tasks, timeout=self.args.timeout + 1)

    def take_window(self) -> dict:
        window, self.window = self.window, Window()
        return window.summary()

    def close(self) -> None:
        for transport in self.udp:
            transport.close()
        for _, writer in self.tcp.values():
            writer.close()


# -- the run -----------------------------------------------------------------------------

def slope_kb_per_min(points: list[tuple[float, int]]) -> float:
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] / 60 for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


async def soak(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    port = c.free_port()
    registrar = Registrar(workdir, port, args.serve_arg or [])
    load = Load(port, args)
    samples: list[dict] = []
    seconds = args.minutes * 60
    try:
        await load.open()
        runner = asyncio.ensure_future(load.run(seconds))
        t0 = time.monotonic()
        print(f"soak: {args.contacts} contacts ({args.tcp} over TCP), refresh every {args.interval:g} s "
              f"(Expires {load.expires}), {args.minutes:g} min, registrar pid {registrar.proc.pid}, {workdir}")
        print(f"{'t(s)':>6} {'RSS MiB':>8} {'peak':>6} {'fds':>5} {'thr':>4} {'cpu%':>5} {'contacts':>8} "
              f"{'db KiB':>7} {'wal KiB':>7} {'sent':>6} {'ok':>6} {'fail':>5} {'lost':>5} {'p50ms':>6} {'p99ms':>6}")
        last_cpu = None
        while not runner.done():
            await asyncio.sleep(min(args.sample, max(0.0, seconds - (time.monotonic() - t0))) or args.sample)
            t = time.monotonic() - t0
            proc = registrar.sample()
            stats = await asyncio.get_running_loop().run_in_executor(None, registrar.rpc, "stats")
            client = load.take_window()
            cpu = None if last_cpu is None else (proc["cpu_s"] - last_cpu[1]) / (t - last_cpu[0]) * 100
            last_cpu = (t, proc["cpu_s"])
            row = {"t": round(t, 1), **proc, "contacts": stats["location_contacts"],
                   "aors": stats["registered_users"], "expired_total": stats["expired_contacts"],
                   "storage_error": stats["storage_error"], "cpu_pct": None if cpu is None else round(cpu, 1),
                   **client}
            samples.append(row)
            print(f"{row['t']:>6.0f} {row['rss_kb'] / 1024:>8.1f} {row['hwm_kb'] / 1024:>6.1f} {row['fds']:>5} "
                  f"{row['threads']:>4} {cpu if cpu is not None else 0:>5.1f} {row['contacts']:>8} {row['db_kb']:>7} "
                  f"{row['wal_kb']:>7} {client['sent']:>6} {client['ok']:>6} {client['failed']:>5} "
                  f"{client['unanswered']:>5} {client['p50_ms'] or 0:>6} {client['p99_ms'] or 0:>6}", flush=True)
        await runner
    finally:
        load.close()
        exit_code = registrar.stop()
    warmup = args.warmup if args.warmup is not None else load.expires + args.interval
    steady = [s for s in samples if s["t"] >= warmup] or samples[-1:]
    first, last = steady[0], steady[-1]
    growth = last["rss_kb"] - first["rss_kb"]
    slope = slope_kb_per_min([(s["t"], s["rss_kb"]) for s in steady])
    steady_minutes = (last["t"] - first["t"]) / 60
    # The slope says something only over a long enough stretch: short runs are judged on growth.
    flat = growth < max(5 * 1024, first["rss_kb"] * 0.05) and (steady_minutes < 10 or slope * 10 < 1024)
    totals = {k: sum(s[k] for s in samples) for k in ("sent", "ok", "failed", "unanswered")}
    summary = {
        "contacts": args.contacts, "tcp": args.tcp, "minutes": args.minutes, "interval_s": args.interval,
        "warmup_s": warmup, "steady_samples": len(steady), "steady_minutes": round(steady_minutes, 1),
        "churn": args.churn, "unregister": args.unregister, **totals,
        "rss_after_warmup_kb": first["rss_kb"], "rss_end_kb": last["rss_kb"],
        "rss_max_kb": max(s["rss_kb"] for s in samples), "rss_growth_after_warmup_kb": growth,
        "rss_slope_kb_per_min": round(slope, 1),
        "fds_min": min(s["fds"] for s in steady), "fds_max": max(s["fds"] for s in steady),
        "contacts_min": min(s["contacts"] for s in steady), "contacts_max": max(s["contacts"] for s in steady),
        "storage_errors_seen": sorted({s["storage_error"] for s in samples if s["storage_error"]}),
        "memory_flat": flat, "serve_exit_code": exit_code,
    }
    print(json.dumps(summary, indent=2))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"machine": {"python": platform.python_version(), "kernel": platform.release(), "nproc": os.cpu_count()},
            "summary": summary, "samples": samples}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    p.add_argument("--contacts", type=int, default=10_000, help="contacts kept registered (default 10000)")
    p.add_argument("--tcp", type=int, default=200, help="of which over their own TCP connection (default 200)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between refreshes of a contact (default 60)")
    p.add_argument("--churn", type=float, default=0.01, help="share of refreshes that move to a new AOR (default 0.01)")
    p.add_argument("--unregister", type=float, default=0.01,
                   help="share of refreshes that unregister first (default 0.01)")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--warmup", type=float, help="seconds before memory must be flat (default Expires + interval)")
    p.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for an answer (default 4)")
    p.add_argument("--udp-sockets", type=int, default=16, help="client UDP sockets (default 16)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", help="keep the database and log here (default: a temporary directory)")
    p.add_argument("--serve-arg", action="append", help="extra option for `sipconsole serve` (repeatable)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"), help="JSON results file")
    args = p.parse_args()
    result = asyncio.run(soak(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"results in {out}")
    s = result["summary"]
    return 0 if s["memory_flat"] and not s["failed"] and not s["unanswered"] else 1


if __name__ == "__main__":
    sys.exit(main())

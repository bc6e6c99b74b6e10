"""REGISTER/s over TLS and secure WebSocket with many long-lived connections: sipconsole
against Kamailio 5.6 (tls, xhttp and websocket modules, usrloc in memory).

Debian's sipp is built without TLS, so the load generator is this script: asyncio (uvloop when
installed) pinned to its own core, N connections opened (and TLS/WebSocket handshakes done)
before the clock starts, each refreshing its own AOR closed-loop (one REGISTER in flight per
connection, a new CSeq each time, as a phone does). WebSocket frames are masked as a browser's.
The generator is Python: its core's CPU is reported, and a figure where it is near 100 % is
the generator's ceiling, not the server's (the table says so).

    python bench/bench_tls_ws.py [--connections 500] [--seconds 10] [--runs 3] [--no-kamailio]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (RESULTS, ROOT, Managed, free_port, kamailio_available, machine,  # noqa: E402
                          pick_cores, pin_self, pinned, sipconsole_lab_options)

DOMAIN = "bench.test"


def certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (trustme, the tests' CA)."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / "cert.pem", directory / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def register(user: str, local_port: int, cseq: int, call_id: str, transport: str) -> bytes:
    return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 127.0.0.1:{local_port};branch=z9hG4bK{cseq:x}{call_id[:8]};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag={call_id[8:16]}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:{user}@127.0.0.1:{local_port};transport={transport.lower()}>\r\n"
            f"Expires: 3600\r\nUser-Agent: bench\r\nContent-Length: 0\r\n\r\n").encode()


def ws_frame(payload: bytes) -> bytes:
    """One masked text frame (RFC 6455 §5.3: a client masks every frame)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
    return head + mask + masked


OK = b"SIP/2.0 200 "


class Client:
    """One connection refreshing one AOR in a closed loop; counts 200s."""

    def __init__(self, index: int, ws: bool) -> None:
        self.user = f"u{index:06d}"
        self.ws = ws
        self.call_id = secrets.token_hex(12)
        self.cseq = 0
        self.ok = 0
        self.failed = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, port: int, context: ssl.SSLContext, path: str) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        self.port = self.writer.get_extra_info("sockname")[1]
        if self.ws:
            key = secrets.token_urlsafe(16)
            self.writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                               f"Sec-WebSocket-Protocol: sip\r\nOrigin: https://bench.test\r\n\r\n").encode())
            head = await self.reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"WebSocket refused: {head[:60]!r}")

    async def run(self, stop: float, counting: list[bool]) -> None:
        assert self.reader is not None and self.writer is not None
        transport = "WSS" if self.ws else "TLS"
        while time.monotonic() < stop:
            self.cseq += 1
            message = register(self.user, self.port, self.cseq, self.call_id, transport)
            self.writer.write(ws_frame(message) if self.ws else message)
            data = b""
            while b"\r\n\r\n" not in data:  # one reply (Content-Length: 0), framed or not
                chunk = await self.reader.read(4096)
                if not chunk:
                    raise ConnectionError("closed by the server")
                data += chunk
            if counting[0]:
                if OK in data:
                    self.ok += 1
                else:
                    self.failed += 1


async def load(port: int, ws: bool, connections: int, seconds: float, path: str) -> dict[str, Any]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    clients = [Client(i, ws) for i in range(connections)]
    for start in range(0, connections, 100):
        await asyncio.gather(*(c.connect(port, context, path) for c in clients[start:start + 100]))
    counting = [False]
    warmup = 2.0
    stop = time.monotonic() + warmup + seconds
    tasks = [asyncio.create_task(c.run(stop, counting)) for c in clients]
    await asyncio.sleep(warmup)  # every AOR registered once: then refreshes, as in steady state
    counting[0] = True
    cpu0, t0 = time.process_time(), time.monotonic()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    errors = [r for r in results if isinstance(r, BaseException)]
    for c in clients:
        if c.writer is not None:
            c.writer.close()
    ok = sum(c.ok for c in clients)
    return {"reg_per_s": ok / elapsed, "ok": ok, "failed": sum(c.failed for c in clients) + len(errors),
            "generator_cpu_pct": 100 * cpu / elapsed, "errors": [repr(e) for e in errors[:3]]}


def start_sipconsole(work: Path, core: int | None, cert: Path, key: Path) -> tuple[Managed, int, int]:
    tls_port, wss_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "sipconsole", "serve", "--listen", f"tls:127.0.0.1:{tls_port}",
           "--listen", f"wss:127.0.0.1:{wss_port}", "--ws-path", "/", "--tls-cert", str(cert), "--tls-key", str(key),
           "--db", str(work / "location.db"), "--control", str(work / "control.sock"),
           "--max-tcp-connections", "20000", *sipconsole_lab_options(False)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_DATA_HOME": str(work / "xdg"), "XDG_RUNTIME_DIR": str(work)}
    proc = Managed(pinned(cmd, core), work / "server.log", cwd=ROOT, env=env)
    _wait_port(tls_port, proc)
    return proc, tls_port, wss_port


def start_kamailio(work: Path, core: int | None, cert: Path, key: Path) -> tuple[Managed, int, int]:
    port = free_port()
    tls_cfg = work / "tls.cfg"
    tls_cfg.write_text(f"[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
                       f"certificate = {cert}\nprivate_key = {key}\n")
    cmd = ["kamailio", "-f", str(ROOT / "bench" / "kamailio" / "registrar-tls-ws.cfg"), "-DD", "-E",
           "-m", "512", "-M", "32", "-A", f'TLSCFG="{tls_cfg}"', "-l", f"tls:127.0.0.1:{port}",
           "-Y", str(work), "-w", str(work)]
    proc = Managed(pinned(cmd, core), work / "server.log", cwd=work)
    _wait_port(port, proc)
    return proc, port, port


def _wait_port(port: int, proc: Managed, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"server exited:\n{proc.tail()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"server did not listen on {port}:\n{proc.tail()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=500, help="long-lived connections (default 500)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (default 10)")
    p.add_argument("--runs", type=int, default=3, help="runs per target and transport (default 3; median)")
    p.add_argument("--no-kamailio", action="store_true", help="skip Kamailio")
    args = p.parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    gen_core, server_core, note = pick_cores()
    pin_self(gen_core)
    targets = ["sipconsole"]
    have_kamailio, why = kamailio_available()
    if have_kamailio and not args.no_kamailio:
        targets.append("kamailio")
    elif not args.no_kamailio:
        print(why)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        cert, key = certificate(Path(tmp))
        for transport in ("tls", "wss"):
            for target in targets:
                runs = []
                for n in range(args.runs):
                    work = Path(tmp) / f"{target}-{transport}-{n}"
                    work.mkdir()
                    start = start_sipconsole if target == "sipconsole" else start_kamailio
                    proc, tls_port, wss_port = start(work, server_core, cert, key)
                    try:
                        runs.append(asyncio.run(load(tls_port if transport == "tls" else wss_port,
                                                     transport == "wss", args.connections, args.seconds, "/")))
                    finally:
                        proc.stop()
                rates = sorted(r["reg_per_s"] for r in runs)
                row = {"target": target, "transport": transport, "median": statistics.median(rates),
                       "min": rates[0], "max": rates[-1], "failed": sum(r["failed"] for r in runs),
                       "generator_cpu_pct": max(r["generator_cpu_pct"] for r in runs),
                       "errors": [e for r in runs for e in r["errors"]][:3]}
                rows.append(row)
                print(f"{target:10} {transport:3}  {row['median']:8.0f} REG/s ({row['min']:.0f}-{row['max']:.0f})"
                      f"  failed {row['failed']}  generator CPU {row['generator_cpu_pct']:.0f} %", flush=True)
    print(note)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tls_ws-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": machine(), "connections": args.connections, "seconds": args.seconds,
                               "runs": args.runs, "rows": rows}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

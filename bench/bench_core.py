"""Micro-benchmark: microseconds of CPU per REGISTER through the whole core, in process.

Not a test; figures to track across changes to the request path, robust on a shared machine
(CPU time, not wall time). Three cases, each on a RegistrarCore of this checkout:

* ``plain``: memory only, auth off; REGISTER bytes go through the transports' entry point
  (``Pipeline.receive``, the callback style they use); no sockets, no SQLite: guard, parse,
  transaction, registrar logic and reply.
* ``digest``: the same with digest auth on (1,000 subscribers, MD5 as bench_register.py):
  a REGISTER without credentials (the 401 with its nonce) and the REGISTER that answers the
  challenge (checks, nonce, nonce count, HA1, MD5, save), each timed apart; the client's work
  (reading the nonce, computing its response) is outside the timed part.
* ``udp``: the real datagram path of ``sipconsole serve``: a UDP listener of transport.py on
  127.0.0.1, uvloop when installed, a durable SQLite file (group commit, fsync), the
  collector tuned as ``Server.start`` does; a client process keeps ``--window`` REGISTERs in
  flight. CPU of the event-loop thread, and of the whole server (with the SQLite thread), per
  REGISTER. ``--max-transactions N`` caps the transaction table (serve: 200,000): with
  ``--repeat 16`` a cap of 200,000 is reached after the 10th repetition, 20,000 after the first
  (what keeping responses for Timer J costs once the table is full: bench/README.md).

Each repetition registers (first) or refreshes (after) every AOR once; the first is
reported apart, the figure is the median of the rest. Run ``python bench/bench_core.py``
(``--case`` for one); it writes ``bench/results/core.json``. For ``plain``: ``--gruu`` sends
REGISTERs that ask for GRUUs (RFC 5627), ``--watchers N`` first subscribes N other AORs to the
reg event (what the notifier costs a REGISTER of an AOR nobody watches while others are watched),
``--console`` keeps a console's compact subscription on the control socket's event stream, its
frame (what control.py's pump writes) made every ``--frame`` REGISTERs (1,250: 25,000 REG/s at 20
frames a second), inside the timed part; the write to the socket is left out. ``--output`` names
the JSON file. Every case runs with the collector tuned as ``Server.start`` tunes it (``serve``'s
thresholds, what start loaded frozen), so the figure measures what ``serve`` runs; ``--default-gc``
keeps Python's default thresholds instead, as ``plain`` and ``digest`` ran before (their figures up to
8bbb252, unless ``--server-gc`` was given, include about 7k instructions of young collections per
REGISTER).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import registrar_core  # noqa: E402
from registrar_core.api import RegistrarCore  # noqa: E402
from registrar_core.config import Listen, build_config  # noqa: E402
from registrar_core.control import _events_line  # noqa: E402
from registrar_core.server import GC_THRESHOLDS, install_fast_loop  # noqa: E402
from registrar_core.source import Source  # noqa: E402
from registrar_core.transactions import TransactionTable  # noqa: E402
from registrar_core.transport import Transports  # noqa: E402

SOURCE = Source("udp", "127.0.0.1", 5062, "udp:127.0.0.1:5060")
DOMAIN = "example.com"
SUBSCRIBERS = 1_000
_NONCE = re.compile(rb'nonce="([^"]+)"')


def register(n: int, cseq: int, port: int = 5062, authorization: str = "", gruu: bool = False) -> bytes:
    """A REGISTER of AOR ``n``; with ``gruu`` as a GRUU phone sends it (RFC 5627: an instance id
    and Supported: gruu, so the 200 carries a pub-gruu and a new temp-gruu)."""
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    instance = f';+sip.instance="<urn:uuid:00000000-0000-4000-8000-{n:012d}>"' if gruu else ""
    supported = "Supported: gruu\r\n" if gruu else ""
    return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{n}x{cseq}{'a' if auth else ''};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:u{n}@{DOMAIN}>;tag=t{n}\r\nTo: <sip:u{n}@{DOMAIN}>\r\n"
            f"Call-ID: c{n}@bench\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:u{n}@127.0.0.1:{port}>{instance}\r\n"
            f"{supported}Expires: 3600\r\nUser-Agent: bench/1.0\r\n{auth}Content-Length: 0\r\n\r\n").encode()


def subscribe(n: int) -> bytes:
    """A reg event SUBSCRIBE to an AOR that the REGISTERs never touch (w{n}@example.com)."""
    return (f"SUBSCRIBE sip:w{n}@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKs{n};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:watcher@{DOMAIN}>;tag=s{n}\r\nTo: <sip:w{n}@{DOMAIN}>\r\n"
            f"Call-ID: s{n}@bench\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:watcher@127.0.0.1:5062>\r\n"
            f"Event: reg\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n").encode()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def authorization(n: int, nonce: str) -> str:
    """What a phone answers a 401 with (qop=auth, MD5): computed outside the timed part."""
    user, uri, cnonce, nc = f"u{n}", f"sip:{DOMAIN}", f"cn{n}", "00000001"
    ha1 = _md5(f"{user}:{DOMAIN}:pw{n}")
    digest = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{_md5('REGISTER:' + uri)}")
    return (f'Digest username="{user}", realm="{DOMAIN}", nonce="{nonce}", uri="{uri}", '
            f'response="{digest}", algorithm=MD5, cnonce="{cnonce}", qop=auth, nc={nc}')


def _timed(receive, batch: list[bytes], replies: list) -> float:
    """CPU seconds to feed ``batch`` through ``receive``."""
    start = time.process_time()
    for data in batch:
        receive(data, SOURCE, replies.append)
    return time.process_time() - start


def _count(replies: list, status: bytes) -> int:
    return sum(1 for r in replies if isinstance(r, tuple) and r[0].startswith(b"SIP/2.0 " + status + b" "))


def _framed(receive, batch: list[bytes], replies: list, frame, every: int) -> float:
    """CPU seconds to feed ``batch`` through ``receive`` with ``frame()`` after every ``every``."""
    start = time.process_time()
    for first in range(0, len(batch), every):
        for data in batch[first:first + every]:
            receive(data, SOURCE, replies.append)
        frame()
    return time.process_time() - start


def server_gc(default_gc: bool) -> None:
    """The collector as ``Server.start`` leaves it (unless ``default_gc``): called once the core has started."""
    if not default_gc:
        gc.set_threshold(*GC_THRESHOLDS)
        gc.freeze()


async def plain(aors: int, repeat: int, gruu: bool = False, watchers: int = 0,
                console: bool = False, every: int = 1_250, default_gc: bool = False) -> dict[str, list[float]]:
    core = RegistrarCore(build_config({"auth": False, "ip_budget": 0, "db": ":memory:"}), memory_only=True)
    await core.start()
    server_gc(default_gc)
    replies: list[object] = []
    sub = core.subscribe_compact() if console else None
    written = [0]

    def frame() -> None:
        """What control.py's pump does for a console each frame, but the write."""
        assert sub is not None
        written[0] += len(_events_line(sub.records()))
    if watchers:
        core.sender = lambda local, conid, addr, data: True  # NOTIFYs go nowhere, unanswered
        core.reg_events.notify_timeout = 3600.0  # so none is dropped while this runs
        for n in range(watchers):
            core.pipeline.receive(subscribe(n), SOURCE, replies.append)
        await asyncio.sleep(0.01)  # their first NOTIFYs go out
        if len(core.reg_subscriptions()) != watchers:
            raise SystemExit(f"only {len(core.reg_subscriptions())} of {watchers} subscriptions live")
        replies.clear()
    per_register = []
    try:
        for cseq in range(1, repeat + 1):
            batch = [register(n, cseq, gruu=gruu) for n in range(aors)]
            seconds = (_framed(core.pipeline.receive, batch, replies, frame, every) if console
                       else _timed(core.pipeline.receive, batch, replies))
            per_register.append(seconds / aors * 1e6)
    finally:
        await core.stop()
    if _count(replies, b"200") != aors * repeat:
        raise SystemExit(f"plain: only {_count(replies, b'200')} of {aors * repeat} REGISTERs got 200")
    if console and written[0] < aors * repeat * 50:  # every REGISTER's contact is on the wire, ~100 bytes
        raise SystemExit(f"plain: the console's frames hold only {written[0]:,} bytes")
    return {"us_per_register": per_register}


async def digest(aors: int, repeat: int, default_gc: bool = False) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        config = build_config({"auth": True, "ip_budget": 0, "db": ":memory:", "auth_algorithms": ["MD5"],
                               "auth_key": str(Path(tmp) / "auth.key")})
        core = RegistrarCore(config, memory_only=True)
        logging.getLogger("registrar_core.api").setLevel(logging.ERROR)  # "no subscribers" until they are added
        await core.start()
        for n in range(min(aors, SUBSCRIBERS)):
            await core.add_subscriber(f"u{n}@{DOMAIN}", f"pw{n}")
        server_gc(default_gc)
        users = min(aors, SUBSCRIBERS)
        challenge_us, authorized_us = [], []
        try:
            for rep in range(repeat):
                cseq = 2 * rep + 1
                challenged: list[object] = []
                seconds = _timed(core.pipeline.receive, [register(n, cseq) for n in range(users)], challenged)
                challenge_us.append(seconds / users * 1e6)
                if _count(challenged, b"401") != users:
                    raise SystemExit(f"digest: only {_count(challenged, b'401')} of {users} got 401")
                nonces = [_NONCE.search(r[0]).group(1).decode() for r in challenged]  # type: ignore[index]
                batch = [register(n, cseq + 1, authorization=authorization(n, nonces[n])) for n in range(users)]
                answered: list[object] = []
                authorized_us.append(_timed(core.pipeline.receive, batch, answered) / users * 1e6)
                if _count(answered, b"200") != users:
                    raise SystemExit(f"digest: only {_count(answered, b'200')} of {users} authorized REGISTERs got 200")
        finally:
            await core.stop()
    return {"us_per_challenge": challenge_us, "us_per_authorized": authorized_us,
            "us_per_registration": [a + b for a, b in zip(challenge_us, authorized_us)]}


def client(port: int, aors: int, repeat: int, window: int) -> None:
    """The load, in its own process (``--udp-client``): keeps ``window`` REGISTERs in flight,
    prints a line after each repetition and waits for one on stdin before the next."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10.0)
    me = sock.getsockname()[1]
    target = ("127.0.0.1", port)
    for cseq in range(1, repeat + 1):
        batch = [register(n, cseq, me) for n in range(aors)]
        sys.stdin.readline()
        sent = received = 0
        while received < aors:
            while sent < aors and sent - received < window:
                sock.sendto(batch[sent], target)
                sent += 1
            answer = sock.recv(65536)
            if not answer.startswith(b"SIP/2.0 200 "):
                raise SystemExit(f"udp: got {answer[:40]!r}")
            received += 1
        print("done", flush=True)


async def udp(aors: int, repeat: int, window: int, max_transactions: int = 0) -> dict[str, list[float]]:
    gc.set_threshold(*GC_THRESHOLDS)  # as Server.start
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        config = build_config({"auth": False, "ip_budget": 0, "db": str(Path(tmp) / "location.db")})
        core = RegistrarCore(config)
        await core.start()
        if max_transactions:  # what the transaction table's memory churn costs (issue 19.1)
            core.pipeline.transactions = TransactionTable(max_entries=max_transactions)
        gc.freeze()
        transports = Transports(core.pipeline.receive, config.limits, config.tcp_idle_timeout)
        address = await transports.listen(Listen("udp", "127.0.0.1", 0))
        port = int(address.rsplit(":", 1)[1])
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > 1:  # as bench_register.py: the load on the first CPU, the server on the second
            os.sched_setaffinity(0, {cpus[1]})
        load = await asyncio.create_subprocess_exec(
            *(["taskset", "-c", str(cpus[0])] if len(cpus) > 1 and shutil.which("taskset") else []),
            sys.executable, __file__, "--udp-client", str(port), "--aors", str(aors), "--repeat", str(repeat),
            "--window", str(window), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert load.stdin is not None and load.stdout is not None
        loop_us, server_us = [], []
        try:
            for _ in range(repeat):
                await asyncio.sleep(0.5)  # the client has built its batch
                loop_start, process_start = time.thread_time(), time.process_time()
                load.stdin.write(b"go\n")
                if await asyncio.wait_for(load.stdout.readline(), 120) != b"done\n":
                    raise SystemExit("udp: the client stopped early")
                loop_us.append((time.thread_time() - loop_start) / aors * 1e6)
                server_us.append((time.process_time() - process_start) / aors * 1e6)
        finally:
            if load.returncode is None:
                load.kill()
            await load.wait()
            await transports.close()
            await core.stop()
    return {"loop_us_per_register": loop_us, "server_us_per_register": server_us}


def summary(name: str, times: list[float]) -> str:
    rest = times[1:]
    return (f"{name}: first {times[0]:.1f} us; then median {statistics.median(rest):.1f} us "
            f"(min {min(rest):.1f}, max {max(rest):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("plain", "digest", "udp", "all"), default="all")
    parser.add_argument("--aors", type=int, default=20_000, help="AORs per repetition (default 20,000; "
                        f"digest: at most {SUBSCRIBERS:,} subscribers)")
    parser.add_argument("--repeat", type=int, default=6, help="repetitions; the first registers, the rest refresh")
    parser.add_argument("--window", type=int, default=500, help="udp: REGISTERs in flight (as sipp -users)")
    parser.add_argument("--max-transactions", type=int, default=0,
                        help="udp: cap the transaction table at this many entries (default: serve's)")
    parser.add_argument("--quick", action="store_true", help="2,000 AORs")
    parser.add_argument("--gruu", action="store_true",
                        help="plain: REGISTERs asking for GRUUs (RFC 5627; the auth key file is read or made)")
    parser.add_argument("--watchers", type=int, default=0,
                        help="plain: reg event subscriptions to other AORs meanwhile (the cost of the notifier "
                             "to a REGISTER of an AOR nobody watches)")
    parser.add_argument("--console", action="store_true",
                        help="plain: a console's compact event subscription, its frame made every --frame REGISTERs")
    parser.add_argument("--frame", type=int, default=1_250, help="plain --console: REGISTERs per frame")
    parser.add_argument("--default-gc", action="store_true",
                        help="plain, digest: Python's default collector thresholds instead of serve's")
    parser.add_argument("--server-gc", action="store_true", help=argparse.SUPPRESS)  # the default now; older commands
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "core.json",
                        help="JSON output path (default bench/results/core.json)")
    parser.add_argument("--udp-client", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the udp case's load
    args = parser.parse_args()
    if args.udp_client:
        client(args.udp_client, args.aors, max(2, args.repeat), args.window)
        return
    aors = 2_000 if args.quick else args.aors
    repeat = max(2, args.repeat)
    cases = ("plain", "digest", "udp") if args.case == "all" else (args.case,)
    results: dict[str, dict[str, list[float]]] = {}
    fast = False
    for case in cases:
        if case == "udp":
            fast = install_fast_loop()
            results[case] = asyncio.run(udp(aors, repeat, args.window, args.max_transactions))
        else:
            results[case] = asyncio.run(plain(aors, repeat, args.gruu, args.watchers, args.console, args.frame, args.default_gc) if case == "plain"
                                        else digest(aors, repeat, args.default_gc))
    print(f"build {registrar_core.build()}, {aors:,} AORs, CPU per REGISTER:")
    for case, figures in results.items():
        for name, times in figures.items():
            print("  " + summary(f"{case} {name}", times))
    out: Path = args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    medians = {f"{case}.{name}": statistics.median(times[1:]) for case, figures in results.items()
               for name, times in figures.items()}
    out.write_text(json.dumps({"build": registrar_core.build(), "aors": aors, "uvloop": fast, "gruu": args.gruu,
                               "watchers": args.watchers, "max_transactions": args.max_transactions,
                               "console": args.console, "frame": args.frame, "server_gc": not args.default_gc,
                               "cases": results, "medians_us": medians}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

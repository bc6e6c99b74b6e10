"""Micro-benchmark: microseconds of CPU per REGISTER through the whole core, in process.

Not a test; a figure to track across refactors of the request path. A RegistrarCore
(memory only, auth off) is fed REGISTER bytes through the transports' entry point
(``Pipeline.receive``, the callback style they use); no sockets, no SQLite, so it measures
guard, parse, transaction, registrar logic and reply. Each repetition registers (first) or
refreshes (after) every AOR once; the first is reported apart, the figure is the median of
the rest. Run ``python bench/bench_core.py``; it writes ``bench/results/core.json``.
``--watchers N`` first subscribes N other AORs to the reg event: what the notifier costs a
REGISTER of an AOR nobody watches while others are watched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import registrar_core  # noqa: E402
from registrar_core.api import RegistrarCore  # noqa: E402
from registrar_core.config import build_config  # noqa: E402
from registrar_core.source import Source  # noqa: E402

SOURCE = Source("udp", "127.0.0.1", 5062, "udp:127.0.0.1:5060")


def register(n: int, cseq: int, gruu: bool = False) -> bytes:
    """A REGISTER of AOR ``n``; with ``gruu`` as a GRUU phone sends it (RFC 5627: an instance id
    and Supported: gruu, so the 200 carries a pub-gruu and a new temp-gruu)."""
    instance = f';+sip.instance="<urn:uuid:00000000-0000-4000-8000-{n:012d}>"' if gruu else ""
    supported = "Supported: gruu\r\n" if gruu else ""
    return (f"REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK{n}x{cseq};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:u{n}@example.com>;tag=t{n}\r\nTo: <sip:u{n}@example.com>\r\n"
            f"Call-ID: c{n}@bench\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:u{n}@127.0.0.1:5062>{instance}\r\n"
            f"{supported}Expires: 3600\r\nUser-Agent: bench/1.0\r\nContent-Length: 0\r\n\r\n").encode()


def subscribe(n: int) -> bytes:
    """A reg event SUBSCRIBE to an AOR that the REGISTERs never touch (w{n}@example.com)."""
    return (f"SUBSCRIBE sip:w{n}@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKs{n};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:watcher@example.com>;tag=s{n}\r\nTo: <sip:w{n}@example.com>\r\n"
            f"Call-ID: s{n}@bench\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:watcher@127.0.0.1:5062>\r\n"
            f"Event: reg\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n").encode()


async def measure(aors: int, repeat: int, watchers: int = 0, clock: Callable[[], float] = time.perf_counter,
                  gruu: bool = False) -> list[float]:
    """Microseconds per REGISTER for each repetition over ``aors`` AORs; with ``watchers``,
    that many other AORs are watched (reg event) meanwhile, none of those registering."""
    core = RegistrarCore(build_config({"auth": False, "ip_budget": 0, "db": ":memory:"}), memory_only=True)
    await core.start()
    replies: list[object] = []
    receive = core.pipeline.receive
    if watchers:
        core.sender = lambda local, conid, addr, data: True  # NOTIFYs go nowhere, unanswered
        core.reg_events.notify_timeout = 3600.0  # so none is dropped while this runs
        for n in range(watchers):
            receive(subscribe(n), SOURCE, replies.append)
        await asyncio.sleep(0.01)  # their first NOTIFYs go out
        if len(core.reg_subscriptions()) != watchers:
            raise SystemExit(f"only {len(core.reg_subscriptions())} of {watchers} subscriptions live")
        replies.clear()
    per_register = []
    try:
        for cseq in range(1, repeat + 1):
            batch = [register(n, cseq, gruu) for n in range(aors)]
            start = clock()
            for data in batch:
                receive(data, SOURCE, replies.append)
            per_register.append((clock() - start) / aors * 1e6)
    finally:
        await core.stop()
    answered = sum(1 for r in replies if isinstance(r, tuple) and r[0].startswith(b"SIP/2.0 200 "))
    if answered != aors * repeat:
        raise SystemExit(f"only {answered} of {aors * repeat} REGISTERs got 200")
    return per_register


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aors", type=int, default=20_000, help="AORs per repetition (default 20,000)")
    parser.add_argument("--repeat", type=int, default=6, help="repetitions; the first registers, the rest refresh")
    parser.add_argument("--quick", action="store_true", help="2,000 AORs")
    parser.add_argument("--gruu", action="store_true",
                        help="REGISTERs asking for GRUUs (RFC 5627; the auth key file is read or made)")
    parser.add_argument("--watchers", type=int, default=0,
                        help="reg event subscriptions to other AORs meanwhile (the cost of the notifier "
                             "to a REGISTER of an AOR nobody watches); results in core-watched.json")
    parser.add_argument("--cpu", action="store_true",
                        help="time the process's CPU (time.process_time), not the wall clock: on a shared, "
                             "loaded machine")
    args = parser.parse_args()
    aors = 2_000 if args.quick else args.aors
    clock = time.process_time if args.cpu else time.perf_counter
    times = asyncio.run(measure(aors, max(2, args.repeat), args.watchers, clock, args.gruu))
    refresh = times[1:]
    print(f"build {registrar_core.build()}{', GRUU' if args.gruu else ''}: first registration {times[0]:.1f} us/REGISTER; refresh median "
          f"{statistics.median(refresh):.1f} us (min {min(refresh):.1f}, max {max(refresh):.1f})"
          + (f"; {args.watchers} other AORs watched" if args.watchers else ""))
    out = ROOT / "bench" / "results" / ("core-watched.json" if args.watchers else "core.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"build": registrar_core.build(), "gruu": args.gruu, "aors": aors, "watchers": args.watchers,
                               "us_per_register": times, "refresh_median_us": statistics.median(refresh)},
                              indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Micro-benchmark: SIP messages parsed per second for a typical REGISTER.

Not a test; a figure to track. Run ``python bench/bench_parse.py``; it prints a
small table and writes ``bench/results/parse.json`` (``--output`` to name another file).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from registrar_core.sip import StreamFramer, build_response, parse_message  # noqa: E402

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n"
    b"To: \"Alice\" <sip:alice@example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 REGISTER\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060;transport=udp>;expires=3600\r\n"
    b"Expires: 3600\r\n"
    b"User-Agent: bench/1.0\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def _parse_full(data: bytes) -> None:
    """What the registrar does per REGISTER: parse, then read the contacts."""
    request = parse_message(data)
    _ = request.contacts, request.expires


def _answer(data: bytes) -> None:
    """All the sans-IO work of one REGISTER: parse, stamp the source, read, answer 200 OK."""
    request = parse_message(data)
    request.stamp_source("192.0.2.10", 5060)
    headers = request.headers
    _ = headers.get("User-Agent"), headers.values("Supported"), headers.values("Path")
    contact = f"{request.contacts[0]};expires={request.expires}"
    reply = build_response(request, 200, "OK", [("Contact", contact), ("Server", "bench")], to_tag="b1")
    bytes(reply)


def _frame_and_parse(data: bytes) -> None:
    """A TCP read holding one REGISTER: frame it, then parse it."""
    for message in StreamFramer().feed(data):
        parse_message(message)


CASES = {
    "parse_message": parse_message,
    "parse + contacts/expires": _parse_full,
    "parse + stamp + 200 OK": _answer,
    "frame + parse (TCP)": _frame_and_parse,
}


def measure(func, data: bytes, number: int, repeat: int) -> list[float]:
    """Messages per second for each of ``repeat`` runs of ``number`` calls."""
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            func(data)
        rates.append(number / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="messages per repetition")
    parser.add_argument("--repeat", type=int, default=7, help="repetitions (median is reported)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "parse.json",
                        help="where the JSON goes (another build's checkout is better left untouched)")
    args = parser.parse_args()

    measure(parse_message, REGISTER, 1_000, 1)  # warm-up
    results = {}
    print(f"{'case':<28} {'median msg/s':>14} {'min':>10} {'max':>10}")
    for name, func in CASES.items():
        rates = measure(func, REGISTER, args.number, args.repeat)
        median = statistics.median(rates)
        results[name] = {"median_per_s": round(median), "min_per_s": round(min(rates)),
                         "max_per_s": round(max(rates))}
        print(f"{name:<28} {median:>14,.0f} {min(rates):>10,.0f} {max(rates):>10,.0f}")

    out: Path = args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "message_bytes": len(REGISTER),
        "number": args.number,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "results": results,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

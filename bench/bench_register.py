"""REGISTER throughput and latency: sipconsole against Kamailio, in the same run.

sipp runs closed-loop (``-users N``: N registrations always in flight, a new one as soon as one
ends) with distinct AORs from an injection file, over UDP and TCP, against:

* ``sipconsole serve`` with its durable default (SQLite, group commit, 200 only after COMMIT);
* Kamailio with usrloc in memory (``bench/kamailio/registrar-memory.cfg``, db_mode 0);
* Kamailio with usrloc written through to SQLite (``registrar-sqlite.cfg``, db_mode 1, WAL);

and, for the digest-auth variant (sipp ``[authentication]``, two transactions per registration),
against Kamailio with ``registrar-auth.cfg`` and ``sipconsole serve --auth on`` (reported as
``n/a`` with the reason when the core has no auth or sipp cannot answer its challenge).
Then, open loop (``-r``) at 80 % of each target's own closed-loop median: latency below saturation.

Targets alternate within each repetition (their order rotates between repetitions) and each run
starts its server afresh on an empty database. sipp is pinned to one core, the server under test
to the other. The figure per run is the median of its steady 1-s sipp statistics periods (after
the warm-up, all users in flight); the figure per target is the median of the runs, with the
min and max across runs as the noise. Kamailio runs are skipped, and said so, where it is not
installed.

    python bench/bench_register.py            # full: 3 repetitions x 10 s, UDP and TCP, with auth
    python bench/bench_register.py --quick    # 1 repetition x 5 s
    python bench/bench_register.py --nice -10 --wait-quiet 60   # on a shared machine
    python bench/bench_register.py --profile py-spy   # profile sipconsole under load instead
    python bench/bench_register.py --profile cpu --transports tcp   # its CPU per REGISTER alone

Prints a table and writes bench/results/register.json.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import json
import os
import pstats
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

NA_NO_AUTH = "n/a (no auth yet)"
TRANSPORTS = {"udp": "u1", "tcp": "t1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="REGISTER throughput/latency of sipconsole vs Kamailio (sipp closed loop, then open loop at 80%%).",
        epilog="Writes bench/results/register.json. Kamailio targets are skipped when kamailio is not installed.")
    p.add_argument("--quick", action="store_true", help="short run: 1 repetition x 5 s, 2,000 AORs")
    p.add_argument("--reps", type=int, help="repetitions per target and transport (default 3)")
    p.add_argument("--duration", type=int, help="seconds of load per run (default 10)")
    p.add_argument("--warmup", type=float, help="seconds ignored at the start of each run (default 2)")
    p.add_argument("--users", type=int, default=500, help="concurrent sipp users (default 500)")
    p.add_argument("--aors", type=int, help="distinct AORs in the injection file (default 10,000)")
    p.add_argument("--auth-aors", type=int, default=1000,
                   help="distinct subscribers for the auth runs (default 1,000; must exceed --users)")
    p.add_argument("--transports", default="udp,tcp", help="comma list of udp, tcp (default both)")
    p.add_argument("--targets", default="sipconsole,kamailio-memory,kamailio-sqlite",
                   help="comma list (default sipconsole,kamailio-memory,kamailio-sqlite)")
    p.add_argument("--no-auth", action="store_true", help="skip the digest-auth variant")
    p.add_argument("--no-open", action="store_true",
                   help="skip the open-loop runs at --open-fraction of each target's closed-loop rate")
    p.add_argument("--open-fraction", type=float, default=0.8,
                   help="open-loop offered rate as a fraction of the closed-loop median (default 0.8)")
    p.add_argument("--auth-only", action="store_true", help="only the digest-auth variant")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="before each run wait up to S seconds for other processes to go below "
                        "--noisy percent of a core (default 0: do not wait)")
    p.add_argument("--noisy", type=float, default=25.0, metavar="PCT",
                   help="a run during which other processes used more than PCT%% of a core is flagged "
                        "noisy (default 25)")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="run the server and sipp at this nice level (negative needs root; on a shared "
                        "machine -10 keeps other jobs from skewing the figures; default 0)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, sipp files)")
    p.add_argument("--output", type=Path, help="JSON output path (default bench/results/register.json; with "
                   "--profile, bench/results/profile-cpu.json)")
    p.add_argument("--profile", choices=["cpu", "perf", "py-spy", "cprofile"],
                   help="instead of the comparison: sipconsole alone under load (the first of --transports, "
                        "digest with --auth-only): its CPU per REGISTER, with perf, py-spy or cProfile the hot "
                        "spots too")
    p.add_argument("--profile-seconds", type=int, default=15, help="profiling duration (default 15)")
    args = p.parse_args(argv)
    quick = args.quick
    args.reps = args.reps or (1 if quick else 3)
    args.duration = args.duration or (5 if quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.aors = args.aors or (2000 if quick else 10_000)
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    for t in args.transports:
        if t not in TRANSPORTS:
            p.error(f"unknown transport {t!r}")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in args.targets:
        if t not in ("sipconsole", "kamailio-memory", "kamailio-sqlite"):
            p.error(f"unknown target {t!r}")
    if args.aors <= args.users or args.auth_aors <= args.users:
        p.error("--aors and --auth-aors must exceed --users (one call per AOR in flight)")
    if args.duration <= args.warmup + 2:
        p.error("--duration must leave at least 2 s after --warmup")
    return args


# -- one run ------------------------------------------------------------------------------

def one_run(target: c.Target, transport: str, rep: int, args: argparse.Namespace, work: Path,
            injection: Path, scenario: Path, cores: tuple[int | None, int | None],
            rate: int | None = None) -> dict[str, Any]:
    """One server start, one sipp run against it: closed loop, or open loop at ``rate`` calls/s."""
    sipp_core, server_core = cores
    port = c.free_port()
    rundir = work / f"{target.name}-{transport}-{rep}{'-open' if rate else ''}"
    result: dict[str, Any] = {"target": target.name, "transport": transport, "rep": rep,
                              "auth": target.auth, "port": port}
    if rate:
        result["offered_rate"] = rate
    if args.wait_quiet:
        result["background_before_pct"] = c.wait_quiet(args.noisy, args.wait_quiet)
    sampler = c.CpuSampler()
    # Open loop: the registrar's own group-commit histogram beside sipp's response times says
    # how much of the tail is the wait for storage.
    metrics_port = c.free_port() if rate and target.kind == "sipconsole" else None
    if metrics_port:
        target = dataclasses.replace(target, options=(*target.options, "--metrics-listen", f"127.0.0.1:{metrics_port}"))
    server = target.start(rundir / "server", port, server_core)
    try:
        if target.auth:
            answer = c.sip_request(port, "REGISTER", user="nobody-probe")
            status = c.sip_status(answer)
            if status != 401:
                result["na"] = NA_NO_AUTH if target.kind == "sipconsole" else f"n/a (probe got {status}, not 401)"
                return result
            algorithms = c.challenge_algorithms(answer)
            result["challenge_algorithms"] = algorithms
            problem = c.sipp_digest_problem(algorithms)
            if problem:
                result["na"] = f"n/a ({problem})"
                return result
        sampler.start(server.pid)
        drops0 = c.udp_rcvbuf_errors()
        run = c.run_sipp(port, scenario, injection, rundir / "sipp", transport=TRANSPORTS[transport],
                         users=args.users, duration=args.duration, core=sipp_core, sampler=sampler,
                         timeout=args.duration + 120, rate=rate,
                         # sipp puts sip:REMOTE_IP:PORT into the digest uri unless told; RFC 3261
                         # §22.4 wants the Request-URI (sip:DOMAIN in the scenario), which a strict
                         # server checks.
                         extra=["-auth_uri", c.DOMAIN] if target.auth else None)  # sipp adds "sip:"
        sampler.sample()
        sampler.stop()
        result["udp_rcvbuf_drops"] = c.udp_rcvbuf_errors() - drops0
        result["server_alive"] = server.alive()
        tree = c.process_tree(server.pid)
        result["server_rss_kib"] = sum(_rss(p) for p in tree)
        if target.kind == "sipconsole" and server.alive():
            try:
                stats = c.control_call(rundir / "server" / "control.sock", "stats")
                result["server_contacts"] = stats.get("location_contacts")
                result["server_retransmissions_absorbed"] = stats.get("retransmissions")
                if metrics_port:
                    result.update(c.group_commits(metrics_port))
            except (OSError, RuntimeError) as exc:
                result["server_stats_error"] = str(exc)
    finally:
        sampler.stop()
        server.stop()
    periods = c.steady_periods(run, None if rate else args.users, args.warmup)
    result.update({
        "sipp_returncode": run.returncode,
        "successful": run.successful,
        "failed": run.failed,
        "retransmissions": run.retransmissions,
        "periods": [round(p["rate"]) for p in periods],
        "steady_periods": len(periods),
        "sipp_errors": run.errors[:5],
    })
    if not periods:
        result["reg_per_s"] = None
        result["problem"] = "no steady 1-s period (server too slow, failing, or sipp could not keep all users in flight)"
        if run.returncode not in (0, 1):
            result["sipp_tail"] = run.output[-1500:]
        return result
    w0, w1 = periods[0]["start"], periods[-1]["end"]
    rtts = [r for t, r in run.rtts if w0 * 1000 <= t <= w1 * 1000]
    cpu = sampler.between(run.started_epoch + w0, run.started_epoch + w1)
    result.update({
        "reg_per_s": round(c.median([p["rate"] for p in periods]), 1),
        "steady_failed": sum(p["failed"] for p in periods),
        "steady_retrans": sum(p["retrans"] for p in periods),
        "rtt_samples": len(rtts),
        "p50_ms": _round(c.percentile(rtts, 50)),
        "p99_ms": _round(c.percentile(rtts, 99)),
        "cpu_server_pct": cpu["server"],
        "cpu_sipp_pct": cpu["sipp"],
        "cpu_other_pct": cpu["other"],
        "cpu_irq_pct": cpu["irq"],
        "noisy": cpu["other"] is not None and cpu["other"] > args.noisy,
    })
    return result


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _rss(pid: int) -> int:
    try:
        return c.rss_kib(pid)
    except (OSError, RuntimeError):
        return 0


# -- targets and phases ------------------------------------------------------------------------

def build_phases(args: argparse.Namespace, work: Path, notes: list[str]) -> list[dict[str, Any]]:
    """[{name, scenario, injection, targets, skipped: {target: why}}]."""
    phases = []
    kam_ok, kam_why = c.kamailio_available()
    sql_ok, sql_why = c.kamailio_sqlite_available()
    if not kam_ok:
        notes.append(kam_why)
    elif not sql_ok:
        notes.append(sql_why)
    if not args.auth_only:
        injection = work / "users.csv"
        c.write_injection(injection, 0, args.aors)
        targets, skipped = [], {}
        for name in args.targets:
            if name == "sipconsole":
                targets.append(c.Target("sipconsole", "sipconsole", "durable",
                                        note="sipconsole serve, durable (SQLite WAL, group commit)"))
            elif name == "kamailio-memory":
                if kam_ok:
                    targets.append(c.Target("kamailio-memory", "kamailio", "memory",
                                            note="Kamailio usrloc db_mode 0 (memory only)"))
                else:
                    skipped[name] = kam_why
            elif name == "kamailio-sqlite":
                if sql_ok:
                    targets.append(c.Target("kamailio-sqlite", "kamailio", "sqlite",
                                            note="Kamailio usrloc db_mode 1 (SQLite write-through, WAL)"))
                else:
                    skipped[name] = sql_why
        phases.append({"name": "register", "scenario": c.SCENARIOS / "register.xml",
                       "injection": injection, "targets": targets, "skipped": skipped})
    if not args.no_auth:
        injection = work / "subscribers.csv"
        users = c.write_injection(injection, 0, args.auth_aors)
        targets, skipped = [], {}
        if "sipconsole" in args.targets:
            why = None
            if not c.sipconsole_has_auth():
                why = NA_NO_AUTH
            else:
                tmpl = work / "sipconsole-subscribers" / "location.db"
                tmpl.parent.mkdir(parents=True, exist_ok=True)
                print(f"provisioning {len(users)} sipconsole subscribers ...", flush=True)
                problem = c.sipconsole_subscriber_db(tmpl, users)
                if problem:
                    why = f"{NA_NO_AUTH}: {problem}"
                else:
                    targets.append(c.Target("sipconsole-auth", "sipconsole", "durable", auth=True,
                                            template_db=tmpl, note="sipconsole serve --auth on, durable"))
            if why:
                skipped["sipconsole-auth"] = why
        if sql_ok:
            db = work / "kamailio-subscribers.db"
            c.kamailio_subscriber_db(db, users)
            targets.append(c.Target("kamailio-auth", "kamailio", "auth", auth=True, template_db=db,
                                    note="Kamailio auth_db (SQLite subscriber, HA1) + usrloc db_mode 0"))
        else:
            skipped["kamailio-auth"] = sql_why
        phases.append({"name": "register-auth", "scenario": c.SCENARIOS / "register_auth.xml",
                       "injection": injection, "targets": targets, "skipped": skipped})
    return phases


# -- summary --------------------------------------------------------------------------------------

def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = collections.OrderedDict()
    for r in runs:
        groups.setdefault((r["phase"], r["target"], r["transport"]), []).append(r)
    out = []
    for (phase, target, transport), rs in groups.items():
        na = next((r["na"] for r in rs if r.get("na")), None)
        rates = [r["reg_per_s"] for r in rs if r.get("reg_per_s") is not None]

        def med(key: str) -> float | None:
            vals = [r[key] for r in rs if r.get(key) is not None]
            return round(c.median(vals), 1) if vals else None

        out.append({
            "phase": phase, "target": target, "transport": transport, "runs": len(rs), "na": na,
            "reg_per_s": round(c.median(rates)) if rates else None,
            "reg_per_s_exact": c.median(rates) if rates else None,
            "reg_per_s_quiet_runs": [r["reg_per_s"] for r in rs if r.get("reg_per_s") is not None and not r.get("noisy")],
            "reg_per_s_min": round(min(rates)) if rates else None,
            "reg_per_s_max": round(max(rates)) if rates else None,
            "per_run": [r.get("reg_per_s") for r in rs],
            "offered_rate": round(c.median([r["offered_rate"] for r in rs if r.get("offered_rate")]) or 0) or None,
            "failed": sum(r.get("failed", 0) for r in rs),
            "retransmissions": sum(r.get("retransmissions", 0) for r in rs),
            "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
            "p99_ms_max": max((r["p99_ms"] for r in rs if r.get("p99_ms") is not None), default=None),
            "cpu_server_pct": med("cpu_server_pct"), "cpu_sipp_pct": med("cpu_sipp_pct"),
            "cpu_other_pct": med("cpu_other_pct"),
            "commit_rows_mean": med("commit_rows_mean"), "commit_ms_mean": med("commit_ms_mean"),
            "commit_ms_p99_bound": med("commit_ms_p99_bound"),
            "noisy_runs": sum(1 for r in rs if r.get("noisy")),
            "udp_rcvbuf_drops": sum(r.get("udp_rcvbuf_drops") or 0 for r in rs),
            "problems": sorted({r["problem"] for r in rs if r.get("problem")}),
        })
    return out


def ratios(summary: list[dict[str, Any]], runs: list[dict[str, Any]],
           skipped: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """ours / Kamailio per phase and transport: ratio of medians, and the range of per-rep ratios."""
    by = {(s["phase"], s["target"], s["transport"]): s for s in summary}
    out = []
    pairs = [("register", "sipconsole", "kamailio-memory"), ("register", "sipconsole", "kamailio-sqlite"),
             ("register-auth", "sipconsole-auth", "kamailio-auth")]
    transports = sorted({s["transport"] for s in summary}, key=list(TRANSPORTS).index)
    for phase, ours, theirs in pairs:
        for transport in transports:
            a, b = by.get((phase, ours, transport)), by.get((phase, theirs, transport))
            skipped = skipped or {}
            if (a is None and ours not in skipped) or (b is None and theirs not in skipped):
                continue  # not asked for in this run
            entry: dict[str, Any] = {"phase": phase, "ours": ours, "theirs": theirs, "transport": transport}
            if a is None or a.get("na") or not a.get("reg_per_s"):
                entry["ratio"] = None
                entry["why"] = (a or {}).get("na") or skipped.get(ours) or "no figure for ours"
            elif b is None or not b.get("reg_per_s"):
                entry["ratio"] = None
                entry["why"] = skipped.get(theirs) or "no Kamailio figure (its runs failed)"
            else:
                entry["ratio"] = round(a["reg_per_s_exact"] / b["reg_per_s_exact"], 3)
                per_rep = []
                for ra in runs:
                    if (ra["phase"], ra["target"], ra["transport"]) != (phase, ours, transport):
                        continue
                    rb = next((r for r in runs if (r["phase"], r["target"], r["transport"], r["rep"])
                               == (phase, theirs, transport, ra["rep"])), None)
                    if rb and ra.get("reg_per_s") and rb.get("reg_per_s"):
                        per_rep.append(ra["reg_per_s"] / rb["reg_per_s"])
                if per_rep:
                    entry["ratio_min"], entry["ratio_max"] = round(min(per_rep), 3), round(max(per_rep), 3)
            out.append(entry)
    return out


def _fmt(v: Any, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def _ms(v: float | None) -> str:
    """sipp measures response times in whole milliseconds: 0 means below 1 ms."""
    return "-" if v is None else ("<1" if v < 1 else f"{v:.0f}")


def render(summary: list[dict[str, Any]], ratio_list: list[dict[str, Any]], skipped: dict[str, str]) -> str:
    headers = ["phase", "target", "tr", "REG/s", "min-max", "failed", "retrans", "p50 ms", "p99 ms",
               "srv CPU%", "sipp CPU%", "other CPU%", "noisy"]
    rows = []
    footnotes: list[str] = []

    def note(text: str) -> str:
        if text not in footnotes:
            footnotes.append(text)
        return f"n/a [{footnotes.index(text) + 1}]"

    for s in summary:
        if s["na"]:
            rows.append([s["phase"], s["target"], s["transport"], note(s["na"]), *[""] * 9])
            continue
        if s["reg_per_s"] is None:
            rows.append([s["phase"], s["target"], s["transport"], note("; ".join(s["problems"]) or "no figure"),
                         *[""] * 9])
            continue
        rows.append([s["phase"], s["target"], s["transport"], _fmt(s["reg_per_s"]),
                     f"{_fmt(s['reg_per_s_min'])}-{_fmt(s['reg_per_s_max'])}", str(s["failed"]),
                     str(s["retransmissions"]), _ms(s["p50_ms"]), _ms(s["p99_ms"]),
                     _fmt(s["cpu_server_pct"], ".0f"), _fmt(s["cpu_sipp_pct"], ".0f"), _fmt(s["cpu_other_pct"], ".0f"),
                     f"{s['noisy_runs']}/{s['runs']}"])
    for name, why in skipped.items():
        if not any(s["target"] == name for s in summary):
            rows.append(["", name, "", note(why), *[""] * 9])
    text = c.table(headers, rows, right={3, 5, 6, 7, 8, 9, 10, 11, 12})
    if ratio_list:
        rrows = []
        for r in ratio_list:
            if r["ratio"] is None:
                why = r["why"]
                rrows.append([f"{r['ours']} / {r['theirs']}", r["transport"],
                              note(why) if len(why) > 30 else why, ""])
            else:
                spread = (f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}" if "ratio_min" in r else "")
                rrows.append([f"{r['ours']} / {r['theirs']}", r["transport"], f"{r['ratio']:.2f}", spread])
        text += "\n\n" + c.table(["ratio (REG/s medians)", "tr", "ratio", "per-rep range"], rrows, right={2, 3})
    commits = [f"{s['phase']} {s['target']} {s['transport']}: group commits of {s['commit_rows_mean']:.0f} "
               f"requests and {s['commit_ms_mean']:.1f} ms on average, 99 % within {s['commit_ms_p99_bound']:g} ms"
               for s in summary if s.get("commit_ms_mean") is not None and s.get("commit_ms_p99_bound") is not None]
    if commits:
        text += "\n\n" + "\n".join(commits)
    if footnotes:
        text += "\n\n" + "\n".join(f"[{i}] {t}" for i, t in enumerate(footnotes, 1))
    return text


# -- main ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("sipp") is None:
        print("bench_register: sipp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    machine = c.machine()  # before pinning: it records the CPUs this script may use
    sipp_core, server_core, core_note = c.pick_cores()
    c.pin_self(sipp_core)
    c.NICE = args.nice
    if args.profile:
        return profile(args, (sipp_core, server_core))
    work = Path(tempfile.mkdtemp(prefix="sipconsole-bench-"))
    notes = [core_note, f"sipconsole hot path: {machine['sipconsole_build']}"]
    if args.nice:
        notes.append(f"server and sipp run at nice {args.nice}")
    notes.append(f"other processes used {c.background_cpu(1.0):.0f}% of a core just before the start")
    started = dt.datetime.now(dt.timezone.utc)
    runs: list[dict[str, Any]] = []
    skipped_all: dict[str, str] = {}
    try:
        phases = build_phases(args, work, notes)
        for phase in phases:
            skipped_all.update(phase["skipped"])
        closed = sum(len(ph["targets"]) for ph in phases) * len(args.transports) * args.reps
        register_targets = next((ph["targets"] for ph in phases if ph["name"] == "register"), [])
        total = closed + (0 if args.no_open else len(register_targets) * len(args.transports) * args.reps)
        counter = iter(range(1, total + 1))

        def run_and_log(phase: dict[str, Any], target: c.Target, transport: str, rep: int,
                        rate: int | None = None) -> None:
            label = f"at {rate:,}/s " if rate else ""
            print(f"[{next(counter)}/{total}] rep {rep} {phase['name']} {target.name} {transport} {label}...",
                  end=" ", flush=True)
            try:
                r = one_run(target, transport, rep, args, work, phase["injection"], phase["scenario"],
                            (sipp_core, server_core), rate=rate)
            except Exception as exc:  # a target that would not start: record, go on
                r = {"target": target.name, "transport": transport, "rep": rep, "auth": target.auth,
                     "reg_per_s": None, "problem": f"{type(exc).__name__}: {exc}"}
            r["phase"] = phase["name"] if not rate else f"open-{round(args.open_fraction * 100)}"
            runs.append(r)
            if r.get("na"):
                print(r["na"], flush=True)
            elif r.get("reg_per_s") is None:
                print(f"FAILED: {r.get('problem')}", flush=True)
            else:
                print(f"{r['reg_per_s']:,.0f} REG/s, failed {r['failed']}, p50 {r['p50_ms']} ms, "
                      f"p99 {r['p99_ms']} ms, CPU server {r['cpu_server_pct']}% sipp {r['cpu_sipp_pct']}% "
                      f"other {r['cpu_other_pct']}%", flush=True)

        for rep in range(1, args.reps + 1):
            for phase in phases:
                targets = phase["targets"]
                if not targets:
                    continue
                shift = (rep - 1) % len(targets)
                order = targets[shift:] + targets[:shift]  # rotate: no target always goes first
                for transport in args.transports:
                    for target in order:
                        run_and_log(phase, target, transport, rep)
        if not args.no_open and register_targets:
            # Latency below saturation: open loop at 80 % of each target's own closed-loop median.
            phase = next(ph for ph in phases if ph["name"] == "register")
            for rep in range(1, args.reps + 1):
                shift = (rep - 1) % len(register_targets)
                order = register_targets[shift:] + register_targets[:shift]
                for transport in args.transports:
                    for target in order:
                        rates = [r["reg_per_s"] for r in runs if r["phase"] == "register" and
                                 r["target"] == target.name and r["transport"] == transport and r.get("reg_per_s")]
                        if not rates:
                            next(counter)
                            continue
                        run_and_log(phase, target, transport, rep, rate=int(args.open_fraction * c.median(rates)))
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarise(runs)
    ratio_list = ratios(summary, runs, skipped_all)
    finished = dt.datetime.now(dt.timezone.utc)
    data = {
        "benchmark": "register",
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, c.ROOT), *(argv or sys.argv[1:])]),
        "machine": machine,
        "commit": c.source_revision(),
        "settings": {"users": args.users, "reps": args.reps, "duration_s": args.duration, "warmup_s": args.warmup,
                     "nice": args.nice, "wait_quiet_s": args.wait_quiet, "noisy_pct": args.noisy,
                     "aors": args.aors, "auth_aors": args.auth_aors, "transports": args.transports,
                     "sipp_transport_modes": {t: TRANSPORTS[t] for t in args.transports},
                     "cores": {"sipp": sipp_core, "server": server_core}},
        "method": ("REG/s per run = median of the steady 1-s sipp statistics periods (after warm-up, all users "
                   "in flight); per target = median over runs, min-max = noise. p50/p99 from sipp -trace_rtt "
                   "(1 ms resolution) over the steady window; CPU from /proc (percent of one core) over the same "
                   "window; 'other' = the rest of the machine. Auth: one registration = REGISTER/401 + "
                   "REGISTER/200, response time covers both."),
        "notes": notes,
        "skipped": skipped_all,
        "summary": summary,
        "ratios": ratio_list,
        "runs": runs,
    }
    path = _write(args.output or c.RESULTS / "register.json", data)
    print()
    print(f"REGISTER benchmark, {started:%Y-%m-%d %H:%M} UTC, {args.users} users, {args.reps} x {args.duration} s, "
          f"{args.aors:,} AORs ({args.auth_aors:,} with auth)")
    for note in notes:
        print(f"note: {note}")
    print(render(summary, ratio_list, skipped_all))
    print(f"\nwrote {os.path.relpath(path, c.ROOT)}")
    return 0


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# -- profiling ----------------------------------------------------------------------------------

def profile(args: argparse.Namespace, cores: tuple[int | None, int | None]) -> int:
    """Run sipconsole under closed-loop load (the first of --transports; with digest under
    --auth-only) and report its CPU per REGISTER; with py-spy, cProfile or perf attached, print
    the hot spots too."""
    sipp_core, server_core = cores
    transport = args.transports[0]
    work = Path(tempfile.mkdtemp(prefix="sipconsole-profile-"))
    c.RESULTS.mkdir(parents=True, exist_ok=True)
    injection = work / "users.csv"
    if args.auth_only:
        users = c.write_injection(injection, 0, args.auth_aors)
        tmpl = work / "subscribers" / "location.db"
        tmpl.parent.mkdir(parents=True, exist_ok=True)
        problem = c.sipconsole_subscriber_db(tmpl, users)
        if problem:
            print(f"cannot provision subscribers: {problem}", file=sys.stderr)
            return 2
        target = c.Target("sipconsole-auth", "sipconsole", "durable", auth=True, template_db=tmpl)
        scenario = c.SCENARIOS / "register_auth.xml"
    else:
        c.write_injection(injection, 0, args.aors)
        target = c.Target("sipconsole", "sipconsole", "durable")
        scenario = c.SCENARIOS / "register.xml"
    port, metrics_port = c.free_port(), c.free_port()
    # The group commits' mean size: how the load was batched, which moves the CPU per REGISTER.
    target.options = ("--metrics-listen", f"127.0.0.1:{metrics_port}")
    spy: subprocess.Popen[bytes] | None = None
    out_prof = work / "cprofile.out"
    wrap = ["-m", "cProfile", "-o", str(out_prof)] if args.profile == "cprofile" else None
    raw = c.RESULTS / "profile-pyspy.txt"
    perf_data = work / "perf.data"
    try:
        server = target.start(work / "server", port, server_core, wrap=wrap)
        try:
            if args.profile == "py-spy":
                if shutil.which("py-spy") is None:
                    print("py-spy is not installed: pip install py-spy", file=sys.stderr)
                    return 2
                spy = subprocess.Popen(c.pinned(["py-spy", "record", "--pid", str(server.pid), "--rate", "250",
                                                 "--duration", str(args.profile_seconds), "--format", "raw", "--threads",
                                                 "--nonblocking", "-o", str(raw)], sipp_core),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            elif args.profile == "perf":
                if shutil.which("perf") is None:
                    print("perf is not installed (Debian: linux-perf)", file=sys.stderr)
                    return 2
                # cpu-clock: the hardware counters are not there in a VM. Self time per symbol
                # needs no call graph (far smaller data, and the profiler's own cost stays low).
                spy = subprocess.Popen(c.pinned(["perf", "record", "-e", "cpu-clock", "-F", "999", "-p",
                                                 str(server.pid), "-o", str(perf_data), "--", "sleep",
                                                 str(args.profile_seconds)], sipp_core),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            cpu_before = c.cpu_seconds([server.pid])
            run = c.run_sipp(port, scenario, injection, work / "sipp", transport=TRANSPORTS[transport],
                             users=args.users, duration=args.profile_seconds + 2, core=sipp_core, rtt=False,
                             timeout=args.profile_seconds + 120,
                             extra=["-auth_uri", c.DOMAIN] if target.auth else None)  # sipp adds "sip:"
            cpu_used = c.cpu_seconds([server.pid]) - cpu_before
            commits = c.group_commits(metrics_port)
            if spy is not None:
                try:
                    _, err = spy.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(spy.pid, signal.SIGKILL)
                    _, err = spy.communicate()
                if spy.returncode != 0:
                    print(f"{args.profile} failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        finally:
            if spy is not None and spy.poll() is None:
                os.killpg(spy.pid, signal.SIGKILL)
                spy.wait()
            server.stop(timeout=30)  # SIGTERM: cProfile writes its file on a clean exit
        periods = c.steady_periods(run, args.users, 2.0)
        rate = c.median([p["rate"] for p in periods])
        calls = run.successful + run.failed
        per_call = cpu_used / calls * 1e6 if calls else float("nan")
        attached = "" if args.profile == "cpu" else f", {args.profile} attached"
        print(f"load: {rate and round(rate):,} REG/s ({transport.upper()}{', digest' if args.auth_only else ''}, "
              f"{args.users} users{attached}), {run.successful:,} answered, {run.failed} failed; "
              f"server CPU {cpu_used:.2f} s = {per_call:.1f} us per {'registration' if args.auth_only else 'REGISTER'}"
              f" ({c.sipconsole_build()} build); group commits: {commits['commit_rows_mean']} rows,"
              f" {commits['commit_ms_mean']} ms")
        _write(args.output or c.RESULTS / "profile-cpu.json",
               {"transport": transport, "auth": args.auth_only, "rate": rate, "successful": run.successful,
                "failed": run.failed, "server_cpu_s": cpu_used, "server_cpu_us_per_call": per_call, **commits,
                "build": c.sipconsole_build(), "commit": c.source_revision()})
        if args.profile == "cpu":
            return 0 if run.failed == 0 else 1
        folder = Path(args.output).parent if args.output else c.RESULTS  # beside --output, never into a checkout compared
        if args.profile == "py-spy":
            report = pyspy_report(raw)
            path = folder / "profile-pyspy-top.txt"
        elif args.profile == "perf":
            report = perf_report(perf_data)
            path = folder / "profile-perf-top.txt"
        else:
            report = cprofile_report(out_prof)
            path = folder / "profile-cprofile-top.txt"
        path.write_text(report + "\n")
        print(report)
        print(f"\nwrote {os.path.relpath(path, c.ROOT)}" + (f" and {os.path.relpath(raw, c.ROOT)}" if args.profile == "py-spy" else ""))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def perf_report(data: Path, top: int = 30) -> str:
    """Self time per symbol (with its shared object) of a ``perf record``, the largest first."""
    done = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio",
                           "--percent-limit", "0.3"], capture_output=True, text=True, timeout=600)
    rows = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("#")]
    return "\n".join(["perf (cpu-clock), self time per symbol:", *rows[:top]])


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m["file"]
    for marker in ("registrar_core/", "site-packages/", "lib/python3"):
        if marker in file:
            file = file[file.index(marker):]
            break
    return f"{m['func']} ({file})"


# Areas of the registrar for the profile summary: (label, substrings of a frame), first match wins
# per area; a sample counts towards every area whose frame is on its stack (areas can nest).
AREAS = [
    ("parse (parse_message)", ("parse_message (",)),
    ("Via stamping (stamp_source)", ("stamp_source",)),
    ("transaction table (key, lookup, purge)", ("transaction_key", "TransactionTable.")),
    ("registrar logic (Registrar.save, minus the awaited commit)", ("Registrar.save (",)),
    ("  new Contact objects (dataclass __init__)", ("__create_fn__",)),
    ("  reply building (_ok, build_response, formatdate)", ("Registrar._ok", "build_response")),
    ("  response serialisation (bytes(response))", ("_serialise",)),
    ("location apply + commit hand-off", ("LocationService.apply", "LocationService._commit")),
    ("group-commit writer (main-thread side)", ("LocationService._writer",)),
    ("aiosqlite calls (main-thread side)", ("aiosqlite/core.py",)),
    ("events publish", ("EventBus.publish", "Subscription.put")),
    ("digest auth", ("authenticator.py", "digest.py", "nonce.py")),
    ("per-IP budget / security", ("security.py",)),
    ("UDP listener: recvfrom, sendto (udp.py)", ("udp.py",)),
]


def pyspy_report(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    per_thread: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith(("thread (", "process ")):
            per_thread[frames[0]] += count
            frames = frames[1:]
        names = [_short(f) for f in frames]
        total += count
        if names:
            self_c[names[-1]] += count
        for name in set(names):
            incl[name] += count
    lines = [f"py-spy: {total} samples (threads: " + ", ".join(
        f"{name.split(' ')[0]} {name.split(' ')[1] if ' ' in name else ''} {n / total:.0%}".strip()
        for name, n in per_thread.most_common()) + ")"]
    main_stacks = [(stack, n) for stack, n in _stacks(raw) if "MainThread" in stack.split(";", 1)[0]]
    main_total = sum(n for _, n in main_stacks)
    if main_total:
        lines.append(f"\nevent-loop thread by area ({main_total} samples = 100%; areas nest, so they do not add up):")
        for label, patterns in AREAS:
            n = sum(k for stack, k in main_stacks if any(p in stack for p in patterns))
            lines.append(f"  {n / main_total:6.1%}  {label}")
        loop_self = sum(k for stack, k in main_stacks if stack.rsplit(";", 1)[-1].startswith("Runner.run"))
        lines.append(f"  {loop_self / main_total:6.1%}  event loop itself (uvloop: recvfrom, callbacks, task steps)")
    lines.append("\nself time (where the CPU is):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in self_c.most_common(top)]
    lines.append("\ninclusive time (registrar_core only):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in incl.most_common(400) if "registrar_core/" in name][:top]
    return "\n".join(lines)


def _stacks(raw: Path) -> list[tuple[str, int]]:
    out = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack, int(count)))
    return out


def cprofile_report(path: Path, top: int = 25) -> str:
    import io

    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())

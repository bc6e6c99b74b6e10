"""Shared helpers for the REGISTER and memory benchmarks.

Processes (``sipconsole serve``, Kamailio, sipp) are started in their own session, pinned to one
core each, and always stopped by the caller in a ``finally`` (see :class:`Managed`). Everything
talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
SCENARIOS = BENCH / "scenarios"
KAMAILIO_DIR = BENCH / "kamailio"
KAMAILIO_SQL = Path("/usr/share/kamailio/db_sqlite")
KAMAILIO_PG_SQL = Path("/usr/share/kamailio/postgres")  # Debian kamailio-postgres-modules
DOMAIN = "bench.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- machine -----------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, kernel, versions."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for key in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor", "L2 cache", "L3 cache"):
            m = re.search(rf"^{re.escape(key)}:\s*(.+)$", out, re.M)
            if m:
                info[key.lower().replace(" ", "_").replace("(", "").replace(")", "")] = m.group(1).strip()
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_mib"] = int(line.split()[1]) // 1024
    info["sipconsole_build"] = sipconsole_build()
    try:
        import uvloop  # noqa: F401

        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = None
    for tool, args in (("sipp", ["-v"]), ("kamailio", ["-v"])):
        path = shutil.which(tool)
        if path:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run([path, *args], capture_output=True, text=True, timeout=10)
                m = re.search(r"(v?\d+\.\d+\.\d+\S*)", out.stdout + out.stderr)
                info[tool] = m.group(1) if m else "?"
        else:
            info[tool] = None
    return info


def sipconsole_build() -> str:
    """How this checkout's hot path runs ("mypyc" when `pip install -e .` compiled it in place,
    "python" otherwise), "+stale" when a compiled module is older than its source."""
    done = subprocess.run([sys.executable, "-c", "import registrar_core; print(registrar_core.build())"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    build = done.stdout.strip() or "unknown"
    shared = max((p.stat().st_mtime for p in ROOT.glob("*__mypyc*.so")), default=0.0)  # the code itself
    for compiled in (ROOT / "registrar_core").rglob("*.so"):
        source = compiled.with_name(compiled.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > max(shared, compiled.stat().st_mtime):
            print(f"warning: {source.relative_to(ROOT)} is newer than its compiled module: "
                  "the figures are for the old code (`pip install -e .` rebuilds)", file=sys.stderr)
            return build + "+stale"
    return build


def source_revision() -> str | None:
    """The commit measured, with "+dirty" when registrar_core/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "registrar_core"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def pick_cores() -> tuple[int | None, int | None, str]:
    """(core for the load generator, core for the server under test, note)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, f"only {len(cpus)} usable CPU: load generator and server share it (figures are not comparable)"
    return cpus[0], cpus[1], f"sipp and this script on CPU {cpus[0]}, server under test on CPU {cpus[1]}"


def pin_self(core: int | None) -> None:
    if core is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {core})


NICE = 0  # scheduling priority for the processes under measurement (set by the scripts' --nice)


def pinned(cmd: list[str], core: int | None) -> list[str]:
    """``cmd`` pinned to ``core`` with taskset (and at NICE priority); exec chains keep the pid."""
    if core is not None and shutil.which("taskset") is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    if NICE and shutil.which("nice") is not None:
        cmd = ["nice", "-n", str(NICE), *cmd]
    return cmd


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (bounded retries)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port found")


# -- /proc -------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()  # fields from 3 (state) on


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Kamailio forks a dozen processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f:
                children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f:
            total += int(f[11]) + int(f[12])  # utime, stime
    return total / CLK_TCK


def system_cpu() -> tuple[float, float, float]:
    """(busy in processes, busy in interrupts, total) CPU seconds of the whole machine since boot.

    /proc/stat: user nice system idle iowait irq softirq steal.
    """
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    v = [int(x) for x in parts[:8]]
    return (v[0] + v[1] + v[2]) / CLK_TCK, (v[5] + v[6]) / CLK_TCK, sum(v) / CLK_TCK


def core_cpu(core: int) -> tuple[float, float]:
    """(busy, steal) CPU seconds of one CPU since boot. Busy counts user, nice, system, irq,
    softirq and steal (time the hypervisor gave this virtual CPU to someone else): a process's
    own system time includes the interrupts served while it ran (on loopback, its packets), so
    busy less that process's time is what the others took."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:9]]
            return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK, v[7] / CLK_TCK
    return 0.0, 0.0


def thread_switches(pid: int) -> dict[int, tuple[str, int, int]]:
    """Per thread of ``pid``: (name, voluntary, involuntary) context switches since it started.
    A voluntary one is a wait (a futex: the GIL, a queue; epoll; I/O), an involuntary one the
    scheduler taking the core away; between two threads of one pinned process, a hand-off."""
    out: dict[int, tuple[str, int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
            out[int(task.name)] = (fields["Name"].strip(), int(fields["voluntary_ctxt_switches"]),
                                   int(fields["nonvoluntary_ctxt_switches"]))
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def pss_kib(pids: list[int]) -> int:
    """Proportional set size of a process tree (shared memory counted once)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


def udp_rcvbuf_errors() -> int:
    """Datagrams dropped machine-wide because a socket's receive buffer was full."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    if len(lines) < 2:
        return 0
    return int(dict(zip(lines[0][1:], lines[1][1:])).get("RcvbufErrors", 0))


def background_cpu(seconds: float = 1.0) -> float:
    """Percent of one core the rest of the machine used over ``seconds`` (this script is idle)."""
    b0, _, _ = system_cpu()
    time.sleep(seconds)
    b1, _, _ = system_cpu()
    return round((b1 - b0) / seconds * 100, 1)


def wait_quiet(limit_pct: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until other processes use less than ``limit_pct`` of a core;
    returns the last measurement."""
    deadline = time.monotonic() + max_wait
    load = background_cpu()
    while load > limit_pct and time.monotonic() < deadline:
        load = background_cpu()
    return load


class CpuSampler:
    """Samples CPU seconds of the server tree, sipp and the whole machine every ``interval``
    (and of the server's ``core`` and sipp's ``client_core``, when given: what else ran there)."""

    def __init__(self, interval: float = 0.2, core: int | None = None, client_core: int | None = None) -> None:
        self.interval = interval
        self.core = core
        self.client_core = client_core
        self.samples: list[tuple[float, ...]] = []
        self.server_pid: int | None = None
        self.sipp_pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tree: list[int] = []
        self._tree_at = 0.0

    def start(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        now = time.time()
        if self.server_pid is None:
            return
        if now - self._tree_at > 1.0:  # Kamailio's tree is stable; rescan once a second
            self._tree, self._tree_at = process_tree(self.server_pid), now
        server = cpu_seconds(self._tree)
        sipp = cpu_seconds([self.sipp_pid]) if self.sipp_pid else 0.0
        busy, irq, total = system_cpu()
        core_busy, core_steal = core_cpu(self.core) if self.core is not None else (0.0, 0.0)
        client_busy, client_steal = core_cpu(self.client_core) if self.client_core is not None else (0.0, 0.0)
        self.samples.append((now, server, sipp, busy, irq, total, core_busy, core_steal, client_busy, client_steal))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def between(self, t0: float, t1: float) -> dict[str, float | None]:
        """CPU use in [t0, t1] as percent of one core: server, sipp, other processes, interrupts;
        with a ``core``, what else than the server took that core (``core_others``, steal included)
        and the steal alone; with a ``client_core``, what else than sipp took that one (this script
        included: a few percent) and its steal."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return {"server": None, "sipp": None, "other": None, "irq": None}
        a, b = inside[0], inside[-1]
        wall = b[0] - a[0]
        server = (b[1] - a[1]) / wall * 100
        sipp = (b[2] - a[2]) / wall * 100
        busy = (b[3] - a[3]) / wall * 100
        irq = (b[4] - a[4]) / wall * 100
        out: dict[str, float | None] = {"server": round(server, 1), "sipp": round(sipp, 1),
                                        "other": round(max(0.0, busy - server - sipp), 1), "irq": round(irq, 1)}
        if self.core is not None:
            out["core_others"] = round(max(0.0, (b[6] - a[6]) / wall * 100 - server), 1)
            out["core_steal"] = round((b[7] - a[7]) / wall * 100, 1)
        if self.client_core is not None:
            out["client_core_others"] = round(max(0.0, (b[8] - a[8]) / wall * 100 - sipp), 1)
            out["client_core_steal"] = round((b[9] - a[9]) / wall * 100, 1)
        return out


# -- processes ---------------------------------------------------------------------------

class Managed:
    """A child process in its own session; ``stop()`` ends it and everything it forked."""

    def __init__(self, cmd: list[str], log: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.cmd = cmd
        self.log = log
        self._logfile = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._logfile, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd, env=env, start_new_session=True)
        self.started = time.monotonic()
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """``sig`` to the process, then SIGKILL to its whole process group if it lingers."""
        try:
            if self.alive():
                self.send(sig)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)  # stragglers it forked (same group: we made it)
            if self.alive():
                self.proc.wait(5)
        finally:
            self._logfile.close()
        return self.proc.returncode

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def sip_probe(port: int, method: str = "OPTIONS", user: str | None = None, timeout: float = 0.5,
              proto: str = "udp") -> int | None:
    """Send one request to 127.0.0.1:port; the status code of the answer, or None."""
    return sip_status(sip_request(port, method, user, timeout, proto))


def sip_status(answer: bytes | None) -> int | None:
    m = re.match(rb"SIP/2\.0 (\d{3}) ", answer or b"")
    return int(m.group(1)) if m else None


def sip_request(port: int, method: str = "OPTIONS", user: str | None = None, timeout: float = 0.5,
                proto: str = "udp") -> bytes | None:
    """Send one request to 127.0.0.1:port; the raw answer, or None."""
    sock_type = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, sock_type) as s:
        s.settimeout(timeout)
        try:
            if proto == "udp":
                s.bind(("127.0.0.1", 0))
            else:
                s.connect(("127.0.0.1", port))
            lport = s.getsockname()[1]
            branch = "z9hG4bK" + uuid.uuid4().hex
            target = f"sip:{user}@{DOMAIN}" if user else f"sip:{DOMAIN}"
            ruri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:127.0.0.1:{port}"
            contact = f"Contact: <sip:{user or 'probe'}@127.0.0.1:{lport}>\r\nExpires: 60\r\n" if method == "REGISTER" else ""
            msg = (f"{method} {ruri} SIP/2.0\r\n"
                   f"Via: SIP/2.0/{proto.upper()} 127.0.0.1:{lport};branch={branch};rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: <{target}>;tag={uuid.uuid4().hex[:8]}\r\nTo: <{target}>\r\n"
                   f"Call-ID: {uuid.uuid4().hex}@bench\r\nCSeq: 1 {method}\r\n{contact}"
                   f"User-Agent: sipconsole-bench-probe\r\nContent-Length: 0\r\n\r\n").encode()
            if proto == "udp":
                s.sendto(msg, ("127.0.0.1", port))
                data = s.recv(65535)
            else:
                s.sendall(msg)
                data = s.recv(65535)
        except OSError:
            return None
    return data


def challenge_algorithms(answer: bytes | None) -> list[str]:
    """Digest algorithms of a 401's WWW-Authenticate headers, in the order offered."""
    out = []
    for line in (answer or b"").decode(errors="replace").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "www-authenticate":
            m = re.search(r"algorithm=\"?([A-Za-z0-9-]+)", value)
            out.append(m.group(1).upper() if m else "MD5")
    return out


def sipp_version() -> tuple[int, ...]:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["sipp", "-v"], capture_output=True, text=True, timeout=10)
        m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
        if m:
            return tuple(int(g) for g in m.groups())
    return (0,)


def sipp_digest_problem(algorithms: list[str]) -> str | None:
    """Why this sipp cannot answer that challenge, or None. sipp before 3.7 answers only the first
    WWW-Authenticate and only with MD5 ("createAuthHeader: authentication must use MD5")."""
    if not algorithms:
        return "no WWW-Authenticate in the 401"
    if algorithms[0] != "MD5" and sipp_version() < (3, 7, 0):
        version = ".".join(map(str, sipp_version()))
        return (f"sipp {version} answers only the first challenge and only MD5; the server offers "
                f"{', '.join(algorithms)} (first {algorithms[0]})")
    return None


def wait_sip(port: int, proc: Managed, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.cmd[0]} exited {proc.proc.returncode}:\n{proc.tail()}")
        if sip_probe(port, timeout=0.3) is not None:
            return
        time.sleep(0.05)
    raise RuntimeError(f"no SIP answer on port {port} within {timeout}s:\n{proc.tail()}")


# -- control socket (JSON-RPC 2.0, one object per line) -----------------------------------

def control_call(path: Path | str, method: str, params: dict[str, Any] | None = None,
                 timeout: float = 10.0) -> Any:
    """One JSON-RPC call on the registrar's control socket; raises OSError if it does not answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                raise OSError("control socket closed")
            buf += chunk
    reply = json.loads(buf)
    if "error" in reply:
        raise RuntimeError(f"control {method}: {reply['error']}")
    return reply["result"]


# -- targets -----------------------------------------------------------------------------

_SERVE_HELP: str | None = None


def serve_help() -> str:
    global _SERVE_HELP
    if _SERVE_HELP is None:
        done = subprocess.run([sys.executable, "-m", "sipconsole", "serve", "--help"],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        _SERVE_HELP = done.stdout
    return _SERVE_HELP


def sipconsole_has_auth() -> bool:
    return "--auth" in serve_help()


def group_commits(metrics_port: int) -> dict[str, float | None]:
    """Mean requests per group commit, mean milliseconds until it was durable and the bound of
    the histogram bucket holding its 99th percentile, from the registrar's Prometheus endpoint:
    the time a REGISTER waits for its storage."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    values = dict(line.split(" ", 1) for line in text.splitlines()
                  if line.startswith("sipconsole_group_commit_") and "_bucket" not in line)
    count = float(values.get("sipconsole_group_commit_size_count", 0))
    if not count:
        return {"commit_rows_mean": None, "commit_ms_mean": None, "commit_ms_p99_bound": None}
    p99 = None
    for line in text.splitlines():  # cumulative buckets, smallest bound first
        if line.startswith('sipconsole_group_commit_seconds_bucket{le="'):
            bound, cumulative = line[len('sipconsole_group_commit_seconds_bucket{le="'):].split('"} ')
            if float(cumulative) >= 0.99 * count:
                p99 = float(bound) * 1000
                break
    return {"commit_rows_mean": round(float(values["sipconsole_group_commit_size_sum"]) / count, 1),
            "commit_ms_mean": round(float(values["sipconsole_group_commit_seconds_sum"]) / count * 1000, 2),
            "commit_ms_p99_bound": p99}


def sipconsole_lab_options(auth: bool) -> list[str]:
    """Options that keep sipconsole's abuse defences out of a load test from one address.

    Only options that this checkout's ``serve --help`` lists are passed, so the bench runs on
    older and newer cores alike.
    """
    text = serve_help()
    extra: list[str] = []
    if "--auth" in text:
        extra += ["--auth", "on" if auth else "off"]
    if auth and "--auth-algorithms" in text:
        extra += ["--auth-algorithms", "MD5"]  # like for like with registrar-auth.cfg (and sipp 3.6 speaks MD5 only)
    if "--ip-budget" in text:
        extra += ["--ip-budget", "0"]  # one source IP sends everything: no per-IP ban
    if "--auth-fail-budget" in text and auth:
        extra += ["--auth-fail-budget", "0"]
    if "--drop-scanners" in text:
        extra += ["--no-drop-scanners"]
    if "--max-tcp-per-ip" in text:
        extra += ["--max-tcp-per-ip", "0"]
    if "--qualify-interval" in text:
        extra += ["--qualify-interval", "0"]  # no OPTIONS towards sipp (Kamailio's config sends none)
    return extra


@dataclass
class Target:
    """A registrar to measure: ``start`` returns the managed process (server pinned to ``core``)."""

    name: str
    kind: str  # "sipconsole" or "kamailio"
    mode: str  # sipconsole: "durable"; kamailio: "memory", "sqlite", "auth", "postgres"
    auth: bool = False
    note: str = ""
    template_db: Path | None = None  # prepared database (subscribers) copied for each run
    pkg_mb: int = 32  # Kamailio private memory per process (db_sqlite loads a whole result set into it)
    dsn: str | None = None  # a PostgreSQL database (tests/postgres.py form) instead of a file in workdir
    children: int | None = None  # Kamailio UDP workers when its cfg takes CHILDREN (registrar-postgres.cfg)
    options: tuple[str, ...] = ()  # more `sipconsole serve` options

    def start(self, workdir: Path, port: int, core: int | None, extra_env: dict[str, str] | None = None,
              wrap: list[str] | None = None, keep_db: bool = False, wait: bool = True) -> Managed:
        """Start the server; with ``wait`` return once it answers SIP. ``keep_db``: restart on the
        database a previous start left (sipconsole always keeps its database in ``workdir``)."""
        workdir.mkdir(parents=True, exist_ok=True)
        if self.kind == "sipconsole":
            db: Path | str = self.dsn or workdir / "location.db"
            if self.template_db is not None and not keep_db:
                for suffix in ("", "-wal", "-shm"):
                    src = Path(str(self.template_db) + suffix)
                    if src.exists():
                        shutil.copy(src, str(db) + suffix)
                key = self.template_db.parent / "auth.key"
                if key.exists():
                    shutil.copy(key, workdir / "auth.key")
            cmd = [sys.executable, *(wrap or []), "-m", "sipconsole", "serve",
                   "--listen", f"udp:127.0.0.1:{port}", "--listen", f"tcp:127.0.0.1:{port}",
                   "--db", str(db), "--control", str(workdir / "control.sock"),
                   *sipconsole_lab_options(self.auth), *self.options]
            env = {**os.environ, **(extra_env or {})}
            env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
            # Nothing may default to the real home or runtime directory.
            env["XDG_DATA_HOME"] = str(workdir / "xdg-data")
            env["XDG_RUNTIME_DIR"] = str(workdir / "xdg-run")
            proc = Managed(pinned(cmd, core), workdir / "server.log", cwd=ROOT, env=env)
        else:
            cfg = KAMAILIO_DIR / f"registrar-{self.mode}.cfg"
            cmd = ["kamailio", "-f", str(cfg), "-DD", "-E", "-m", "512", "-M", str(self.pkg_mb),
                   "-l", f"udp:127.0.0.1:{port}", "-l", f"tcp:127.0.0.1:{port}",
                   "-Y", str(workdir), "-w", str(workdir)]
            if self.mode in ("sqlite", "auth"):
                db = workdir / "kamailio.db"
                if keep_db:
                    pass
                elif self.mode == "sqlite":
                    kamailio_location_db(db)
                else:
                    assert self.template_db is not None
                    shutil.copy(self.template_db, db)
                cmd[3:3] = ["-A", f'DBURL="sqlite:///{db}"']  # sqlite:/// + /abs/path
            env = None
            if self.mode == "postgres":
                assert self.dsn is not None
                url, host = kamailio_postgres_url(self.dsn)
                cmd[3:3] = ["-A", f'DBURL="{url}"']
                env = {**os.environ, "PGHOST": host}
            if self.children is not None:
                cmd[3:3] = ["-A", f"CHILDREN={self.children}"]
            proc = Managed(pinned(cmd, core), workdir / "server.log", cwd=workdir, env=env)
        if not wait:
            return proc
        try:
            wait_sip(port, proc)
        except BaseException:
            proc.stop()
            raise
        return proc


def kamailio_available() -> tuple[bool, str]:
    if shutil.which("kamailio") is None:
        return False, "kamailio is not installed (apt-get install kamailio kamailio-sqlite-modules): Kamailio runs skipped"
    return True, ""


def kamailio_sqlite_available() -> tuple[bool, str]:
    ok, why = kamailio_available()
    if not ok:
        return ok, why
    if not (KAMAILIO_SQL / "usrloc-create.sql").exists():
        return False, "kamailio-sqlite-modules is not installed: Kamailio SQLite runs skipped"
    return True, ""


def kamailio_postgres_available() -> tuple[bool, str]:
    ok, why = kamailio_available()
    if not ok:
        return ok, why
    if not (KAMAILIO_PG_SQL / "usrloc-create.sql").exists():
        return False, ("kamailio-postgres-modules is not installed (apt-get install kamailio-postgres-modules): "
                       "Kamailio PostgreSQL runs skipped")
    return True, ""


def kamailio_postgres_url(dsn: str) -> tuple[str, str]:
    """(db_postgres URL, PGHOST) for a ``postgresql://user@/name?host=/socket/dir`` DSN.

    db_postgres's URL has no room for a socket directory; given no host, libpq takes PGHOST."""
    parts = urllib.parse.urlsplit(dsn)
    host = urllib.parse.parse_qs(parts.query).get("host", [""])[0]
    return f"postgres://{parts.username or 'postgres'}@{parts.path}", host


def kamailio_postgres_schema() -> str:
    """Kamailio's own location table (and its version table) for PostgreSQL, as SQL."""
    return "".join((KAMAILIO_PG_SQL / f"{module}-create.sql").read_text() for module in ("standard", "usrloc"))


def _kamailio_schema(db: Path, *modules: str) -> sqlite3.Connection:
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")  # persistent: Kamailio opens the file in WAL mode
    for module in ("standard", *modules):
        conn.executescript((KAMAILIO_SQL / f"{module}-create.sql").read_text())
    return conn


def kamailio_location_db(db: Path) -> None:
    """Kamailio's own location schema (db_sqlite), WAL journal."""
    conn = _kamailio_schema(db, "usrloc")
    conn.commit()
    conn.close()


def ha1(user: str, realm: str, password: str) -> str:
    return hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()


def kamailio_subscriber_db(db: Path, users: list[tuple[str, str, str]]) -> None:
    """Kamailio's subscriber table with the HA1 of each (user, domain, password)."""
    conn = _kamailio_schema(db, "auth_db")
    conn.executemany("INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES (?,?,?,?,?)",
                     [(u, d, "", ha1(u, d, p), ha1(f"{u}@{d}", d, p)) for u, d, p in users])
    conn.commit()
    conn.close()


_PROVISION = """
import asyncio, sys
from registrar_core.users import _offline  # the code path of `sipconsole user add` without a registrar
db = sys.argv[1]
async def main():
    for line in sys.stdin:
        user, password = line.rstrip("\\n").split(" ", 1)
        await _offline("add", user, password, db)
asyncio.run(main())
"""


def sipconsole_user_command() -> list[str] | None:
    """``sipconsole user add`` if this checkout has it (issue 6), else None."""
    done = subprocess.run([sys.executable, "-m", "sipconsole", "user", "add", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    if done.returncode != 0:
        return None
    return [sys.executable, "-m", "sipconsole", "user", "add"]


def sipconsole_subscriber_db(db: Path, users: list[tuple[str, str, str]], timeout: float = 900) -> str | None:
    """Provision subscribers into ``db`` with no registrar running; None, or why it failed.

    Fast path: one process running what ``sipconsole user add`` runs offline, for every user.
    Fallback: ``sipconsole user --db DB --control <nowhere> add USER@DOMAIN --password-stdin``
    once per user (about 0.25 s each). ``--control`` points at a socket that does not exist, so
    that a registrar running on this machine is never touched; HOME-derived defaults are
    redirected into the bench's work directory as well.
    """
    env = {**os.environ, "XDG_DATA_HOME": str(db.parent / "xdg-data"),
           "XDG_RUNTIME_DIR": str(db.parent / "xdg-run"), "PYTHONPATH": str(ROOT)}
    lines = "".join(f"{u}@{d} {p}\n" for u, d, p in users)
    done = subprocess.run([sys.executable, "-c", _PROVISION, str(db)], input=lines, capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout)
    if done.returncode == 0:
        return None
    cmd = sipconsole_user_command()
    if cmd is None:
        return "this checkout has no `sipconsole user add`"
    deadline = time.monotonic() + timeout
    nowhere = db.parent / "no-registrar.sock"
    for user, domain, password in users:
        args = [sys.executable, "-m", "sipconsole", "user", "--db", str(db), "--control", str(nowhere),
                "add", f"{user}@{domain}", "--password-stdin"]
        done = subprocess.run(args, input=password + "\n", capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=60)
        if done.returncode != 0:
            return f"`sipconsole user add` failed: {(done.stderr or done.stdout).strip()[:200]}"
        if time.monotonic() > deadline:
            return "provisioning subscribers took too long"
    return None


# -- injection files and sipp ---------------------------------------------------------------

def user_name(i: int) -> str:
    return f"b{i:07d}"


def password(i: int) -> str:
    return f"pw-{i:07d}-bench"


def write_injection(path: Path, start: int, count: int) -> list[tuple[str, str, str]]:
    """sipp injection file: user;domain;[authentication ...] per line; returns (user, domain, password).

    sipp 3.6 does not expand fields inside the [authentication] keyword, but expands keywords
    that come out of a field, so field2 carries the whole keyword (the documented way).
    """
    rows = [(user_name(i), DOMAIN, password(i)) for i in range(start, start + count)]
    path.write_text("SEQUENTIAL\n" + "".join(
        f"{u};{d};[authentication username={u} password={p}]\n" for u, d, p in rows))
    return rows


@dataclass
class SippRun:
    returncode: int
    wall: float
    rows: list[dict[str, str]]
    rtts: list[tuple[float, float]]  # (ms since sipp start, response time ms)
    started_epoch: float
    output: str
    pid: int = 0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ended_epoch(self) -> float:
        """When sipp wrote its last statistics (it does as it exits): the end of the run."""
        return _epoch(self.rows[-1]["CurrentTime"]) if self.rows else self.started_epoch + self.wall


def _epoch(cell: str) -> float:
    return float(cell.split("\t")[-1])


def run_sipp(port: int, scenario: Path, injection: Path, workdir: Path, *, transport: str = "u1",
             users: int = 500, duration: float | None = None, calls: int | None = None, core: int | None = None,
             sampler: CpuSampler | None = None, rtt: bool = True, timeout: float = 600,
             rate: int | None = None, extra: list[str] | None = None, local_port: int | None = None) -> SippRun:
    """sipp as a closed-loop UAC (``users`` calls always in flight) against 127.0.0.1:port, or,
    with ``rate``, open loop: ``rate`` new calls per second (at most ``users`` x 4 in flight).

    The Contact of register.xml carries sipp's local port: runs from a fresh port (the default)
    each add a binding per AOR; runs from one ``local_port`` refresh the same bindings.

    Stops after ``duration`` seconds (then lets calls in flight finish) or after ``calls`` calls.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    stat = workdir / "stat.csv"
    for old in (*workdir.glob("*_rtt.csv"), stat):
        old.unlink(missing_ok=True)
    cmd = ["sipp", f"127.0.0.1:{port}", "-sf", str(scenario), "-inf", str(injection),
           *(["-r", str(rate), "-rp", "1000", "-l", str(users * 4)] if rate else ["-users", str(users)]),
           "-t", transport, "-i", "127.0.0.1", "-p", str(local_port or free_port()),
           "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1", "-buff_size", str(4 << 20),
           "-max_recv_loops", "1000", "-trace_err", "-error_file", str(workdir / "errors.log")]
    if rtt:
        cmd += ["-trace_rtt", "-rtt_freq", "1000"]
    cmd += extra or []
    if duration is not None:
        cmd += ["-timeout", f"{int(duration)}s"]
    if calls is not None:
        cmd += ["-m", str(calls)]
    env = {**os.environ, "TERM": "dumb"}
    out_path = workdir / "sipp.out"
    t0 = time.monotonic()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(pinned(cmd, core), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, env=env, start_new_session=True)
        try:
            if sampler is not None:
                sampler.sipp_pid = proc.pid  # nice and taskset exec sipp: same pid
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.monotonic() - t0
    text = out_path.read_text(errors="replace")
    rows = _read_stat(stat)
    rtts: list[tuple[float, float]] = []
    for f in workdir.glob("*_rtt.csv"):
        for line in f.read_text().splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 2:
                with contextlib.suppress(ValueError):
                    rtts.append((float(parts[0]), float(parts[1])))
    started = _epoch(rows[0]["StartTime"]) if rows else time.time() - wall
    run = SippRun(proc.returncode, wall, rows, rtts, started, text, proc.pid)
    if rows:
        last = rows[-1]
        run.successful = int(last.get("SuccessfulCall(C)", 0))
        run.failed = int(last.get("FailedCall(C)", 0))
        run.retransmissions = int(last.get("Retransmissions(C)", 0))
    err = workdir / "errors.log"
    if err.exists():
        run.errors = [line for line in err.read_text(errors="replace").splitlines() if line.strip()][:20]
    return run


def _read_stat(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(lines) < 2:
        return []
    header = lines[0].rstrip(";").split(";")
    return [dict(zip(header, line.rstrip(";").split(";"))) for line in lines[1:]]


def steady_periods(run: SippRun, users: int | None, warmup: float) -> list[dict[str, float]]:
    """The 1-s statistics periods after ``warmup`` during which all ``users`` were in flight
    (closed loop), or, with ``users`` None (open loop), during which sipp was still starting calls."""
    periods = []
    rows = run.rows
    for prev, row in zip(rows, rows[1:]):
        start = _epoch(prev["CurrentTime"]) - run.started_epoch
        end = _epoch(row["CurrentTime"]) - run.started_epoch
        dt = end - start
        if start < warmup or not 0.5 <= dt <= 1.5:
            continue
        if users is not None and (int(prev["CurrentCall"]) != users or int(row["CurrentCall"]) != users):
            continue
        if users is None and int(row.get("OutgoingCall(P)", 0)) == 0:
            continue
        ok = int(row["SuccessfulCall(P)"])
        periods.append({"start": round(start, 3), "end": round(end, 3), "ok": ok,
                        "failed": int(row["FailedCall(P)"]), "retrans": int(row["Retransmissions(P)"]),
                        "rate": ok / dt})
    return periods


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))  # nearest rank
    return values[k]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right or set()
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])

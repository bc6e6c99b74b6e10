"""Real processes for tests: `sipconsole serve`, sipp, baresip and linphonec; a large location table written
straight into a database file before the registrar starts."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from registrar_core.location import Batch, Contact, store_for

SCENARIOS = Path(__file__).parent / "scenarios"
BARESIP_MODULES = Path("/usr/lib/baresip/modules")


async def until(condition, timeout: float = 20.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def run_baresip(directory: Path, account: str, extra_config: str = "", modules: tuple[str, ...] = ()):
    """baresip headless with its own config directory: one account, no audio device
    (``extra_config``: more config lines, e.g. ``sip_cafile`` for TLS; ``modules``: loaded before
    the account, as an outbound account needs uuid.so's instance id; with stdio.so it reads
    commands such as ``/uastat`` (debug_cmd.so) on stdin)."""
    directory.mkdir()
    loaded = "".join(f"module {m}\n" for m in (*modules, "g711.so", "account.so"))
    (directory / "config").write_text(
        f"module_path {BARESIP_MODULES}\nsip_listen 127.0.0.1:0\n{loaded}{extra_config}")
    (directory / "accounts").write_text(account + "\n")
    return await asyncio.create_subprocess_exec(
        "baresip", "-f", str(directory), "-t", "60",  # -t: it quits by itself, whatever happens here
        stdin=asyncio.subprocess.PIPE if "stdio.so" in modules else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def run_linphonec(directory: Path, registrar: tuple[str, int], transport: str, password: str,
                        root_ca: Path | None = None):
    """linphonec 5.1 (Debian linphone-cli) headless: one account, a config file of its own, a
    port of its own choosing (-1; 0 switches the other transports off). For tls, ``root_ca`` is
    the CA it verifies the registrar's certificate against, name included: the proxy is named
    ``localhost`` because its mbedTLS matches no IP address SAN (the test certificate has both)."""
    (directory / ".local/share/linphone").mkdir(parents=True)  # its call-history database
    host, port = registrar
    ports = {name: -1 if transport == name else 0 for name in ("udp", "tcp", "tls")}
    tls = f"verify_server_certs=1\nverify_server_cn=1\nroot_ca={root_ca}\n" if root_ca else ""
    (directory / "linphonerc").write_text(
        f"[sip]\nsip_port={ports['udp']}\nsip_tcp_port={ports['tcp']}\nsip_tls_port={ports['tls']}\n"
        f"default_proxy=0\n{tls}"
        f"[proxy_0]\nreg_proxy=<sip:{'localhost' if root_ca else host}:{port};transport={transport}>\n"
        f"reg_identity=sip:100@{host}\n"
        f"reg_expires=600\nreg_sendregister=1\n"
        f"[auth_info_0]\nusername=100\npasswd={password}\nrealm={host}\ndomain={host}\n")
    return await asyncio.create_subprocess_exec(
        "timeout", "60", "linphonec", "-c", str(directory / "linphonerc"), "-d", "0",
        env={"HOME": str(directory), "PATH": "/usr/bin:/bin"},  # timeout: it quits whatever happens here
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def stop_linphonec(proc) -> str:
    """Ask linphonec to quit (it unregisters), terminate it if it does not; what it printed."""
    with contextlib.suppress(ProcessLookupError, BrokenPipeError, ConnectionResetError):
        proc.stdin.write(b"quit\n")
    try:
        out = await asyncio.wait_for(proc.communicate(), 15)
    except TimeoutError:
        proc.kill()
        out = await proc.communicate()
    return out[0].decode(errors="replace")


class ServeProcess:
    """`sipconsole serve` on 127.0.0.1:<port> (UDP and TCP; another loopback ``host`` for a
    node of several) with its own db and control socket."""

    def __init__(self, directory: Path, port: int, name: str = "", host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.port = port
        self.host = host
        self.db = directory / f"location{name}.db"
        self.control = directory / f"control{name}.sock"
        self.log = directory / f"serve{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.before = 0  # how many words of the options (ours, then the test's) go before `serve`

    def command(self, *extra: str) -> list[str]:
        options = [
            "--listen", f"udp:{self.host}:{self.port}", "--listen", f"tcp:{self.host}:{self.port}",
            "--db", str(self.db), "--control", str(self.control),
            # Lab settings unless a test asks otherwise (a later option wins).
            "--auth", "off", "--ip-budget", "0", *extra,
        ]
        return [sys.executable, "-m", "sipconsole", *options[:self.before], "serve", *options[self.before:]]

    def start(self, *extra: str, timeout: float = 10.0) -> ServeProcess:
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(self.command(*extra), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sipconsole serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            if self.control.exists() and self._answers():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"sipconsole serve did not come up:\n{self.log.read_text()}")

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(self.control))
            return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        """SIGTERM and wait: the clean shutdown path."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def user(self, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `sipconsole user ...` for this server (through its control socket when it runs)."""
        cmd = [sys.executable, "-m", "sipconsole", "user", "--db", str(self.db),
               "--control", str(self.control), *args]
        if password is not None:
            cmd.append("--password-stdin")
        return subprocess.run(cmd, input=(password or "") + "\n", capture_output=True, text=True, timeout=30)

    def peak_rss_kib(self) -> int:
        """VmHWM of the registrar process: the most memory it has held since it started
        (or since :meth:`reset_peak_rss`)."""
        assert self.proc is not None
        return peak_rss_kib(self.proc.pid)

    def reset_peak_rss(self) -> None:
        """Start VmHWM again from the current RSS (Linux >= 4.0: writing 5 to clear_refs)."""
        assert self.proc is not None
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def ctl(self, *args: str, json_output: bool = True) -> tuple[int, object]:
        """Run `sipconsole ctl` against this server; returns (exit code, parsed JSON or text)."""
        cmd = [sys.executable, "-m", "sipconsole", "ctl", "--control", str(self.control)]
        if json_output:
            cmd.append("--json")
        done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30)
        out: object = done.stdout
        if json_output and done.returncode == 0:
            out = json.loads(done.stdout)
        elif done.returncode != 0:
            out = done.stderr
        return done.returncode, out


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a running process, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]


def run_cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``sipconsole ARGS`` as a user types it (from the repository root, as ServeProcess)."""
    return subprocess.run([sys.executable, "-m", "sipconsole", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, env=env)


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    output: str


def write_injection(path: Path, rows: list[tuple[str, ...]], mode: str = "SEQUENTIAL") -> Path:
    path.write_text(mode + "\n" + "".join(";".join(r) + "\n" for r in rows))
    return path


def run_sipp(
    scenario: str,
    port: int,
    *args: str,
    calls: int = 1,
    rate: int = 100,
    transport: str = "u1",
    timeout: int = 60,
    cwd: Path | None = None,
    host: str = "127.0.0.1",
) -> SippResult:
    """Run sipp as the UAC against host:port (from that address) until ``calls`` calls have ended."""
    cmd = [
        "sipp", f"{host}:{port}", "-sf", str(SCENARIOS / scenario), "-m", str(calls),
        "-r", str(rate), "-t", transport, "-i", host, "-nostdin", "-timeout", f"{timeout}s",
        "-timeout_error", "-max_recv_loops", "1000", *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, cwd=cwd,
                          env={**os.environ, "TERM": "dumb"})
    text = done.stdout + done.stderr
    return SippResult(done.returncode, _count(text, "Successful call"), _count(text, "Failed call"), text)


def _count(text: str, label: str) -> int:
    m = re.search(rf"{label}\s*\|\s*\d+\s*\|\s*(\d+)", text)
    return int(m.group(1)) if m else -1


def acknowledged_aors(message_log: str) -> set[str]:
    """AORs of every 200 OK that sipp received, from its -trace_msg file."""
    acked = set()
    for block in message_log.split("-" * 47):
        if "message received" in block and "\nSIP/2.0 200 OK" in block:
            m = re.search(r"^To:\s*<sip:([^>;]+)>", block, re.M)
            if m:
                acked.add(m.group(1).lower())
    return acked


def write_bindings(db: Path, count: int, *, domain: str = "bulk.test", expires_in: float = 3600,
                   table: str = "location", batch: int = 20_000) -> list[str]:
    """Write ``count`` bindings (AORs u0000000@domain..., one contact each) into the database
    file, through the registrar's own store (its schema, its rows), before ``serve`` starts:
    seconds for 250k bindings where registering them would take minutes. Returns the AORs."""
    aors = [f"u{i:07d}@{domain}" for i in range(count)]

    async def write() -> None:
        store = store_for(str(db))
        await store.open()
        try:
            now = time.time()
            for start in range(0, count, batch):
                await store.write(Batch(puts=[
                    (table, Contact(f"bulk-{i:07d}", aor, f"sip:{aor.partition('@')[0]}@192.0.2.1:5060",
                                    now + expires_in, f"bulk-call-{i}", 1, received="udp:192.0.2.1:5060",
                                    socket="udp:127.0.0.1:5060", user_agent="bulk-loaded", modified=now))
                    for i, aor in enumerate(aors[start:start + batch], start)]))
        finally:
            await store.close()

    asyncio.run(write())
    return aors


def sipp_register(serve, tmp_path: Path, rows: list[tuple[str, str, str, str]], name: str = "devices.csv") -> None:
    """sipp registers one device per row: (user, domain, device, q), in order."""
    inf = write_injection(tmp_path / name, rows)
    res = run_sipp("register_devices.xml", serve.port, "-inf", str(inf), "-l", "1", calls=len(rows))
    assert res.successful == len(rows), res.output[-3000:]


def sipp_ok(serve, tmp_path: Path, scenario: str, row: tuple[str, ...]) -> bool:
    inf = write_injection(tmp_path / f"{scenario}.csv", [row])
    res = run_sipp(scenario, serve.port, "-inf", str(inf), timeout=10)
    return res.successful == 1 and res.failed == 0


class Terminal:
    """``sipconsole ARGS`` on a pseudo-terminal of its own, as a user starts it (the console's
    tests, bench/bench_console.py); ``prefix`` goes before the command (``taskset -c N``)."""

    def __init__(self, args: list[str], size: tuple[int, int] = (120, 36), prefix: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "sipconsole", *args], stdin=slave,
                                     stdout=slave, stderr=slave, start_new_session=True,
                                     env={**os.environ, **(env or {}), "TERM": "xterm-256color"})
        os.close(slave)
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # the other end closed
                return
            if not data:
                return
            self.output += data

    def children(self) -> list[int]:
        """The registrar process's children (the console's process)."""
        pids: list[int] = []
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            with open(f"/proc/{self.proc.pid}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        return pids

    async def until(self, condition, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out; the terminal shows: {self.output[-2000:]!r}")
            await asyncio.sleep(0.1)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        os.close(self.master)


def devices(serve: ServeProcess, aor: str) -> list[str]:
    """The user parts of ``aor``'s contacts on ``serve`` (`ctl show`), sorted; [] when it has none."""
    code, shown = serve.ctl("show", aor)
    if code == 1:
        return []
    assert code == 0, shown
    return sorted(c["addr"].split("@")[0].removeprefix("sip:") for c in shown["contacts"])

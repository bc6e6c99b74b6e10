"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary directory, a Unix socket
there and no TCP port (``listen_addresses=''``), fsync on, stopped by its PID.

initdb refuses to run as root, so under root the cluster belongs to the ``postgres`` user
(Debian's package makes it) and its directory is handed to that user. Each test gets a
fresh database in the one cluster (:meth:`PostgresCluster.new_database`); a test that
stops the server (storage faults) starts a cluster of its own.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

SUPERUSER = "postgres"


def bin_dir() -> Path:
    """The newest installed PostgreSQL's programs (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql; scripts/test does)")
    return Path(initdb).parent


class PostgresCluster:
    """One server on a Unix socket in ``directory``; :meth:`start`, :meth:`stop` (by PID), again."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = Path(directory or tempfile.mkdtemp(prefix="sc-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.bin = bin_dir()
        self._proc: subprocess.Popen[bytes] | None = None
        self._databases = 0
        self._user: str | None = SUPERUSER if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                        "--encoding=UTF8", "--no-locale"], check=True, capture_output=True, user=self._user)

    @property
    def host(self) -> str:
        """The socket directory: libpq's and asyncpg's ``host`` for a Unix socket."""
        return str(self.dir)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.host}"

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-c", "listen_addresses=",
                 "-c", f"unix_socket_directories={self.host}", "-c", "fsync=on", "-c", "synchronous_commit=on",
                 "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, user=self._user, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.psql("SELECT 1", check=False).returncode != 0:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 60.0) -> None:
        """Stop the server by its PID: SIGINT is PostgreSQL's fast shutdown (clients cut off),
        SIGKILL a crash (recovery from the WAL at the next start)."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sig == signal.SIGKILL:  # its backends outlive the postmaster for a moment
            time.sleep(0.5)
            (self.data / "postmaster.pid").unlink(missing_ok=True)

    def psql(self, sql: str, *, database: str = "postgres", check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                               "-h", self.host, "-U", SUPERUSER, "-d", database, "-c", sql],
                              capture_output=True, text=True, check=check, timeout=60)

    def query(self, dsn: str, sql: str) -> list[str]:
        """The rows (one line each) of ``sql`` in the database ``dsn`` names."""
        database = urllib.parse.urlsplit(dsn).path.lstrip("/")
        return self.psql(sql, database=database).stdout.splitlines()

    def new_database(self) -> str:
        """A fresh, empty database; its DSN."""
        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}"
        self.psql(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

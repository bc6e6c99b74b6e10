"""One table, one owner: an exclusive lock on a SQLite location database while a registrar
(or an offline ``sipconsole user``) uses it.

SQLite's own locks let several processes share a WAL database, so two registrars on one
file each served their own bindings and loaded the other's at the next start. This lock is
an OS lock (flock) on the sidecar file ``<db>.lock``, taken before the database is opened
and before any port is bound, and held for the owner's life: the kernel drops it when the
process ends, even by SIGKILL, so a crash never leaves a stale lock. The file says who
holds it (PID, control socket), for the refusal and for ``sipconsole user``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .location import is_postgres

log = logging.getLogger(__name__)

REGISTRAR = "registrar"
USER_COMMAND = "sipconsole user"


@dataclass(frozen=True)
class Holder:
    """Who holds a database: a registrar (with its control socket) or ``sipconsole user``."""

    pid: int | None  # None: it has just taken the lock and not yet written its name
    role: str = REGISTRAR
    control: str = ""


class DatabaseHeld(Exception):
    """Another process owns the database; the message says who, in one line."""

    def __init__(self, db: str, holder: Holder) -> None:
        self.db = db
        self.holder = holder
        pid = f"PID {holder.pid}" if holder.pid else "PID not yet written"
        if holder.role == USER_COMMAND:
            text = f"the database {db} is being changed by `{USER_COMMAND}` ({pid}): try again in a moment"
        else:
            control = f", control socket {holder.control}" if holder.control else ""
            text = (f"the database {db} is in use by another registrar ({pid}{control}): give this one "
                    "its own --db (and --control), or stop that one; one location table shared by "
                    "several registrars needs PostgreSQL, not an SQLite file")
        super().__init__(text)


def lock_path(db: str) -> Path:
    return Path(db + ".lock")


class DatabaseLock:
    """Held from :meth:`take` until :meth:`release` (or the end of the process). The store
    releases it while a storage fault has closed the database, so that the filesystem can be
    unmounted and repaired, and takes it again when it reopens the file."""

    def __init__(self, db: str, role: str, control: str) -> None:
        self.db = db
        self.role = role
        self.control = control
        self._fd: int | None = None

    @classmethod
    def take(cls, db: str, *, role: str = REGISTRAR, control: str = "") -> DatabaseLock | None:
        """The lock on ``db``, or DatabaseHeld naming the holder. None for ``:memory:``, for a
        PostgreSQL database (several registrars sharing it is the point), and where the lock
        file can be neither created nor opened (a read-only directory: the store then reports
        what it can do there), with a warning."""
        if db == ":memory:" or is_postgres(db):
            return None
        lock = cls(db, role, control)
        try:
            lock.acquire()
        except OSError as exc:
            log.warning("cannot lock %s (%s): nothing stops a second registrar on this database",
                        lock_path(db), exc.strerror or exc)
            return None
        return lock

    def acquire(self) -> None:
        """Take the lock (again); DatabaseHeld when another process has it."""
        if self._fd is not None:
            return
        path = lock_path(self.db)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # flock works on a read-only descriptor
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DatabaseHeld(self.db, holder) from None
        with contextlib.suppress(OSError):  # a read-only descriptor: locked, unnamed
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "role": self.role, "control": self.control}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _read_holder(fd: int) -> Holder:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return Holder(int(data["pid"]), str(data.get("role", REGISTRAR)), str(data.get("control", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return Holder(None)

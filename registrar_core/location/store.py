"""Durable storage of the location table in SQLite (WAL, synchronous=FULL) via aiosqlite.

Writes come in batches (group commit): one transaction makes many REGISTERs durable
with one fsync, and the caller answers 200 only after COMMIT has returned.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from .contact import Contact

SCHEMA_VERSION = 2  # 1: contacts, policies; 2: subscribers
_SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
    ruid TEXT PRIMARY KEY,
    tbl TEXT NOT NULL,
    aor TEXT NOT NULL,
    addr TEXT NOT NULL,
    params TEXT NOT NULL,
    expires REAL NOT NULL,
    q REAL,
    callid TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    path TEXT NOT NULL,
    received TEXT NOT NULL,
    socket TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    methods TEXT NOT NULL,
    flags INTEGER NOT NULL,
    cflags INTEGER NOT NULL,
    instance TEXT NOT NULL,
    regid INTEGER NOT NULL,
    modified REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS contacts_aor ON contacts (tbl, aor);
CREATE INDEX IF NOT EXISTS contacts_expires ON contacts (expires);
CREATE TABLE IF NOT EXISTS policies (
    tbl TEXT NOT NULL,
    aor TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tbl, aor, name)
);
CREATE TABLE IF NOT EXISTS subscribers (
    username TEXT NOT NULL,
    domain TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    ha1_sha512_256 TEXT NOT NULL,
    PRIMARY KEY (username, domain)
);
"""
_UPSERT = (
    "INSERT OR REPLACE INTO contacts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_COLUMNS = (
    "ruid, tbl, aor, addr, params, expires, q, callid, cseq, path, received, socket, "
    "user_agent, methods, flags, cflags, instance, regid, modified"
)


class StorageError(Exception):
    """The database refused a write (read-only, full, locked, corrupt...)."""


@dataclass
class Batch:
    """Changes committed together: contacts to write, contacts to delete, policy values."""

    puts: list[tuple[str, Contact]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    policies: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    # (username, domain, (ha1_md5, ha1_sha256, ha1_sha512_256) or None to delete)
    subscribers: list[tuple[str, str, tuple[str, str, str] | None]] = field(default_factory=list)


def _row(table: str, c: Contact) -> tuple[object, ...]:
    return (
        c.ruid, table, c.aor, c.addr, c.params, c.expires, c.q, c.callid, c.cseq,
        json.dumps(c.path), c.received, c.socket, c.user_agent, c.methods, c.flags,
        c.cflags, c.instance, c.regid, c.modified,
    )


class LocationStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except Exception as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from exc
        self._db = db
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=2000")
            async with db.execute("PRAGMA quick_check") as cur:
                result = (await cur.fetchone() or ("?",))[0]
            if result != "ok":
                raise StorageError(f"database {self.path} failed its integrity check: {result}")
            await self._migrate()
        except StorageError:
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            raise StorageError(f"cannot use database {self.path}: {exc}") from exc

    async def _migrate(self) -> None:
        db = self._require()
        async with db.execute("PRAGMA user_version") as cur:
            version = (await cur.fetchone())[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database {self.path} has schema {version}, newer than this release ({SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            await db.executescript(_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")

    def _require(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError("database is not open")
        return self._db

    async def load(self, now: float | None = None) -> list[tuple[str, Contact]]:
        """Drop expired rows, then return every stored binding."""
        db = self._require()
        now = time.time() if now is None else now
        await db.execute("DELETE FROM contacts WHERE expires <= ?", (now,))
        async with db.execute(f"SELECT {_COLUMNS} FROM contacts ORDER BY modified") as cur:
            rows = await cur.fetchall()
        out = []
        for r in rows:
            contact = Contact(
                ruid=r[0], aor=r[2], addr=r[3], params=r[4], expires=r[5], q=r[6],
                callid=r[7], cseq=r[8], path=tuple(json.loads(r[9])), received=r[10],
                socket=r[11], user_agent=r[12], methods=r[13], flags=r[14], cflags=r[15],
                instance=r[16], regid=r[17], modified=r[18],
            )
            out.append((r[1], contact))
        return out

    async def load_policies(self) -> list[tuple[str, str, str, str]]:
        db = self._require()
        async with db.execute("SELECT tbl, aor, name, value FROM policies") as cur:
            return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]

    async def load_subscribers(self) -> list[tuple[str, str, tuple[str, str, str]]]:
        db = self._require()
        async with db.execute("SELECT username, domain, ha1_md5, ha1_sha256, ha1_sha512_256 "
                              "FROM subscribers ORDER BY domain, username") as cur:
            return [(r[0], r[1], (r[2], r[3], r[4])) for r in await cur.fetchall()]

    async def write(self, batch: Batch) -> None:
        """Apply one batch in one transaction; all or nothing."""
        db = self._require()
        try:
            await db.execute("BEGIN IMMEDIATE")
            try:
                if batch.deletes:
                    await db.executemany(
                        "DELETE FROM contacts WHERE ruid = ?", ((r,) for r in batch.deletes)
                    )
                if batch.puts:
                    await db.executemany(_UPSERT, (_row(t, c) for t, c in batch.puts))
                if batch.policies:
                    await self._write_policies(db, batch.policies)
                for username, domain, ha1s in batch.subscribers:
                    if ha1s is None:
                        await db.execute("DELETE FROM subscribers WHERE username=? AND domain=?",
                                         (username, domain))
                    else:
                        await db.execute("INSERT OR REPLACE INTO subscribers VALUES (?,?,?,?,?)",
                                         (username, domain, *ha1s))
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
        except Exception as exc:
            raise StorageError(str(exc)) from exc

    @staticmethod
    async def _write_policies(
        db: aiosqlite.Connection, policies: Iterable[tuple[str, str, str, str | None]]
    ) -> None:
        for tbl, aor, name, value in policies:
            if value is None:
                await db.execute(
                    "DELETE FROM policies WHERE tbl=? AND aor=? AND name=?", (tbl, aor, name)
                )
            else:
                await db.execute(
                    "INSERT OR REPLACE INTO policies VALUES (?,?,?,?)", (tbl, aor, name, value)
                )

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                await db.close()
            except Exception:
                pass

"""Location service: bindings per AOR in named tables, kept durable by a Store."""

from .contact import (
    SAVE_MEMORY_ONLY,
    SAVE_NO_EXPIRES_RANDOM,
    SAVE_NO_REPLY,
    SAVE_SINGLE_CONTACT,
    Contact,
)
from .nodes import NodeIdentity, NodeState
from .service import DEFAULT_TABLE, LocationService
from .sqlite_store import SqliteStore
from .store import Batch, StorageError, Store


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(db: str) -> bool:
    """Does a ``db`` setting name a PostgreSQL database (a DSN) rather than an SQLite file?"""
    return db.startswith(POSTGRES_SCHEMES)


def store_for(db: str, identity: NodeIdentity | None = None) -> Store:
    """The store a ``db`` setting names, for the registrar and the offline ``user`` commands
    alike: a PostgreSQL DSN (``postgresql://...``), else an SQLite file (or ``:memory:``).
    ``identity``: a registrar's, a node among those sharing a PostgreSQL database."""
    if is_postgres(db):
        from .postgres_store import PostgresStore  # asyncpg: only where PostgreSQL is used

        return PostgresStore(db, identity=identity)
    return SqliteStore(db)


__all__ = [
    "DEFAULT_TABLE", "SAVE_MEMORY_ONLY", "SAVE_NO_EXPIRES_RANDOM", "SAVE_NO_REPLY",
    "SAVE_SINGLE_CONTACT", "Batch", "Contact", "LocationService", "NodeIdentity", "NodeState", "SqliteStore",
    "StorageError", "Store",
    "is_postgres", "store_for",
]

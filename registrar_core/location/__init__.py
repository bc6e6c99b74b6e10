"""Location service: bindings per AOR in named tables, kept durable by a Store."""

from .contact import (
    SAVE_MEMORY_ONLY,
    SAVE_NO_EXPIRES_RANDOM,
    SAVE_NO_REPLY,
    SAVE_SINGLE_CONTACT,
    Contact,
)
from .service import DEFAULT_TABLE, LocationService
from .sqlite_store import SqliteStore
from .store import Batch, StorageError, Store


def store_for(db: str) -> Store:
    """The store a ``db`` setting names, for the registrar and the offline ``user`` commands
    alike: today always an SQLite file (or ``:memory:``)."""
    return SqliteStore(db)


__all__ = [
    "DEFAULT_TABLE", "SAVE_MEMORY_ONLY", "SAVE_NO_EXPIRES_RANDOM", "SAVE_NO_REPLY",
    "SAVE_SINGLE_CONTACT", "Batch", "Contact", "LocationService", "SqliteStore", "StorageError", "Store",
    "store_for",
]

"""Location service: bindings per AOR in named tables, persisted in SQLite."""

from .contact import (
    SAVE_MEMORY_ONLY,
    SAVE_NO_EXPIRES_RANDOM,
    SAVE_NO_REPLY,
    SAVE_SINGLE_CONTACT,
    Contact,
)
from .service import DEFAULT_TABLE, LocationService
from .store import LocationStore, StorageError

__all__ = [
    "DEFAULT_TABLE", "SAVE_MEMORY_ONLY", "SAVE_NO_EXPIRES_RANDOM", "SAVE_NO_REPLY",
    "SAVE_SINGLE_CONTACT", "Contact", "LocationService", "LocationStore", "StorageError",
]

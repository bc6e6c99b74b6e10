"""Which contacts qualify probes: queries of the location service and its contact events,
and the one change qualify makes (remove-after's removal).

Apart from :mod:`registrar_core.qualify` so that the service holds only its schedule and the
reachability state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from . import events as ev
from .location import Contact, LocationService, StorageError

log = logging.getLogger(__name__)


def wanted(tables: set[str] | None, table: str) -> bool:
    return tables is None or table in tables


def every_contact(location: LocationService, tables: set[str] | None) -> Iterator[tuple[str, Contact]]:
    """(table, contact) of every live contact of the qualified tables."""
    for table in location.tables():
        if wanted(tables, table):
            for aor in location.aors(table):
                for contact in location.contacts(table, aor):
                    yield table, contact


def find_contacts(location: LocationService, tables: set[str] | None, ruid: str | None,
                  aor: str | None, table: str | None) -> list[tuple[str, Contact]]:
    """Live contacts by ruid and/or AOR (canonical), in ``table`` or every qualified table."""
    found = []
    for t in [table] if table else [t for t in location.tables() if wanted(tables, t)]:
        for a in [aor] if aor else location.aors(t):
            for contact in location.contacts(t, a):
                if ruid is None or contact.ruid == ruid:
                    found.append((t, contact))
                    if ruid is not None:
                        return found
    return found


def contact_by_ruid(location: LocationService, table: str, aor: str, ruid: str) -> Contact | None:
    return next((c for c in location.contacts(table, aor) if c.ruid == ruid), None)


async def follow(sub: ev.Subscription, added: Callable[[str, str, str], None],
                 gone: Callable[[str], None], lost: Callable[[], None]) -> None:
    """Report contact events from ``sub`` forever: ``added(table, aor, ruid)`` for a new or
    refreshed contact, ``gone(ruid)`` for a removed or expired one, ``lost()`` when the
    queue overflowed (what the caller holds may be stale: resync)."""
    dropped = sub.dropped
    while True:
        batch = [await sub.get(), *sub.drain()]
        if sub.dropped != dropped:
            dropped = sub.dropped
            lost()
            continue
        for event in batch:
            kind, data = event.kind, event.data
            if kind == ev.CONTACT_ADDED or kind == ev.CONTACT_REFRESHED:
                added(data["table"], data["aor"], data["ruid"])
            elif kind == ev.CONTACT_REMOVED or kind == ev.CONTACT_EXPIRED:
                gone(data["ruid"])


async def remove_contact(location: LocationService, table: str, contact: Contact, reason: str) -> bool:
    """Remove ``contact`` (by ruid) if it is still bound, under its AOR's lock; False (logged)
    when the removal cannot be stored."""
    key = (table, contact.aor)
    await location.locks.acquire(key)
    try:
        current = contact_by_ruid(location, table, contact.aor, contact.ruid)
        if current is not None:
            await location.apply(table, [], [(current, reason)])
    except StorageError as exc:
        log.error("cannot remove contact %s (%s): %s", contact.ruid, reason, exc)
        return False
    finally:
        location.locks.release(key)
    return True


__all__ = ["contact_by_ruid", "every_contact", "find_contacts", "follow", "remove_contact", "wanted"]

"""What a max-contacts or single-contact change would remove, and removing it (``--trim``).

Kamailio applies a lowered ``max_contacts`` only to the next REGISTER, which is then refused
while the old contacts stay (kamailio#2471); here an operator can see first which bindings a
change leaves over the policy (``preview``) and remove them now (``trim``), by the same rules
the registrar applies to a REGISTER: max-contacts evicts the bindings closest to expiry
(``max-contacts-mode evict-oldest``), single-contact keeps the newest binding.
Nothing here runs per REGISTER: only when an operator asks.
"""

from __future__ import annotations

from .location import Contact, LocationService
from .location.service import REMOVED_EVICTED, REMOVED_REPLACED
from .registrar import GLOBAL, POLICY_MAX_CONTACTS, POLICY_SINGLE_CONTACT, Registrar

TRIMMED = (POLICY_MAX_CONTACTS, POLICY_SINGLE_CONTACT)  # the policies a change of which can trim
REASONS = {POLICY_MAX_CONTACTS: REMOVED_EVICTED, POLICY_SINGLE_CONTACT: REMOVED_REPLACED}


def over(name: str, value: str | None, contacts: list[Contact]) -> list[Contact]:
    """The contacts of one AOR that ``name`` at ``value`` ("on"/"off", a limit "N", "0" = none)
    leaves over: max-contacts the ones closest to expiry first, single-contact all but the newest."""
    if name == POLICY_MAX_CONTACTS:
        limit = int(value or 0)
        if not limit or len(contacts) <= limit:
            return []
        return sorted(contacts, key=lambda c: (c.expires, c.modified))[:len(contacts) - limit]
    if value != "on" or len(contacts) < 2:
        return []
    newest = max(contacts, key=lambda c: (c.modified, c.expires))
    return sorted((c for c in contacts if c is not newest), key=lambda c: (c.expires, c.modified))


def effective(location: LocationService, registrar: Registrar, table: str, aor: str, name: str,
              change: tuple[str, str | None] | None = None) -> str | None:
    """The value of policy ``name`` for ``aor`` (an override, else the global value, else the
    configured default), as if ``change`` (target AOR key or GLOBAL, value) were made."""

    def stored(key: str) -> str | None:
        if change is not None and change[0] == key:
            return change[1]
        return location.policy(table, key, name)

    value = stored(aor)
    if value is None:
        value = stored(GLOBAL)
    if value is not None:
        return value
    if name == POLICY_MAX_CONTACTS:
        return str(registrar.config.max_contacts)
    return "on" if registrar.config.single_contact else "off"


def preview(location: LocationService, registrar: Registrar, table: str, name: str,
            value: str | None, aor: str | None) -> dict[str, list[Contact]]:
    """{AOR: contacts it would lose} if ``name`` were set to ``value`` (None: inherit) for ``aor``
    (None: globally), AORs sorted; changes nothing. A global change skips AORs with their own value."""
    if name not in TRIMMED:
        raise ValueError(f"policy {name} removes no contacts")
    change = (aor or GLOBAL, value)
    now = location.clock()
    out: dict[str, list[Contact]] = {}
    for key in [aor] if aor else sorted(location.aors(table)):
        gone = over(name, effective(location, registrar, table, key, name, change),
                    location.contacts(table, key, now))
        if gone:
            out[key] = gone
    return out


async def trim(location: LocationService, registrar: Registrar, table: str, name: str,
               aors: list[str]) -> list[Contact]:
    """Remove now what the policy in force leaves over in each of ``aors``: one commit per AOR,
    under its lock (what a REGISTER changed meanwhile counts), reason evicted or replaced."""
    removed: list[Contact] = []
    for aor in aors:
        key = (table, aor)
        await location.locks.acquire(key)
        try:
            gone = over(name, effective(location, registrar, table, aor, name), location.contacts(table, aor))
            if gone:
                await location.apply(table, [], [(c, REASONS[name]) for c in gone])
                removed += gone
        finally:
            location.locks.release(key)
    return removed


__all__ = ["REASONS", "TRIMMED", "effective", "over", "preview", "trim"]

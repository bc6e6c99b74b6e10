"""What a max-contacts or single-contact change would remove, and removing it (``--trim``).

Kamailio applies a lowered ``max_contacts`` only to the next REGISTER, which is then refused
while the old contacts stay (kamailio#2471); here an operator can see first which bindings a
change leaves over the policy (``preview``) and remove them now (``trim``), by the same rules
the registrar applies to a REGISTER: max-contacts evicts the bindings closest to expiry
(``max-contacts-mode evict-oldest``), single-contact keeps the newest binding.
Nothing here runs per REGISTER: only when an operator asks.
"""

from __future__ import annotations

import asyncio

from .location import Contact, LocationService
from .location.service import REMOVED_EVICTED, REMOVED_REPLACED
from .registrar import GLOBAL, POLICY_MAX_CONTACTS, POLICY_SINGLE_CONTACT, Registrar

TRIMMED = (POLICY_MAX_CONTACTS, POLICY_SINGLE_CONTACT)  # the policies a change of which can trim
REASONS = {POLICY_MAX_CONTACTS: REMOVED_EVICTED, POLICY_SINGLE_CONTACT: REMOVED_REPLACED}
CHUNK = 2048  # AORs previewed between two turns of the event loop
CONCURRENT = 256  # AORs trimmed at once (their removals share group commits)


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


def effective(location: LocationService, registrar: Registrar, table: str, aor: str, name: str) -> str:
    """The value of policy ``name`` in force for ``aor``: its own, else the global one, else the
    configured default."""
    value = location.policy(table, aor, name)
    if value is None:
        value = location.policy(table, GLOBAL, name)
    return _default(registrar, name) if value is None else value


def _default(registrar: Registrar, name: str) -> str:
    if name == POLICY_MAX_CONTACTS:
        return str(registrar.config.max_contacts)
    return "on" if registrar.config.single_contact else "off"


def _trims(name: str, value: str) -> bool:
    """Can ``value`` of ``name`` leave contacts over at all (single-contact on, a limit)?"""
    return value == "on" if name == POLICY_SINGLE_CONTACT else value not in ("", "0")


async def preview(location: LocationService, registrar: Registrar, table: str, name: str,
                  value: str | None, aor: str | None) -> dict[str, list[Contact]]:
    """{AOR: contacts it would lose} if ``name`` were set to ``value`` (None: inherit) for ``aor``
    (None: globally), AORs sorted; changes nothing. A global change skips AORs with their own
    value. Yields to the loop every CHUNK AORs: 250,000 take a second or two, SIP goes on."""
    if name not in TRIMMED:
        raise ValueError(f"policy {name} removes no contacts")
    overrides = {a: v for (t, a), v in location.policies(name).items() if t == table and a != GLOBAL}
    if aor:
        inherited = location.policy(table, GLOBAL, name)
        keys, default = [aor], (value if value is not None else
                                inherited if inherited is not None else _default(registrar, name))
        overrides.pop(aor, None)
    else:
        keys, default = list(location.aors(table)), value if value is not None else _default(registrar, name)
    now = location.clock()
    out: dict[str, list[Contact]] = {}
    for i, key in enumerate(keys):
        if i and not i % CHUNK:
            await asyncio.sleep(0)
            now = location.clock()
        wanted = overrides.get(key, default)
        if _trims(name, wanted):
            gone = over(name, wanted, location.contacts(table, key, now))
            if gone:
                out[key] = gone
    return {key: out[key] for key in sorted(out)}


async def trim(location: LocationService, registrar: Registrar, table: str, name: str,
               aors: list[str]) -> list[Contact]:
    """Remove now what the policy in force leaves over in each of ``aors``: each AOR's removal
    is its own change under the AOR's lock (what a REGISTER changed meanwhile counts), reason
    evicted or replaced; up to CONCURRENT AORs at once, so that group commit takes them in
    a few commits rather than one round trip each."""
    removed: list[Contact] = []

    async def one(aor: str) -> None:
        key = (table, aor)
        await location.locks.acquire(key)
        try:
            gone = over(name, effective(location, registrar, table, aor, name), location.contacts(table, aor))
            if gone:
                await location.apply(table, [], [(c, REASONS[name]) for c in gone])
                removed.extend(gone)
        finally:
            location.locks.release(key)

    for start in range(0, len(aors), CONCURRENT):
        await asyncio.gather(*(one(aor) for aor in aors[start:start + CONCURRENT]))
    return removed


__all__ = ["CHUNK", "CONCURRENT", "REASONS", "TRIMMED", "effective", "over", "preview", "trim"]

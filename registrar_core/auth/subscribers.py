"""Subscribers: who may register, with HA1 per digest algorithm (never the password)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from ..location.store import Batch, Store, SubscriberChange
from .digest import ha1, ha1_index

_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+\Z")
_DOMAIN = re.compile(r"[A-Za-z0-9\-.]+\Z")


class SubscriberError(ValueError):
    """A username, domain or password that cannot be accepted."""


def split_user(text: str) -> tuple[str, str]:
    """``alice@example.com`` (or ``sip:alice@example.com``) -> ("alice", "example.com")."""
    text = text.strip()
    if text.lower().startswith(("sip:", "sips:")):
        text = text.split(":", 1)[1]
    user, at, domain = text.partition("@")
    if not at or not _USER.match(user) or not _DOMAIN.match(domain):
        raise SubscriberError(f"expected USER@DOMAIN, got {text!r}")
    return user, domain.lower()


def ha1_set(username: str, domain: str, password: str) -> tuple[str, str, str]:
    """The HA1 of each algorithm, in digest.ha1_index's order."""
    if not password:
        raise SubscriberError("the password must not be empty")
    return (ha1("MD5", username, domain, password), ha1("SHA-256", username, domain, password),
            ha1("SHA-512-256", username, domain, password))


class Keeper(Protocol):
    """Where subscriber changes are made durable: the registrar's LocationService (with its
    next group commit), or the store itself for the offline ``sipconsole user`` commands."""

    @property
    def store(self) -> Store | None: ...

    async def commit(self, batch: Batch) -> None: ...


class Subscribers:
    """The subscriber table, in memory for the hot path and persisted with the location table."""

    def __init__(self, location: Keeper) -> None:
        self.location = location
        self._ha1: dict[tuple[str, str], tuple[str, str, str]] = {}

    async def load(self) -> None:
        if self.location.store is not None:
            for username, domain, ha1s in await self.location.store.load_subscribers():
                self._ha1[(username, domain)] = ha1s

    def __len__(self) -> int:
        return len(self._ha1)

    @property
    def table(self) -> dict[tuple[str, str], tuple[str, str, str]]:
        """(username, domain) -> the HA1s of ha1_set, changed in place only: the compiled
        Authenticator reads it per REGISTER, where a call into this interpreted class cost
        more than the look-up itself."""
        return self._ha1

    def ha1(self, username: str, domain: str, algorithm: str) -> str | None:
        ha1s = self._ha1.get((username, domain.lower()))
        if ha1s is None:
            return None
        return ha1s[ha1_index(algorithm)]

    def list(self) -> list[str]:
        return [f"{u}@{d}" for u, d in sorted(self._ha1, key=lambda k: (k[1], k[0]))]

    def follow(self, changes: Sequence[SubscriberChange], *, complete: bool = False) -> Sequence[tuple[str, str]]:
        """Apply what another registrar committed (``complete``: every subscriber there is);
        (USER@DOMAIN, action) for each one that changed here: added, password, removed."""
        if complete:
            listed = {(username, domain) for username, domain, _ in changes}
            changes = [*changes, *((username, domain, None) for username, domain in self._ha1
                                   if (username, domain) not in listed)]
        done: list[tuple[str, str]] = []
        for username, domain, ha1s in changes:
            old = self._ha1.get((username, domain))
            if ha1s is None:
                if old is not None:
                    del self._ha1[(username, domain)]
                    done.append((f"{username}@{domain}", "removed"))
            elif ha1s != old:
                self._ha1[(username, domain)] = ha1s
                done.append((f"{username}@{domain}", "added" if old is None else "password"))
        return done

    async def add(self, user_at_domain: str, password: str, *, replace: bool = False) -> str:
        username, domain = split_user(user_at_domain)
        if not replace and (username, domain) in self._ha1:
            raise SubscriberError(f"{username}@{domain} exists already (use passwd to change its password)")
        if replace and (username, domain) not in self._ha1:
            raise LookupError(f"no subscriber {username}@{domain}")
        ha1s = ha1_set(username, domain, password)
        await self.location.commit(Batch(subscribers=[(username, domain, ha1s)]))
        self._ha1[(username, domain)] = ha1s
        return f"{username}@{domain}"

    async def remove(self, user_at_domain: str) -> str:
        username, domain = split_user(user_at_domain)
        if (username, domain) not in self._ha1:
            raise LookupError(f"no subscriber {username}@{domain}")
        await self.location.commit(Batch(subscribers=[(username, domain, None)]))
        del self._ha1[(username, domain)]
        return f"{username}@{domain}"

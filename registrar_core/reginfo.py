"""The reg event package's document (RFC 3680 §5): ``application/reginfo+xml``, sans-IO.

What a watcher of an AOR is told: the registration (``init`` with no contacts, ``active``
with some, ``terminated`` when the last one went) and each contact with its state and the
event that brought it there. Full state lists the live contacts; a partial document only
those that changed since the previous NOTIFY. This module only writes documents: the
subscriptions and the NOTIFYs are reg_subscriptions.py's and reg_notifier.py's.

Which location change is which RFC 3680 event (README "reg event" repeats it):

=====================================  ==========================================
location change                        contact state / event
=====================================  ==========================================
new binding (REGISTER)                 active / registered
refresh, expiry later or the same      active / refreshed
refresh, expiry earlier                active / shortened
REGISTER with expires 0, ``*``         terminated / unregistered
expiry                                 terminated / expired
connection closed, unreachable,        terminated / deactivated (the device should
replaced, evicted, another node        register again, and will)
removed by the operator                terminated / rejected (removed administratively)
=====================================  ==========================================

``created`` (an operator adding a binding) and ``probation`` (re-register after a delay) are
never sent: sipconsole has no such change.

GRUU (RFC 5627/5628): a contact with a public or temporary GRUU carries ``<gr:pub-gruu>`` /
``<gr:temp-gruu>`` (namespace ``urn:ietf:params:xml:ns:gruuinfo``) when its :class:`ContactInfo`
has them: an active binding with ``+sip.instance`` gets its pub-gruu and a new temp-gruu
(gruu.py issues them; a temp-gruu needs no storage, so the one in a NOTIFY reaches the device
as the one in the 200 does, until its Call-ID changes).
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from .location import Contact
from .location.service import (
    REMOVED_ADMIN,
    REMOVED_EXPIRED,
    REMOVED_UNREGISTERED,
)
from .sip.uri import parse_params

CONTENT_TYPE = "application/reginfo+xml"
NAMESPACE = "urn:ietf:params:xml:ns:reginfo"
GRUU_NAMESPACE = "urn:ietf:params:xml:ns:gruuinfo"

# Registration states (RFC 3680 §5.3): the AOR as a whole.
INIT = "init"
ACTIVE = "active"
TERMINATED = "terminated"

# Contact events (RFC 3680 §5.2.2).
REGISTERED = "registered"
CREATED = "created"
REFRESHED = "refreshed"
SHORTENED = "shortened"
EXPIRED = "expired"
DEACTIVATED = "deactivated"
PROBATION = "probation"
UNREGISTERED = "unregistered"
REJECTED = "rejected"

_REMOVAL_EVENTS = {REMOVED_UNREGISTERED: UNREGISTERED, REMOVED_EXPIRED: EXPIRED, REMOVED_ADMIN: REJECTED}


def removal_event(reason: str) -> str:
    """The RFC 3680 event for a binding removed for ``reason`` (the location service's
    REMOVED_*, flows' connection-closed, qualify's unreachable): anything but the user's own
    unregister, expiry and the operator is a deactivation the device recovers from."""
    return _REMOVAL_EVENTS.get(reason, DEACTIVATED)


def refresh_event(old_expires: float, new_expires: float) -> str:
    """``shortened`` when a refresh moved the expiry earlier, else ``refreshed``."""
    return SHORTENED if new_expires < old_expires else REFRESHED


@dataclass(frozen=True, slots=True)
class ContactInfo:
    """One ``<contact>`` element: what a watcher learns of a binding."""

    id: str  # stable per binding: its ruid
    uri: str
    state: str  # ACTIVE or TERMINATED
    event: str
    expires: int | None = None  # seconds left, for an active contact
    q: float | None = None
    callid: str = ""
    cseq: int | None = None
    params: str = ""  # the Contact's own parameters as registered (";+sip.instance=...")
    pub_gruu: str = ""  # RFC 5628, when the binding has one (GRUU is registrar.py's)
    temp_gruu: str = ""
    temp_gruu_first_cseq: int | None = None

    @classmethod
    def of(cls, contact: Contact, state: str, event: str, now: float,
           gruus: tuple[str, str] | None = None) -> ContactInfo:
        """``gruus``: the binding's (pub-gruu, temp-gruu) when it has an instance (RFC 5628);
        the temp-gruu is a new one, issued by the REGISTER with this CSeq (its first-cseq)."""
        pub, temp = gruus or ("", "")
        return cls(contact.ruid, contact.addr, state, event,
                   contact.expires_in(now) if state == ACTIVE else 0, contact.q,
                   contact.callid, contact.cseq, contact.params, pub, temp,
                   contact.cseq if temp else None)


def document(aor: str, version: int, full: bool, state: str, contacts: list[ContactInfo]) -> bytes:
    """A reginfo document for one AOR (``user@host``): ``version`` counts the NOTIFYs of the
    subscription from 0 (RFC 3680 §5.3: a watcher that sees a gap asks for full state)."""
    uses_gruu = any(c.pub_gruu or c.temp_gruu for c in contacts)
    gruu_ns = f' xmlns:gr="{GRUU_NAMESPACE}"' if uses_gruu else ""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<reginfo xmlns="{NAMESPACE}"{gruu_ns} version="{version}" state="{"full" if full else "partial"}">',
             f'  <registration aor={quoteattr("sip:" + aor)} id={quoteattr(registration_id(aor))} state="{state}">']
    for contact in contacts:
        lines.extend(_contact(contact))
    lines += ["  </registration>", "</reginfo>", ""]
    return "\n".join(lines).encode("utf-8")


def registration_id(aor: str) -> str:
    """The ``id`` of an AOR's ``<registration>``: the same in every document about it."""
    return "reg-" + aor.replace("@", "-at-")


def _contact(c: ContactInfo) -> list[str]:
    attrs = [f"id={quoteattr(c.id)}", f'state="{c.state}"', f'event="{c.event}"']
    if c.expires is not None:
        attrs.append(f'expires="{c.expires}"')
    if c.q is not None:
        attrs.append(f'q="{c.q:.3f}'.rstrip("0").rstrip(".") + '"')
    if c.callid:
        attrs.append(f"callid={quoteattr(c.callid)}")
    if c.cseq is not None:
        attrs.append(f'cseq="{c.cseq}"')
    lines = [f"    <contact {' '.join(attrs)}>", f"      <uri>{escape(c.uri)}</uri>"]
    for name, value in parse_params(c.params.lstrip(";")) if c.params else ():
        lines.append(f"      <unknown-param name={quoteattr(name)}>{escape(value or '')}</unknown-param>")
    if c.pub_gruu:
        lines.append(f"      <gr:pub-gruu uri={quoteattr(c.pub_gruu)}/>")
    if c.temp_gruu:
        first = "" if c.temp_gruu_first_cseq is None else f' first-cseq="{c.temp_gruu_first_cseq}"'
        lines.append(f"      <gr:temp-gruu uri={quoteattr(c.temp_gruu)}{first}/>")
    lines.append("    </contact>")
    return lines


__all__ = [
    "ACTIVE", "CONTENT_TYPE", "CREATED", "DEACTIVATED", "EXPIRED", "INIT", "PROBATION", "REFRESHED",
    "REGISTERED", "REJECTED", "SHORTENED", "TERMINATED", "UNREGISTERED", "ContactInfo", "document",
    "refresh_event", "registration_id", "removal_event",
]

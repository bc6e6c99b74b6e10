"""AOR names as operators type them, and the error for one the location table does not hold.

Apart from api.py so that the services below the facade (qualify) can raise NotFound
without importing the facade.
"""

from __future__ import annotations

from .sip import SipError, SipURI, parse_uri


class NotFound(LookupError):
    """An AOR or contact that the location table does not hold."""


def normalise_aor(text: str) -> str:
    """``alice@example.com`` or ``sip:alice@example.com`` -> the canonical AOR key."""
    text = text.strip()
    if ":" not in text.split("@")[0]:
        text = "sip:" + text
    try:
        uri = parse_uri(text)
    except SipError:
        raise NotFound(f"not a valid AOR: {text}") from None
    if not isinstance(uri, SipURI):
        raise NotFound(f"not a SIP AOR: {text}")
    return uri.aor

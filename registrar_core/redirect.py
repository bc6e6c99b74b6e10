"""Requests other than REGISTER, answered as a registrar plus redirect server.

Nothing here tells a subscriber without contacts from a user that does not exist: both
get "404 Not Found", so scanners cannot enumerate extensions with OPTIONS or INVITE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registrar import SUPPORTED, format_binding, reply
from .sip import Request, Response, SipURI

if TYPE_CHECKING:
    from .api import RegistrarCore
    from .source import Source

ALLOW = ("REGISTER", "OPTIONS", "INVITE", "MESSAGE", "SUBSCRIBE", "REFER", "PUBLISH", "NOTIFY", "ACK")
# Requests that may start something and are redirected to the callee's contacts.
REDIRECTED = frozenset(("INVITE", "MESSAGE", "SUBSCRIBE", "REFER", "PUBLISH", "NOTIFY", "OPTIONS"))
# Methods that only make sense inside a dialog, which a redirect server never holds.
IN_DIALOG = frozenset(("BYE", "CANCEL", "PRACK", "UPDATE", "INFO"))
_ALLOW_HEADER = ("Allow", ", ".join(ALLOW))


def answer(core: RegistrarCore, request: Request, source: Source, table: str) -> Response:
    """The reply to a non-REGISTER request (ACK is filtered out before this)."""
    tag = core.to_tag
    method = request.method
    if method in IN_DIALOG:
        return reply(request, 481, "Call/Transaction Does Not Exist", [_ALLOW_HEADER], tag)
    if method not in REDIRECTED:
        return reply(request, 501, "Not Implemented", [_ALLOW_HEADER], tag)
    uri = request.uri
    if not isinstance(uri, SipURI) or uri.scheme not in ("sip", "sips"):
        return reply(request, 416, "Unsupported URI Scheme", [], tag)
    required = [*request.headers.values("Require"), *request.headers.values("Proxy-Require")]
    unsupported = [o for o in required if o.lower() not in SUPPORTED]
    if unsupported:
        return reply(request, 420, "Bad Extension", [("Unsupported", ", ".join(unsupported))], tag)
    if method == "OPTIONS" and uri.user is None:
        return reply(request, 200, "OK", [_ALLOW_HEADER, ("Accept", "application/sdp"),
                                           ("Supported", ", ".join(SUPPORTED))], tag)
    if core.caller_check and not core.from_registered_device(request, source, table):
        return reply(request, 403, "Please register first", [], tag)
    now = core.location.clock()
    targets = core.lookup(uri, table=table)
    if targets:
        return reply(request, 302, "Moved Temporarily",
                     [("Contact", format_binding(c, now)) for c in targets], tag)
    # A subscriber without contacts and a user that does not exist get the same answer:
    # anything else lets svwar -m OPTIONS / INVITE list every extension (no enumeration).
    return reply(request, 404, "Not Found", [], tag)

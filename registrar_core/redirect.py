"""Requests other than REGISTER, answered as a registrar plus redirect server.

Nothing here tells a subscriber without contacts from a user that does not exist: both
get "404 Not Found", so scanners cannot enumerate extensions with OPTIONS or INVITE.

A contact reachable only through its flow (RFC 5626 outbound, RFC 7118 WebSocket: often at a
``*.invalid`` host) is useless in a 302: the caller cannot open that connection, only a proxy
holding it could use it. Such contacts are left out of the 302; an AOR with nothing else gets
480 with a Warning saying why (it is registered, so 404 would be a lie, and a 302 already
tells a registered AOR from others).

A Request-URI that is a GRUU (RFC 5627, ``;gr``) reaches only the contacts of its instance
(the facade's lookup resolves it); a GRUU whose instance is not registered, a temp-gruu from
before the instance's Call-ID changed, or one we did not issue gets the 404 of any unknown
target."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .location import Contact
from .registrar import SUPPORTED, format_binding, reply, unsupported
from .sip import Request, Response, SipURI
from .source import Source

ALLOW = ("REGISTER", "OPTIONS", "INVITE", "MESSAGE", "SUBSCRIBE", "REFER", "PUBLISH", "NOTIFY", "ACK")
# Requests that may start something and are redirected to the callee's contacts.
REDIRECTED = frozenset(("INVITE", "MESSAGE", "SUBSCRIBE", "REFER", "PUBLISH", "NOTIFY", "OPTIONS"))
# Methods that only make sense inside a dialog, which a redirect server never holds.
IN_DIALOG = frozenset(("BYE", "CANCEL", "PRACK", "UPDATE", "INFO"))
_ALLOW_HEADER = ("Allow", ", ".join(ALLOW))
_FLOW_ONLY_WARNING = ("Warning", '399 sipconsole "reachable only through its connection (RFC 5626 flow); '
                                 'this registrar redirects, it does not proxy"')


def flow_only(contact: Contact) -> bool:
    """Bound to a connection that is the only way to it: a WebSocket (RFC 7118) or an RFC 5626
    outbound registration (reg-id). A plain TCP/TLS contact may listen at its address: kept."""
    return contact.conid is not None and (contact.regid > 0 or contact.received.startswith("ws"))


class Directory(Protocol):
    """What the redirect server asks of the core (RegistrarCore is one)."""

    @property
    def caller_check(self) -> bool: ...

    def lookup(self, uri: SipURI, *, table: str) -> list[Contact]: ...

    def from_registered_device(self, request: Request, source: Source, table: str) -> bool: ...


class RedirectServer:
    """The handler of every method but REGISTER (the pipeline's method table)."""

    def __init__(self, directory: Directory, to_tag: str, clock: Callable[[], float], table: str) -> None:
        self.directory = directory
        self.to_tag = to_tag
        self.clock = clock
        self.table = table

    def handle(self, request: Request, source: Source, answer: Callable[[Response], None]) -> None:
        answer(self.answer(request, source))

    def answer(self, request: Request, source: Source) -> Response:
        """The reply to a non-REGISTER request (ACK is filtered out before this)."""
        tag = self.to_tag
        method = request.method
        if method in IN_DIALOG:
            return reply(request, 481, "Call/Transaction Does Not Exist", [_ALLOW_HEADER], tag)
        if method not in REDIRECTED:
            return reply(request, 501, "Not Implemented", [_ALLOW_HEADER], tag)
        uri = request.uri
        if not isinstance(uri, SipURI) or uri.scheme not in ("sip", "sips"):
            return reply(request, 416, "Unsupported URI Scheme", [], tag)
        extensions = unsupported(request)
        if extensions:
            return reply(request, 420, "Bad Extension", [("Unsupported", ", ".join(extensions))], tag)
        if method == "OPTIONS" and uri.user is None:
            return reply(request, 200, "OK", [_ALLOW_HEADER, ("Accept", "application/sdp"),
                                               ("Supported", ", ".join(SUPPORTED))], tag)
        directory, table = self.directory, self.table
        if directory.caller_check and not directory.from_registered_device(request, source, table):
            return reply(request, 403, "Please register first", [], tag)
        now = self.clock()
        contacts = directory.lookup(uri, table=table)
        targets = [c for c in contacts if not flow_only(c)]
        if targets:
            return reply(request, 302, "Moved Temporarily",
                         [("Contact", format_binding(c, now)) for c in targets], tag)
        if contacts:
            return reply(request, 480, "Temporarily Unavailable", [_FLOW_ONLY_WARNING], tag)
        # A subscriber without contacts and a user that does not exist get the same answer:
        # anything else lets svwar -m OPTIONS / INVITE list every extension (no enumeration).
        return reply(request, 404, "Not Found", [], tag)

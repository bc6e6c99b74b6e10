"""Sans-IO SIP message layer: bytes in, messages out; no sockets, no asyncio."""

from .errors import SipError
from .framing import KEEPALIVE, StreamFramer
from .headers import NameAddr, Via, parse_name_addr, parse_via, split_values
from .limits import DEFAULT_LIMITS, Limits
from .message import (
    Headers,
    Message,
    Request,
    Response,
    build_response,
    parse_message,
    response_from,
    response_head,
)
from .uri import AbsoluteURI, SipURI, parse_uri

__all__ = [
    "DEFAULT_LIMITS", "KEEPALIVE", "AbsoluteURI", "Headers", "Limits", "Message", "NameAddr",
    "Request", "Response", "SipError", "SipURI", "StreamFramer", "Via", "build_response",
    "parse_message", "parse_name_addr", "parse_uri", "parse_via", "response_from", "response_head",
    "split_values",
]

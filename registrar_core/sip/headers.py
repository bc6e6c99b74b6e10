"""Header values: comma splitting, name-addr/addr-spec, Via, CSeq (RFC 3261 §20, §25)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import SipError
from .uri import (
    ALPHA,
    TOKEN,
    URI,
    Params,
    all_of,
    digits_value,
    format_params,
    has_space,
    host_port,
    param,
    parse_host,
    parse_params,
    parse_uri,
)

# Compact forms (RFC 3261 §7.3.3 and later RFCs) to full names.
COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

# Headers whose values are comma-separated lists (RFC 3261 §7.3.1).
LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Via", "Contact", "Route", "Record-Route", "Path", "Service-Route", "Allow",
        "Supported", "Require", "Proxy-Require", "Unsupported", "Accept", "Accept-Encoding",
        "Accept-Language", "Allow-Events", "Content-Encoding", "Content-Language", "In-Reply-To",
    )
)

_TOKEN_CHARS = r"[A-Za-z0-9\-.!%*_+`'~]+"
# via-parm (RFC 3261 §25.1): LWS is allowed around "/" and ":" (SLASH, COLON), and
# between sent-protocol and sent-by; the params (from ";") are split by parse_params.
_VIA = re.compile(
    rf"({_TOKEN_CHARS})\s*/\s*({_TOKEN_CHARS})\s*/\s*({_TOKEN_CHARS})\s+"
    r"(\[[^\]]*\]|[^\s:;\[\]]+)(?:\s*:\s*([^\s;]*))?\s*(?:;(.*))?\Z",
    re.S,
)
_CSEQ = re.compile(rf"([0-9]+)\s+({_TOKEN_CHARS})\Z")
MAX_CSEQ = 2**32 - 1


def split_values(value: str) -> list[str]:
    """Split a list header on commas outside quotes and angle brackets."""
    if "," not in value:
        stripped = value.strip()
        return [stripped] if stripped else []
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    depth = 0
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            if c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    if any(not p for p in parts):
        raise SipError(400, "Empty element in a header list")
    return parts


@dataclass(slots=True, init=False, unsafe_hash=True)  # a value: never mutated; not frozen, for speed
class NameAddr:
    """``"Display" <uri>;params`` or a bare addr-spec ``uri;params``.

    For an addr-spec the ``;params`` belong to the header, never to the URI
    (RFC 3261 §20.10), so ``sip:a@b;x`` has uri ``sip:a@b`` and params ``x``.
    """

    uri: URI
    display: str | None
    params: Params
    bracketed: bool

    def __init__(self, uri: URI, display: str | None = None, params: Params = (),
                 bracketed: bool = True) -> None:  # written out: compiled (setup.py)
        self.uri = uri
        self.display = display
        self.params = params
        self.bracketed = bracketed

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def __str__(self) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri.raw or self.uri}>{format_params(self.params)}"


def quoted_end(text: str) -> int:
    """The index after the quoted-string (with quoted-pairs) that starts ``text``, or -1."""
    end = len(text)
    if not end or text[0] != '"':
        return -1
    i = 1
    while i < end:
        if text[i] == '"':
            return i + 1
        i += 2 if text[i] == "\\" else 1
    return -1


def name_addr_parts(text: str) -> tuple[str | None, str, str | None] | None:
    r"""(display, URI, params) of the common name-addr ``["display"] <uri>[;params]``, whitespace
    only after the display name, or None for any other shape: what the regular expression
    ``(?:("(?:[^"\\]|\\.)*+")\s*)?<([^>\s]*)>(?:;(.*))?\Z`` (re.S) matched, in one compiled pass
    (tests/test_sip_properties.py keeps the expression as the oracle)."""
    display: str | None = None
    lt = 0
    end = len(text)
    if end and text[0] == '"':
        lt = quoted_end(text)
        if lt < 0:
            return None
        display = text[:lt]
        while lt < end and has_space(text, lt, lt + 1):
            lt += 1
    if lt >= end or text[lt] != "<":
        return None
    gt = text.find(">", lt + 1)
    if gt < 0:
        return None
    uri = text[lt + 1 : gt]
    # No whitespace (as str.isspace and a regex's \s see it) when split() gives the text back
    # whole: one C call, compiled a primitive (str.isprintable was a generic method call, about
    # 800 instructions; a scan of the characters is slow uncompiled).
    if uri:
        words = uri.split()
        if len(words) != 1 or len(words[0]) != len(uri):
            return None
    if gt + 1 == end:
        return display, uri, None
    if text[gt + 1] != ";":
        return None
    return display, uri, text[gt + 2 :]


def parse_name_addr(text: str, like: URI | None = None) -> NameAddr:
    """Parse one From/To/Contact/Route-style value. ``like``: a URI parsed already, shared
    when this one is written the same (a REGISTER's To is mostly its From; URIs are values)."""
    text = text.strip()
    common = name_addr_parts(text)
    if common is not None:
        display, uri_text, params = common
        uri = like if like is not None and uri_text and like.raw == uri_text else parse_uri(uri_text)
        return NameAddr(uri, display, () if params is None else parse_params(params))
    if not text:
        raise SipError(400, "Empty address")
    lt = -1
    display = None
    if text.startswith('"'):
        end = quoted_end(text)
        if end < 0:
            raise SipError(400, "Unbalanced quotes")
        display = text[:end]
        lt = text.find("<", end)
        if lt < 0 or text[end:lt].strip():
            raise SipError(400, "Quoted display name without <URI>")
    else:
        lt = text.find("<")
        if lt > 0:
            display_text = text[:lt].strip()
            if display_text:
                # An unquoted display name is a sequence of tokens (RFC 3261 §25.1).
                if not all(is_token(w) for w in display_text.split()):
                    raise SipError(400, "Display name must be quoted")
                display = display_text
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise SipError(400, "Unterminated <URI>")
        uri_text = text[lt + 1 : gt]
        if uri_text != uri_text.strip():
            raise SipError(400, "Whitespace inside <URI>")
        rest = text[gt + 1 :].strip()
        bracketed = True
    else:
        uri_text, semi, rest = text.partition(";")
        uri_text = uri_text.strip()
        rest = semi + rest
        if "?" in uri_text:
            raise SipError(400, "URI headers need <> in an addr-spec")
        bracketed = False
    if rest and not rest.startswith(";"):
        raise SipError(400, "Junk after address")
    return NameAddr(parse_uri(uri_text), display, parse_params(rest[1:]) if rest else (), bracketed)


@dataclass(slots=True, init=False, unsafe_hash=True)
class Via:
    """One Via hop: ``SIP/2.0/UDP host:port;branch=...;received=...;rport``."""

    transport: str
    host: str
    port: int | None
    params: Params

    def __init__(self, transport: str, host: str, port: int | None, params: Params) -> None:
        self.transport = transport  # written out: compiled (setup.py)
        self.host = host
        self.port = port
        self.params = params

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def rport(self) -> str | None:
        return self.param("rport")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"


def via_parts(text: str) -> tuple[str, str, str | None, str | None] | None:
    r"""(transport, host, port, params) of the common Via ``SIP/2.0/UDP hostname[:port][;params]``
    without LWS, or None for any other shape: what the regular expression
    ``SIP/2\.0/([A-Za-z]+) (hostname)(?::([0-9]{1,5}))?(?:;(.*))?\Z`` (re.S) matched
    (tests/test_sip_properties.py keeps the expression as the oracle)."""
    if not text.startswith("SIP/2.0/"):
        return None
    space = text.find(" ", 8)
    if space <= 8 or not all_of(text, 8, space, ALPHA):
        return None
    start = space + 1
    host = host_port(text, start)
    if host is None:
        return None
    host_end, semi, port = host
    return text[8:space], text[start:host_end], port, None if semi < 0 else text[semi + 1 :]


def parse_via(text: str) -> Via:
    """Parse one Via value; LWS around ``/ : ; =`` is allowed (RFC 3261 §25.1, RFC 4475 wsinv)."""
    text = text.strip()
    common = via_parts(text)
    if common is not None:
        transport, host, port_text, params = common
        port = None if port_text is None else digits_value(port_text)  # is_port checked it
        if port is None or port <= 65535:  # else the general path says why not
            return Via(transport.upper(), host, port, () if params is None else parse_params(params))
    m = _VIA.match(text)
    if not m or m[1].upper() != "SIP" or m[2] != "2.0":
        raise SipError(400, "Malformed Via")
    _, _, transport, host_text, port_text, params = m.groups()
    host, port = parse_host(host_text if port_text is None else f"{host_text}:{port_text}")
    return Via(transport.upper(), host, port, parse_params(params) if params is not None else ())


def _number(digits: str) -> int | None:
    """The value of an ASCII digit string, or None when it exceeds 2**32-1."""
    # Leading zeros stripped only from a long one (compiled, lstrip with characters is about
    # 370 instructions): a longer value with more than 10 digits left is out of range anyway.
    if len(digits) > 10 and len(digits.lstrip("0")) > 10:
        return None
    value = digits_value(digits)  # the callers checked is_digits
    return value if value <= MAX_CSEQ else None


# The methods a registrar meets, for parse_cseq's fast path (all tokens: the regex would agree).
_METHODS = frozenset(("REGISTER", "OPTIONS", "INVITE", "ACK", "BYE", "CANCEL", "SUBSCRIBE", "NOTIFY",
                      "MESSAGE", "INFO", "PRACK", "UPDATE", "REFER", "PUBLISH"))


def parse_cseq(text: str) -> tuple[int, str]:
    """``CSeq: 1 REGISTER`` -> (1, "REGISTER"); the number must fit 32 bits (RFC 3261 §8.1.1.5)."""
    number, space, method = text.partition(" ")
    if space and method in _METHODS and is_digits(number):  # as written by nearly everyone
        value = _number(number)
    else:
        m = _CSEQ.match(text.strip())
        if not m:
            raise SipError(400, "Malformed CSeq")
        value = _number(m[1])
        method = m[2]
    if value is None:
        raise SipError(400, "CSeq out of range")
    return value, method


def parse_delta(text: str, name: str) -> int:
    """An Expires/Min-Expires style delta-seconds; huge values saturate at 2**32-1."""
    text = text.strip()
    if not is_digits(text):
        raise SipError(400, f"Malformed {name}")
    value = _number(text)
    return MAX_CSEQ if value is None else value


def is_token(text: str) -> bool:
    """A non-empty RFC 3261 token (the usual methods are known without a scan)."""
    return text in _METHODS or (len(text) > 0 and all_of(text, 0, len(text), TOKEN))


def is_digits(text: str) -> bool:
    """True for a non-empty string of ASCII digits (``str.isdigit`` alone also takes "²")."""
    return text.isascii() and text.isdigit()

"""SIP requests and responses: parse from bytes, serialise to bytes (RFC 3261 §7, §25).

Sans-IO in the h11 style: bytes in, objects out, no sockets. The parser validates
what every request needs (start line, Via, From, To, Call-ID, CSeq, Content-Length)
once, at parse time, and caches the parsed values on the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from .errors import SipError
from .headers import (
    COMPACT_FORMS,
    NameAddr,
    Via,
    is_token,
    parse_cseq,
    parse_delta,
    parse_name_addr,
    parse_via,
    split_values,
)
from .limits import DEFAULT_LIMITS, Limits
from .uri import URI, parse_uri

SIP_VERSION = "SIP/2.0"
_VERSION = re.compile(r"SIP/\d+\.\d+\Z", re.IGNORECASE)
_SINGLE = ("to", "from", "call-id", "cseq", "max-forwards", "expires", "content-type")
_CANONICAL = {
    name.lower(): name
    for name in (
        *COMPACT_FORMS.values(),
        "Via", "Max-Forwards", "CSeq", "Call-ID", "Expires", "Min-Expires", "Contact", "Path",
        "Require", "Proxy-Require", "Unsupported", "Supported", "Allow", "User-Agent", "Server",
        "Date", "Retry-After", "WWW-Authenticate", "Authorization", "Record-Route", "Route",
        "Service-Route", "Flow-Timer", "Accept", "Warning", "P-Registrar-Error",
    )
}


def canonical_name(name: str) -> str:
    """Full, conventionally spelled header name (compact forms expanded)."""
    if len(name) == 1:
        full = COMPACT_FORMS.get(name.lower())
        if full:
            return full
    return _CANONICAL.get(name.lower(), name)


class Headers:
    """Ordered header fields with case-insensitive lookup by full name."""

    __slots__ = ("_fields",)

    def __init__(self, fields: list[tuple[str, str]] | None = None) -> None:
        self._fields: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in fields or ()]

    def __iter__(self):
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._fields == other._fields

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"

    def get(self, name: str) -> str | None:
        lname = canonical_name(name).lower()
        for n, v in self._fields:
            if n.lower() == lname:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every field value of ``name``, as written (not comma-split)."""
        lname = canonical_name(name).lower()
        return [v for n, v in self._fields if n.lower() == lname]

    def values(self, name: str) -> list[str]:
        """The list elements of ``name`` across all its fields, comma-split."""
        out: list[str] = []
        for value in self.get_all(name):
            out.extend(split_values(value))
        return out

    def add(self, name: str, value: str) -> None:
        self._fields.append((canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        lname = canonical_name(name).lower()
        self._fields = [(n, v) for n, v in self._fields if n.lower() != lname]

    def copy(self) -> Headers:
        h = Headers()
        h._fields = list(self._fields)
        return h


@dataclass(eq=True)
class _Message:
    headers: Headers
    body: bytes

    def _head_lines(self) -> list[str]:
        return [f"{n}: {v}" for n, v in self.headers]

    def _serialise(self, start_line: str) -> bytes:
        head = "\r\n".join([start_line, *self._head_lines()]) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body

    # Parsed views of the headers every SIP message carries; computed once.
    @cached_property
    def vias(self) -> list[Via]:
        return [parse_via(v) for v in self.headers.values("Via")]

    @cached_property
    def from_(self) -> NameAddr:
        return parse_name_addr(_required(self.headers, "From"))

    @cached_property
    def to(self) -> NameAddr:
        return parse_name_addr(_required(self.headers, "To"))

    @cached_property
    def call_id(self) -> str:
        return _required(self.headers, "Call-ID")

    @cached_property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(_required(self.headers, "CSeq"))

    @cached_property
    def expires(self) -> int | None:
        value = self.headers.get("Expires")
        return None if value is None else parse_delta(value, "Expires")

    @cached_property
    def contacts(self) -> list[NameAddr] | str:
        """The Contact list, or the string ``"*"`` for a wildcard Contact."""
        values = self.headers.values("Contact")
        if any(v == "*" for v in values):
            return "*"
        return [parse_name_addr(v) for v in values]


@dataclass(eq=True)
class Request(_Message):
    method: str = "OPTIONS"
    uri: URI = field(default_factory=lambda: parse_uri("sip:invalid"))
    version: str = SIP_VERSION

    def __bytes__(self) -> bytes:
        return self._serialise(f"{self.method} {self.uri.raw or self.uri} {self.version}")

    def stamp_source(self, host: str, port: int) -> None:
        """RFC 3261 §18.2.1 / RFC 3581: note the packet's source in the top Via."""
        fields = self.headers.get_all("Via")
        if not fields:
            return
        top, *rest = split_values(fields[0])
        via = parse_via(top)
        params = list(via.params)
        changed = False
        if via.host.strip("[]") != host:
            params = [(n, v) for n, v in params if n.lower() != "received"] + [("received", host)]
            changed = True
        if any(n.lower() == "rport" and not v for n, v in params):
            params = [(n, str(port) if n.lower() == "rport" else v) for n, v in params]
            if not changed:
                params = [(n, v) for n, v in params if n.lower() != "received"] + [("received", host)]
            changed = True
        if not changed:
            return
        stamped = Via(via.transport, via.host, via.port, tuple(params))
        new_first = ", ".join([str(stamped), *rest])
        replaced = False
        new_fields: list[tuple[str, str]] = []
        for n, v in self.headers:
            if not replaced and n == "Via":
                new_fields.append((n, new_first))
                replaced = True
            else:
                new_fields.append((n, v))
        self.headers._fields = new_fields
        self.__dict__.pop("vias", None)


@dataclass(eq=True)
class Response(_Message):
    status: int = 200
    reason: str = "OK"
    version: str = SIP_VERSION

    def __bytes__(self) -> bytes:
        return self._serialise(f"{self.version} {self.status} {self.reason}")


Message = Request | Response


def _required(headers: Headers, name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise SipError(400, f"Missing {name}")
    return value


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4 :]
    end = data.find(b"\n\n")
    if end >= 0:
        return data[:end], data[end + 2 :]
    return data.rstrip(b"\r\n"), b""


def _header_fields(lines: list[str], limits: Limits) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not fields:
                raise SipError(400, "Continuation line before any header")
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not is_token(name):
            raise SipError(400, "Malformed header line")
        fields.append((canonical_name(name), value.strip(" \t")))
    if len(fields) > limits.max_headers:
        raise SipError(400, "Too many headers")
    return fields


def content_length(values: list[str]) -> int | None:
    """The one Content-Length of a message; a bad or conflicting one cannot be framed."""
    if not values:
        return None
    if any(not v.strip().isdigit() for v in values):
        raise SipError(400, "Invalid Content-Length", drop=True)
    numbers = {int(v) for v in values}
    if len(numbers) > 1:
        raise SipError(400, "Conflicting Content-Length", drop=True)
    return numbers.pop()


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse one whole message (a UDP datagram, or one message framed from a stream).

    Raises SipError, and nothing else, for any input that is not a usable message.
    """
    try:
        return _parse(data, limits)
    except SipError:
        raise
    except Exception as exc:  # the parser's contract: only SipError escapes
        raise SipError(400, f"Unparseable message ({type(exc).__name__})") from exc


def _parse(data: bytes, limits: Limits) -> Message:
    if len(data) > limits.max_message_size:
        raise SipError(513, "Message Too Large")
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipError(400, "Empty message", drop=True)
    head_bytes, body = _split_head(data)
    if len(head_bytes) > limits.max_header_block:
        raise SipError(513, "Message Too Large")
    head = head_bytes.decode("utf-8", "surrogateescape")
    lines = head.split("\r\n") if "\r\n" in head else head.split("\n")
    if len(lines) > limits.max_headers * 2:
        raise SipError(400, "Too many headers")
    if any(len(line) > limits.max_line_length for line in lines):
        raise SipError(400, "Line too long")
    start, fields = lines[0], _header_fields(lines[1:], limits)
    headers = Headers()
    headers._fields = fields
    length = content_length(headers.get_all("Content-Length"))
    if length is not None:
        if length > len(body):
            raise SipError(400, "Content-Length larger than the message")
        body = body[:length]
    if start.startswith("SIP/"):
        return _parse_response(start, headers, body)
    return _parse_request(start, headers, body)


def _parse_request(start: str, headers: Headers, body: bytes) -> Request:
    parts = start.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipError(400, "Malformed request line")
    method, uri_text, version = parts
    if not is_token(method):
        raise SipError(400, "Malformed method")
    if version.upper() != SIP_VERSION:
        if _VERSION.match(version):
            raise SipError(505, "Version Not Supported")
        raise SipError(400, "Malformed SIP version")
    request = Request(headers, body, method=method, uri=parse_uri(uri_text))
    _validate_common(request, headers)
    if request.cseq[1] != method:
        raise SipError(400, "CSeq method does not match the request")
    max_forwards = headers.get("Max-Forwards")
    if max_forwards is not None and not max_forwards.isdigit():
        raise SipError(400, "Malformed Max-Forwards")
    _ = request.expires
    return request


def _parse_response(start: str, headers: Headers, body: bytes) -> Response:
    version, _, rest = start.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != SIP_VERSION or len(code) != 3 or not code.isdigit():
        raise SipError(400, "Malformed status line", drop=True)
    status = int(code)
    if not 100 <= status <= 699:
        raise SipError(400, "Status code out of range", drop=True)
    response = Response(headers, body, status=status, reason=reason)
    try:
        _validate_common(response, headers)
    except SipError as exc:
        raise SipError(exc.status, exc.reason, drop=True) from None
    return response


def _validate_common(message: _Message, headers: Headers) -> None:
    for name in _SINGLE:
        if len(headers.get_all(name)) > 1:
            raise SipError(400, f"Duplicate {canonical_name(name)}")
    if not message.vias:
        raise SipError(400, "Missing Via")
    _ = message.from_, message.to, message.call_id, message.cseq


def build_response(
    request: Request,
    status: int,
    reason: str,
    headers: list[tuple[str, str]] | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
) -> Response:
    """A response to ``request``: Via, From, To, Call-ID and CSeq copied (RFC 3261 §8.2.6)."""
    fields: list[tuple[str, str]] = [("Via", v) for v in request.headers.get_all("Via")]
    fields.append(("From", request.headers.get("From") or ""))
    to = request.headers.get("To") or ""
    if to_tag and status > 100 and request.to.tag is None:
        to = f"{to};tag={to_tag}"
    fields.append(("To", to))
    fields.append(("Call-ID", request.call_id))
    fields.append(("CSeq", request.headers.get("CSeq") or ""))
    fields.extend(headers or ())
    fields.append(("Content-Length", str(len(body))))
    response = Response(Headers(), body, status=status, reason=reason)
    response.headers._fields = fields
    return response


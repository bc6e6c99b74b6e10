"""SIP requests and responses: parse from bytes, serialise to bytes (RFC 3261 §7, §25).

Sans-IO in the h11 style: bytes in, objects out, no sockets. The parser validates
what every request needs (start line, Via, From, To, Call-ID, CSeq, Content-Length)
once, at parse time, and caches the parsed values on the message.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from typing import Final

from mypy_extensions import i64

from .errors import SipError
from .headers import (
    COMPACT_FORMS,
    NameAddr,
    Via,
    is_digits,
    is_token,
    parse_cseq,
    parse_delta,
    parse_name_addr,
    parse_via,
    split_values,
)
from .limits import DEFAULT_LIMITS, Limits
from .uri import URI, SipURI, digits_value, parse_uri

SIP_VERSION: Final = "SIP/2.0"
_OK: Final = f"{SIP_VERSION} 200 OK"
_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+\Z", re.IGNORECASE)
_SINGLE: Final = ("to", "from", "call-id", "cseq", "max-forwards", "expires", "content-type")
# Lower-case name (or compact letter) -> conventional spelling of the full name.
_NAMES: Final[dict[str, str]] = {
    name.lower(): name
    for name in (
        *COMPACT_FORMS.values(),
        "Via", "Max-Forwards", "CSeq", "Call-ID", "Expires", "Min-Expires", "Contact", "Path",
        "Require", "Proxy-Require", "Unsupported", "Supported", "Allow", "User-Agent", "Server",
        "Date", "Retry-After", "WWW-Authenticate", "Authorization", "Record-Route", "Route",
        "Service-Route", "Flow-Timer", "Accept", "Warning", "P-Registrar-Error",
    )
} | COMPACT_FORMS
# The usual spellings of the names above (conventional, lower- and upper-case, compact)
# -> (canonical name, lookup key): no str.lower() for them; others go through _NAMES.
_SPELLINGS: Final[dict[str, tuple[str, str]]] = {
    spelling: (_NAMES[spelling.lower()], _NAMES[spelling.lower()].lower())
    for name in _NAMES
    for spelling in (name, name.upper(), _NAMES[name])
}
_KEYS: Final[dict[str, str]] = {spelling: key for spelling, (_, key) in _SPELLINGS.items()}
_SHAPE_LENGTH: Final = 32  # names of the usual spellings are shorter


def _shapes() -> list[tuple[tuple[str, str, str], ...]]:
    """The usual spellings by shape, ``len(name) * 128 + ord(first character)``: (spelling,
    canonical name, lookup key) for each. A header line finds its name among the one or two of
    its shape with ``startswith``, with no string made and hashed per line (compiled, the name's
    slice, its hash and the dict look-up were about 500 instructions a line)."""
    table: list[list[tuple[str, str, str]]] = [[] for _ in range(_SHAPE_LENGTH * 128)]
    for spelling, (name, key) in _SPELLINGS.items():
        if len(spelling) < _SHAPE_LENGTH and spelling.isascii():
            table[len(spelling) * 128 + ord(spelling[0])].append((spelling, name, key))
    return [tuple(sorted(entries, key=lambda entry: entry[0] != entry[1])) for entries in table]  # as usual first


_SHAPES: Final = _shapes()


def canonical_name(name: str) -> str:
    """Full, conventionally spelled header name (compact forms expanded)."""
    known = _SPELLINGS.get(name)
    return known[0] if known is not None else _NAMES.get(name.lower(), name)


def _key(name: str) -> str:
    """The lookup key of a header name: its full name, lower-cased."""
    return _KEYS.get(name) or canonical_name(name).lower()


class Headers:
    """Ordered header fields with case-insensitive lookup by full name.

    Names are stored in their canonical spelling (compact forms expanded); values
    as received, unfolded. Lookups go through an index built on first use (the parser builds
    it as it splits): lookup key -> the value of a name that comes once (nearly every name of a
    message), or the list of its values when it is repeated. A list only for a repeated name:
    compiled, a list per name made, filled and freed was about 2,000 instructions a REGISTER.
    """

    __slots__ = ("_fields", "_index")

    def __init__(self, fields: Iterable[tuple[str, str]] | None = None,
                 canonical: list[tuple[str, str]] | None = None,
                 index: dict[str, str | list[str]] | None = None) -> None:
        """``fields`` (any spelling), or ``canonical``: fields already spelled canonically, kept
        as they are (:meth:`_canonical`), with their ``index`` when made."""
        if canonical is not None:
            self._fields: list[tuple[str, str]] = canonical
        else:
            self._fields = [] if fields is None else [(canonical_name(n), v) for n, v in fields]
        self._index: dict[str, str | list[str]] | None = index

    @staticmethod
    def _canonical(fields: list[tuple[str, str]], index: dict[str, str | list[str]] | None = None) -> Headers:
        """Wrap fields whose names are already canonical (the parser's fast path)."""
        return Headers(None, fields, index)  # compiled, a native call (cls(...): a generic one)

    def _lookup(self) -> dict[str, str | list[str]]:
        index = self._index
        if index is None:
            index = {}
            for n, v in self._fields:
                _indexed(index, n.lower(), v)
            self._index = index
        return index

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._fields == other._fields

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"

    def found(self, key: str) -> str | list[str] | None:
        """The field value by lookup key (a name that comes once), or the list of its values
        (a repeated name: the index's own list, not a copy), or None."""
        index = self._index if self._index is not None else self._lookup()
        return index.get(key)

    def get(self, name: str) -> str | None:
        """The first value of ``name`` (any spelling or compact form), or None."""
        return self.first(_key(name))

    def first(self, key: str) -> str | None:
        """:meth:`get` by lookup key (the full name, lower-cased: "user-agent"): the hot path's
        callers name a constant header, so the spelling's own look-up is left out. The index
        read here, not through :meth:`found`: a dozen calls a REGISTER, a native call less each."""
        index = self._index if self._index is not None else self._lookup()
        values = index.get(key)
        if values is None or isinstance(values, str):
            return values
        return values[0]

    def get_all(self, name: str) -> list[str]:
        """Every field value of ``name``, as written (not comma-split)."""
        values = self.found(_key(name))
        if values is None:
            return []
        return [values] if isinstance(values, str) else list(values)

    def values(self, name: str) -> list[str]:
        """The list elements of ``name`` across all its fields, comma-split."""
        return self.listed(_key(name))

    def listed(self, key: str) -> list[str]:
        """:meth:`values` by lookup key (see :meth:`first`)."""
        values = self.found(key)
        if values is None:
            return []
        if isinstance(values, str):
            return split_values(values)
        out: list[str] = []
        for value in values:
            out.extend(split_values(value))
        return out

    def add(self, name: str, value: str) -> None:
        self._fields.append((canonical_name(name), value))
        self._index = None

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` field by one, appended at the end."""
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        key = _key(name)
        self._fields = [(n, v) for n, v in self._fields if n.lower() != key]
        self._index = None

    def replace_first(self, name: str, value: str) -> None:
        """Give the first ``name`` field a new value, in place (no-op when absent)."""
        key = _key(name)
        for i, (n, _) in enumerate(self._fields):
            if n == name or n.lower() == key:  # as named (a canonical name: no lower-cased copy), else any case
                self._fields[i] = (n, value)
                index = self._index
                if index is not None:  # the first field of ``key`` is its first value
                    values = index[key]
                    if isinstance(values, str):
                        index[key] = value
                    else:
                        values[0] = value
                return

    def copy(self) -> Headers:
        return Headers._canonical(list(self._fields))


class _Message:
    """What requests and responses share: the header fields, the body, and the parsed views of
    the headers every message carries, computed once (the parser sets them as it validates).

    A native class (compiled, setup.py) with the views in optional attributes, read through
    properties: no per-message ``__dict__``, and every read a native call where a cached
    descriptor of a non-native class was a generic one (about 500 instructions)."""

    __slots__ = ("headers", "body", "_vias", "_from", "_to", "_call_id", "_cseq", "_expires", "_expires_read",
                 "_contacts")
    headers: Headers
    body: bytes
    _vias: list[Via] | None
    _from: NameAddr | None
    _to: NameAddr | None
    _call_id: str | None
    _cseq: tuple[int, str] | None
    _expires: int | None
    _expires_read: bool
    _contacts: list[NameAddr] | str | None

    def __init__(self, headers: Headers, body: bytes) -> None:
        self.headers = headers
        self.body = body
        self._vias = None
        self._from = None
        self._to = None
        self._call_id = None
        self._cseq = None
        self._expires = None
        self._expires_read = False
        self._contacts = None

    @property
    def vias(self) -> list[Via]:
        vias = self._vias
        if vias is None:
            vias = self._vias = _vias(self.headers)
        return vias

    @property
    def from_(self) -> NameAddr:
        from_ = self._from
        if from_ is None:
            from_ = self._from = _from(self.headers)
        return from_

    @property
    def to(self) -> NameAddr:
        to = self._to
        if to is None:
            to = self._to = _to(self.headers)
        return to

    @property
    def call_id(self) -> str:
        call_id = self._call_id
        if call_id is None:
            call_id = self._call_id = _call_id(self.headers)
        return call_id

    @property
    def cseq(self) -> tuple[int, str]:
        cseq = self._cseq
        if cseq is None:
            cseq = self._cseq = _cseq(self.headers)
        return cseq

    @property
    def expires(self) -> int | None:
        if not self._expires_read:
            value = self.headers.first("expires")
            self._expires = None if value is None else parse_delta(value, "Expires")
            self._expires_read = True
        return self._expires

    @property
    def contacts(self) -> list[NameAddr] | str:
        """The Contact list, or the string ``"*"`` for a wildcard Contact.

        A ``*`` mixed with other contacts is a 400 (RFC 3261 §10.3 step 6).
        """
        contacts = self._contacts
        if contacts is None:
            values = self.headers.listed("contact")
            if "*" in values:
                if len(values) > 1:
                    raise SipError(400, "Wildcard Contact must stand alone")
                contacts = "*"
            else:
                contacts = [parse_name_addr(v) for v in values]
            self._contacts = contacts
        return contacts


class Request(_Message):
    __slots__ = ("method", "uri", "version")
    method: str
    uri: URI
    version: str

    def __init__(self, headers: Headers, body: bytes, method: str = "OPTIONS", uri: URI | None = None,
                 version: str = SIP_VERSION) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = parse_uri("sip:invalid") if uri is None else uri
        self.version = version

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Request) and type(other) is type(self) and self.headers == other.headers
                and self.body == other.body and self.method == other.method and self.uri == other.uri
                and self.version == other.version)

    def __repr__(self) -> str:
        return (f"Request(headers={self.headers!r}, body={self.body!r}, method={self.method!r}, "
                f"uri={self.uri!r}, version={self.version!r})")

    def __bytes__(self) -> bytes:
        return serialise(f"{self.method} {self.uri.raw or self.uri} {self.version}", self.headers._fields, self.body)

    def stamp_source(self, host: str, port: int) -> bool:
        """Note the packet's source address in the top Via.

        ``received`` is added when the sent-by is not that address (RFC 3261 §18.2.1);
        an empty ``rport`` gets the source port, and then ``received`` always (RFC 3581 §4).
        True when it filled an ``rport``: the response then goes to (``host``, ``port``), which
        the caller has at hand without reading the Via's parameters back (RFC 3581 §4).
        """
        first = self.headers.first("via")
        if first is None:
            return False
        vias = self.vias  # parsed once, at parse time
        via = vias[0]
        usual = _stamped_rport(via, first, host, port)
        if usual is not None:  # the usual shape, as a phone or sipp writes it
            usual_via, usual_text = usual
            self.headers.replace_first("Via", usual_text)
            self._vias = [usual_via, *vias[1:]]
            return True
        fill_rport = ("rport", None) in via.params or any(  # the usual spelling, else any
            not v and n.lower() == "rport" for n, v in via.params
        )
        if not fill_rport and _same_address(via.host, host):
            return False
        params: list[tuple[str, str | None]] = []
        for n, v in via.params:
            name = n.lower()
            if name != "received":
                params.append((n, str(port) if fill_rport and name == "rport" else v))
        params.append(("received", host))
        stamped = Via(via.transport, via.host, via.port, tuple(params))
        text = str(stamped)
        if "," in first:  # other Vias share the field: keep them as written
            text = ", ".join([text, *split_values(first)[1:]])
        self.headers.replace_first("Via", text)
        self._vias = [stamped, *vias[1:]]
        return fill_rport


def serialise(start_line: str, fields: list[tuple[str, str]], body: bytes) -> bytes:
    """A message's bytes from its start line, header fields and body: a function over the
    fields, not a method, because the 401 to a REGISTER without credentials writes its fields
    with it and makes no Response (pipeline.py); requests and responses call it too."""
    # One join over the parts: no string per header line made only to be copied again. The
    # list is made at its size, CRLFs in place, and filled by index (compiled, a native
    # store): appending its 4 parts per field cost a call each and the list's regrowth.
    parts = ["\r\n"] * (4 * len(fields) + 2)
    parts[0] = start_line
    i: i64 = 2  # native: the stores' index checks and the steps are C, not tagged
    for name, value in fields:
        parts[i] = name
        parts[i + 1] = ": "
        parts[i + 2] = value
        i += 4
    parts[i - 1] = "\r\n\r\n"
    head = "".join(parts).encode("utf-8", "surrogateescape")
    return head + body if body else head


def _stamped_rport(via: Via, text: str, host: str, port: int) -> tuple[Via, str] | None:
    """:meth:`Request.stamp_source` for the usual Via, one field written ``...;rport`` (empty,
    last) with no ``received``: both values appended to the text as the UA wrote it (the
    response's Via equals the request's, RFC 3261 §8.2.6.2), where the general path writes the
    stamped Via out again (the same text for a Via written as usual; 1.1-1.3 us compiled).
    None for any other shape."""
    params = via.params
    if not params or "," in text or not text.endswith(";rport"):
        return None
    last = params[-1]
    if last[0] != "rport" or last[1] is not None:
        return None
    rports = 0  # the general path fills every rport: a second one (any case) goes there
    for name, _ in params:
        if len(name) == 8 and name.lower() == "received":
            return None
        if len(name) == 5 and (name == "rport" or name.lower() == "rport"):
            rports += 1
    if rports != 1:
        return None
    value = str(port)
    stamped = Via(via.transport, via.host, via.port, params[:-1] + (("rport", value), ("received", host)))
    return stamped, f"{text}={value};received={host}"


def _same_address(sent_by: str, source: str) -> bool:
    """True when the Via sent-by is the source IP address (any spelling of it)."""
    if sent_by.strip("[]") == source:
        return True
    try:
        return ipaddress.ip_address(sent_by.strip("[]")) == ipaddress.ip_address(source)
    except ValueError:
        return False  # a host name: RFC 3261 §18.2.1 always adds received


class Response(_Message):
    __slots__ = ("status", "reason", "version")
    status: int
    reason: str
    version: str

    def __init__(self, headers: Headers, body: bytes, status: int = 200, reason: str = "OK",
                 version: str = SIP_VERSION) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason
        self.version = version

    def __bytes__(self) -> bytes:
        return self.serialised()

    def serialised(self) -> bytes:
        """bytes(response) as a method: compiled, a native call, where bytes() looks the special
        method up on the type and calls it through its wrapper (about 1,000 instructions)."""
        if self.status == 200 and self.reason == "OK" and self.version == SIP_VERSION:
            start = _OK  # most responses: no status code formatted, no line built
        else:
            start = f"{self.version} {self.status} {self.reason}"
        return serialise(start, self.headers._fields, self.body)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Response) and type(other) is type(self) and self.headers == other.headers
                and self.body == other.body and self.status == other.status and self.reason == other.reason
                and self.version == other.version)

    def __repr__(self) -> str:
        return (f"Response(headers={self.headers!r}, body={self.body!r}, status={self.status!r}, "
                f"reason={self.reason!r}, version={self.version!r})")


Message = Request | Response


def _required(headers: Headers, key: str, name: str) -> str:
    """The first value of a header every message needs (by lookup key), else a 400 naming it."""
    value = headers.first(key)
    if value is None:
        raise SipError(400, f"Missing {name}")
    return value


def _split_head(data: bytes, limits: Limits) -> tuple[str, bytes]:
    """The head (decoded, the CRLFs before it dropped) and the body of a message. An ASCII message,
    the usual one, is decoded whole and cut with str methods, whose offsets are then the bytes'
    (compiled, str.find and str.lstrip are primitives, bytes.find and bytes.lstrip generic method
    calls: about 2,200 instructions a message); any other is cut as bytes first."""
    text = data.decode("utf-8", "surrogateescape")
    if len(text) != len(data):
        return _split_head_bytes(data, limits)
    start = len(text) - len(text.lstrip("\r\n"))
    if start == len(text):
        raise SipError(400, "Empty message", drop=True)
    end = text.find("\r\n\r\n", start)
    if end >= 0:
        head, body = text[start:end], data[end + 4 :]
    else:
        end = text.find("\n\n", start)
        if end >= 0:
            head, body = text[start:end], data[end + 2 :]
        else:
            head, body = text[start:].rstrip("\r\n"), b""
    if len(head) > limits.max_header_block:
        raise SipError(513, "Message Too Large")
    return head, body


def _split_head_bytes(data: bytes, limits: Limits) -> tuple[str, bytes]:
    """:func:`_split_head` for a message with bytes beyond ASCII."""
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipError(400, "Empty message", drop=True)
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        head, body = data[:end], data[end + 4 :]
    else:
        end = data.find(b"\n\n")
        if end >= 0:
            head, body = data[:end], data[end + 2 :]
        else:
            head, body = data.rstrip(b"\r\n"), b""
    if len(head) > limits.max_header_block:
        raise SipError(513, "Message Too Large")
    return head.decode("utf-8", "surrogateescape"), body


def _header_fields(lines: list[str], limits: Limits) -> Headers:
    """Header lines to Headers (canonical names, folded lines joined, RFC 3261 §7.3.1),
    with the lookup index built in the same pass."""
    fields: list[tuple[str, str]] = []
    index: dict[str, str | list[str]] = {}
    for line in lines:
        colon: i64 = line.find(":")  # the indices native (i64): no tagged checks a character
        name = key = ""
        if 0 < colon < _SHAPE_LENGTH and ord(line[0]) < 128:
            for spelling, canonical, lookup in _SHAPES[colon * 128 + ord(line[0])]:
                if line.startswith(spelling):  # of the shape: line[:colon] == spelling
                    name, key = canonical, lookup
                    break
        if not name:
            if line[:1] in (" ", "\t"):
                _unfold(line, fields, index)
                continue
            name, key = _field_name(line)
        # The value without the blanks around it, sliced once (compiled, line[i] is a native read).
        start: i64 = colon + 1
        end: i64 = len(line)
        while start < end and (line[start] == " " or line[start] == "\t"):
            start += 1
        while end > start and (line[end - 1] == " " or line[end - 1] == "\t"):
            end -= 1
        value = line[start:end]
        fields.append((name, value))
        _indexed(index, key, value)
    if len(fields) > limits.max_headers:
        raise SipError(400, "Too many headers")
    return Headers._canonical(fields, index)


def _field_name(line: str) -> tuple[str, str]:
    """(canonical name, lookup key) of a header line not spelled as usual."""
    colon = line.find(":")
    name = line[:colon].rstrip(" \t")
    known = _NAMES.get(name.lower()) if colon > 0 else None
    if known is None:
        if colon <= 0 or not is_token(name):
            raise SipError(400, "Malformed header line")
        known = name
    return known, known.lower()


def _unfold(line: str, fields: list[tuple[str, str]], index: dict[str, str | list[str]]) -> None:
    """Join a continuation line to the field before it, in ``fields`` and ``index``."""
    if not fields:
        raise SipError(400, "Continuation line before any header")
    name, value = fields[-1]
    value = (value + " " + line.strip(" \t")).strip(" \t")
    fields[-1] = (name, value)
    key = name.lower()
    values = index[key]
    if isinstance(values, str):
        index[key] = value
    else:
        values[-1] = value


def _indexed(index: dict[str, str | list[str]], key: str, value: str) -> None:
    """Add a field's value to a header index (see :class:`Headers`). One probe of the dict for
    a name's first field (nearly every field): setdefault, and the index's size tells whether
    it was there (not identity: equal short values can be one cached string)."""
    size = len(index)
    values = index.setdefault(key, value)
    if len(index) != size:
        return
    if isinstance(values, str):
        index[key] = [values, value]
    else:
        values.append(value)


def content_length(values: str | list[str] | None) -> int | None:
    """The one Content-Length of a message (its field's value, or its fields' values; None:
    none); a bad or conflicting one cannot be framed."""
    if values is None or isinstance(values, str):  # the usual case: no set of the values
        return None if values is None else _length(values)
    if not values:
        return None
    if len(values) == 1:
        return _length(values[0])
    numbers = {_length(value) for value in values}
    if len(numbers) > 1:
        raise SipError(400, "Conflicting Content-Length", drop=True)
    return numbers.pop()


def _length(value: str) -> int:
    """One Content-Length value. Blanks stripped only when there are some, leading zeros only
    from a long one: compiled, a strip with characters is about 370 instructions."""
    if value[:1] in " \t\r" or value[-1:] in " \t\r":  # an empty one too
        value = value.strip(" \t\r")
    if not is_digits(value) or (len(value) > 10 and len(value.lstrip("0")) > 10):
        raise SipError(400, "Invalid Content-Length", drop=True)
    return digits_value(value)


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse one whole message (a UDP datagram, or one message framed from a stream).

    Raises SipError, and nothing else, for any input that is not a usable message: the head
    split by :func:`parse_head`, the rest by :func:`parse_parsed_head`, each keeping that contract.
    """
    return parse_parsed_head(parse_head(data, limits))


def parse_parsed_head(head: tuple[str, Headers, bytes]) -> Message:
    """:func:`parse_message` for a message whose head :func:`parse_head` has split already (a
    REGISTER the 401's minimal parse left to the full path): the head is split once."""
    try:
        return _message(head[0], head[1], head[2])
    except SipError:
        raise
    except Exception as exc:  # the parser's contract: only SipError escapes
        raise SipError(400, f"Unparseable message ({type(exc).__name__})") from exc


def parse_head(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[str, Headers, bytes]:
    """A message's start line, header fields and body (cut to its Content-Length), checked
    against ``limits`` and nothing more: for a caller that validates only what it uses and
    hands anything else to :func:`parse_parsed_head` (the 401 to a REGISTER without
    credentials, pipeline.py). Raises SipError, and nothing else."""
    try:
        return _head(data, limits)
    except SipError:
        raise
    except Exception as exc:  # parse_message's contract
        raise SipError(400, f"Unparseable message ({type(exc).__name__})") from exc


def _head(data: bytes, limits: Limits) -> tuple[str, Headers, bytes]:
    if len(data) > limits.max_message_size:
        raise SipError(513, "Message Too Large")
    head, body = _split_head(data, limits)
    lines = head.split("\r\n") if "\r\n" in head else head.split("\n")
    if len(lines) > limits.max_headers * 2:
        raise SipError(400, "Too many headers")
    # A line is never longer than the whole head, so short heads skip the scan.
    if len(head) > limits.max_line_length and max(map(len, lines)) > limits.max_line_length:
        raise SipError(400, "Line too long")
    headers = _header_fields(lines[1:], limits)
    length = content_length(headers.found("content-length"))
    if length is not None:
        if length > len(body):
            raise SipError(400, "Content-Length larger than the message")
        body = body[:length]
    return lines[0], headers, body


def _message(start: str, headers: Headers, body: bytes) -> Message:
    if start.startswith("SIP/"):
        return _parse_response(start, headers, body)
    return _parse_request(start, headers, body)


# REGISTER request lines already parsed, by their text. A registrar's REGISTERs name its domain
# (RFC 3261 §10.2: no user part), so their request lines are a handful, written the same by every
# UA of a domain, and a URI is a value (never mutated): the method and URI parsed from one are
# shared by every REGISTER that writes it so (the split, the method's and version's checks and
# the URI's parse: about 5,000 instructions, compiled). Only lines that parsed are kept; other
# methods are not (an OPTIONS or INVITE names a user); bounded, started afresh when full.
_REGISTER_LINES: Final[dict[str, tuple[str, URI]]] = {}
_REGISTER_LINES_MAX: Final = 256


def parse_request_line(start: str) -> tuple[str, URI]:
    """The method and Request-URI of a request line; raises SipError (400, 505) otherwise."""
    known = _REGISTER_LINES.get(start)
    if known is not None:
        return known
    parts = start.split(" ")
    if len(parts) != 3 or "" in parts:  # compiled, "in" a C call; all() a generic one (800 instructions)
        raise SipError(400, "Malformed request line")
    method, uri_text, version = parts
    if not is_token(method):
        raise SipError(400, "Malformed method")
    if version.upper() != SIP_VERSION:
        if _VERSION.match(version):
            raise SipError(505, "Version Not Supported")
        raise SipError(400, "Malformed SIP version")
    uri = parse_uri(uri_text)
    if isinstance(uri, SipURI) and uri.headers is not None:
        raise SipError(400, "Headers are not allowed in a Request-URI")  # RFC 3261 §19.1.1
    if method != "REGISTER":
        return method, uri
    if len(_REGISTER_LINES) >= _REGISTER_LINES_MAX:
        _REGISTER_LINES.clear()
    parsed = _REGISTER_LINES[start] = (method, uri)
    return parsed


def _parse_request(start: str, headers: Headers, body: bytes) -> Request:
    method, uri = parse_request_line(start)
    request = Request(headers, body, method, uri)
    _validate_common(request, headers)
    if request.cseq[1] != method:
        raise SipError(400, "CSeq method does not match the request")
    max_forwards = headers.first("max-forwards")
    if max_forwards is not None and not is_digits(max_forwards):
        raise SipError(400, "Malformed Max-Forwards")
    _ = request.expires
    return request


def _parse_response(start: str, headers: Headers, body: bytes) -> Response:
    version, _, rest = start.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != SIP_VERSION or len(code) != 3 or not is_digits(code):
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
    index = headers._lookup()
    if len(index) < len(headers):  # some name is repeated
        for name in _SINGLE:
            if isinstance(index.get(name), list):
                raise SipError(400, f"Duplicate {canonical_name(name)}")
    # The parsed views, set as they are validated.
    vias = _vias(headers)
    if not vias:
        raise SipError(400, "Missing Via")
    if has_empty(index["via"]):
        raise SipError(400, "Empty Via")
    message._vias = vias
    from_ = _from(headers)  # From first: its errors before To's
    message._from = from_
    # To shares From's parsed URI when written the same (a REGISTER's usual case; URIs are values).
    message._to = _to(headers, from_.uri)
    message._call_id = _call_id(headers)
    message._cseq = _cseq(headers)


def _vias(headers: Headers) -> list[Via]:
    return [parse_via(v) for v in headers.listed("via")]


def _from(headers: Headers) -> NameAddr:
    return parse_name_addr(_required(headers, "from", "From"))


def _to(headers: Headers, like: URI | None = None) -> NameAddr:
    return parse_name_addr(_required(headers, "to", "To"), like)


def _call_id(headers: Headers) -> str:
    return _required(headers, "call-id", "Call-ID")


def _cseq(headers: Headers) -> tuple[int, str]:
    return parse_cseq(_required(headers, "cseq", "CSeq"))


def response_head(request: Request, to_tag: str | None = None) -> list[tuple[str, str]]:
    """The fields every response to ``request`` copies from it (RFC 3261 §8.2.6): Via, From,
    To (with ``to_tag`` added unless it has a tag already), Call-ID and CSeq.

    Kept apart from the request, they let a response be built once the request is gone
    (a REGISTER waiting for its group commit holds these few strings, not the message).
    """
    index = request.headers._lookup()  # by lookup key: no name spelling resolved per field
    to = _first(index, "to")
    if to_tag and request.to.tag is None:
        to = f"{to};tag={to_tag}"
    vias = index.get("via")
    if isinstance(vias, str):  # one Via field, the usual case: the list made whole, at its size
        return [("Via", vias), ("From", _first(index, "from")), ("To", to), ("Call-ID", request.call_id),
                ("CSeq", _first(index, "cseq"))]
    head = [("Via", v) for v in vias or ()]
    head.append(("From", _first(index, "from")))
    head.append(("To", to))
    head.append(("Call-ID", request.call_id))
    head.append(("CSeq", _first(index, "cseq")))
    return head


def _first(index: dict[str, str | list[str]], key: str) -> str:
    values = index.get(key)
    if values is None or isinstance(values, str):
        return values or ""
    return values[0]


def has_empty(values: str | list[str]) -> bool:
    """An index entry (see :class:`Headers`) holds an empty value."""
    return values == "" if isinstance(values, str) else "" in values


def response_from(
    head: list[tuple[str, str]],
    status: int,
    reason: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """A response made of a :func:`response_head`, ``headers`` and Content-Length."""
    fields = head.copy()
    if headers:
        for field in headers:  # a field already spelled canonically (the usual case) is kept as is
            name = field[0]
            canonical = canonical_name(name)
            fields.append(field if canonical == name else (canonical, field[1]))
    fields.append(("Content-Length", str(len(body))) if body else _NO_BODY)
    return Response(Headers._canonical(fields), body, status, reason)


_NO_BODY = ("Content-Length", "0")


def bodiless_response(fields: list[tuple[str, str]], status: int, reason: str) -> Response:
    """A response without a body of ``fields`` (a :func:`response_head`'s and the caller's,
    all spelled canonically: constants), Content-Length added, taken as they are: the 200 to
    a REGISTER, where :func:`response_from` would check every name's spelling and copy."""
    fields.append(_NO_BODY)
    return Response(Headers._canonical(fields), b"", status, reason)


def build_response(
    request: Request,
    status: int,
    reason: str,
    headers: list[tuple[str, str]] | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
) -> Response:
    """A response to ``request``: Via, From, To, Call-ID and CSeq copied (RFC 3261 §8.2.6).

    ``to_tag`` is added to To unless the request's To already has a tag (or the
    status is 100, which never carries one); Content-Length is always set.
    """
    return response_from(response_head(request, to_tag if status > 100 else None), status, reason, headers, body)

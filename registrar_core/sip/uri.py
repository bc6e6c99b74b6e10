"""SIP, SIPS, TEL and absolute URIs (RFC 3261 §19.1, RFC 3966, RFC 5118).

A parsed URI keeps its original text in ``raw`` so that a stored contact is
returned byte-exact; ``str(uri)`` rebuilds the same text from the parts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from mypy_extensions import i64

from .errors import SipError

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_ESCAPE_BYTES = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Characters that may stand unescaped in the user part (RFC 3261 §25.1: unreserved / user-unreserved).
_USER_PLAIN = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,;?/"
)
# Never inside a URI: controls, whitespace, DEL, quotes and angle brackets.
_FORBIDDEN = re.compile(r'[\x00-\x20\x7f<>"]')

# Character classes of the parser's checks, one bit each, looked up by ord() for ASCII: a
# compiled loop reads a str's characters natively (mypyc), where a regular expression match
# costs a call, a match object and its groups (8 per REGISTER were 3.5 % of the server's CPU).
ALPHA: Final = 1
DIGIT: Final = 2
HOST: Final = 4  # hostname characters: letters, digits, "-", ".", "_"
USER: Final = 8  # the common URI's user part: not controls, space, DEL, < > " @ : ; ? %
PARAM: Final = 16  # the common URI's params: as USER but ":" and ";" allowed
TOKEN: Final = 32  # RFC 3261 §25.1 token
SPACE: Final = 64  # what str.isspace() says of an ASCII character
_ANY_NON_ASCII: Final = USER | PARAM  # the classes defined by what they leave out


def _class_table() -> bytes:
    classes = []
    for code in range(128):
        char = chr(code)
        bits = 0
        if char.isalpha():
            bits |= ALPHA | HOST | TOKEN
        if char.isdigit():
            bits |= DIGIT | HOST | TOKEN
        if char in "-._":
            bits |= HOST
        if char in "-.!%*_+`'~":
            bits |= TOKEN
        if code > 0x20 and code != 0x7F and char not in '<>"@?%':
            bits |= PARAM if char in ":;" else PARAM | USER
        if char.isspace():
            bits |= SPACE
        classes.append(bits)
    return bytes(classes)


_CLASSES: Final = _class_table()


# Interpreted (no compiler, SIPCONSOLE_PURE_PYTHON=1), a loop over characters is several bytecodes
# a character, where a regular expression of the class runs in C: :func:`all_of` over a hostname
# 0.92-0.98 -> 0.37-0.39 us, :func:`digits_value` of a port 0.41-0.43 -> 0.14 us (int()), side by
# side in one process. Compiled, the loops are a few instructions a character and a match or
# int() a generic call: they stay.
_INTERPRETED: Final = __file__.endswith(".py")
_MATCHERS: Final[dict[int, Callable[[str, int, int], object]]] = {}  # class -> its pattern's fullmatch


def _matcher(cls: int) -> Callable[[str, int, int], object]:
    """``fullmatch`` of a pattern of the characters of class ``cls`` (:data:`_CLASSES`, and any
    non-ASCII character for the classes that allow them), made on first use."""
    matcher = _MATCHERS.get(cls)
    if matcher is None:
        chars = "".join(re.escape(chr(code)) for code in range(128) if _CLASSES[code] & cls)
        beyond = "\x80-\U0010ffff" if cls & _ANY_NON_ASCII else ""
        matcher = _MATCHERS[cls] = re.compile(f"[{chars}{beyond}]*").fullmatch
    return matcher


def all_of(text: str, start: i64, end: i64, cls: i64) -> bool:
    """True when every character of ``text[start:end]`` is of class ``cls`` (True when empty).
    Compiled, the index, the character and the class are native integers (i64): with tagged
    ints each character cost a tagged check of the index, of the code and an ``&`` call."""
    if _INTERPRETED:
        return end <= start or _matcher(cls)(text, start, end) is not None
    table = _CLASSES
    for i in range(start, end):
        code: i64 = ord(text[i])
        if code < 128:
            if not table[code] & cls:
                return False
        elif not cls & _ANY_NON_ASCII:
            return False
    return True


def digits_value(digits: str) -> int:
    """The value of a string of ASCII digits, as the caller has checked it is: read digit by
    digit in a compiled loop, about 15 instructions a digit, where int() of a str is about 380
    (a port, the CSeq, Expires, Content-Length: five a REGISTER). Interpreted, int() (the same
    value for a string of ASCII digits)."""
    size: i64 = len(digits)
    if _INTERPRETED or size > 18:  # 18 digits fit a native int (i64) whatever they are
        return int(digits)
    value: i64 = 0
    for i in range(size):
        value = value * 10 + ord(digits[i]) - 48
    return value


def has_space(text: str, start: i64, end: i64) -> bool:
    """True when ``text[start:end]`` holds whitespace as str.isspace() (and a regex's ``\\s``) sees it."""
    table = _CLASSES
    for i in range(start, end):
        code: i64 = ord(text[i])
        if table[code] & SPACE if code < 128 else text[i].isspace():
            return True
    return False


def is_hostname(text: str, start: i64, end: i64) -> bool:
    """``text[start:end]`` is a hostname: letters, digits, "-", "." and "_", starting and ending
    with a letter or digit, one final "." allowed (RFC 3261 §25.1, "_" as seen in the wild)."""
    if end > start and text[end - 1] == ".":
        end -= 1
    if end <= start:
        return False
    first: i64 = ord(text[start])
    last: i64 = ord(text[end - 1])
    alnum: i64 = ALPHA | DIGIT
    if first >= 128 or last >= 128 or not _CLASSES[first] & alnum or not _CLASSES[last] & alnum:
        return False
    return all_of(text, start, end, HOST)


Params = tuple[tuple[str, str | None], ...]


def _bad(reason: str) -> SipError:
    return SipError(400, f"Bad URI: {reason}")


def _split_semicolons(text: str) -> list[str]:
    """Split on ``;`` outside quoted strings (a quoted param value may hold ``;``)."""
    if '"' not in text:
        return text.split(";")
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == ";" and not quoted:
            parts.append(text[start:i])
            start = i + 1
    if quoted:
        raise _bad("unbalanced quotes in a parameter")
    parts.append(text[start:])
    return parts


def parse_params(text: str) -> Params:
    """Split ``a=1;b;c=x`` into ((name, value|None), ...), names kept as written.

    LWS around ``;`` and ``=`` is dropped (RFC 3261 §25.1 SEMI, EQUAL).
    """
    if '"' in text:  # a quoted value may hold ";"
        return tuple([_param(part, 0, len(part)) for part in _split_semicolons(text)])
    params: list[tuple[str, str | None]] = []
    start = 0
    while True:  # sliced from the text by index: no string per part, no partition tuple
        semi = text.find(";", start)
        if semi < 0:
            params.append(_param(text, start, len(text)))
            return tuple(params)
        params.append(_param(text, start, semi))
        start = semi + 1


def _param(text: str, start: int, end: int) -> tuple[str, str | None]:
    """The parameter ``name[=value]`` written in ``text[start:end]``."""
    eq = text.find("=", start, end)
    name = text[start : end if eq < 0 else eq].strip()
    if not name:
        raise _bad("empty parameter" if eq < 0 else "parameter without a name")
    return name, None if eq < 0 else text[eq + 1 : end].strip()


def format_params(params: Params) -> str:
    return "".join([f";{n}" if v is None else f";{n}={v}" for n, v in params])


def param(params: Params, name: str) -> str | None:
    """The value of ``name`` (ASCII, any case: matched case-insensitively); "" for a flag, None
    when absent. A name as written (the usual case) matches without lower-casing, and one of
    another length cannot match (an ASCII name's lower case keeps its length): no string made
    per parameter (several a request: branch, rport, received, tag)."""
    for n, v in params:
        if n == name or (len(n) == len(name) and n.lower() == name.lower()):
            return "" if v is None else v
    return None


def unescape(text: str) -> bytes:
    """Percent-decode to bytes (a %00 stays a NUL byte, nothing is cut)."""
    raw = text.encode("utf-8", "surrogateescape")
    return _ESCAPE_BYTES.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def canonical_user(user: str) -> str:
    """One spelling per user part: escapes decoded, then re-escaped where required."""
    if "%" not in user and user.isascii():
        return user
    return "".join(
        chr(b) if chr(b) in _USER_PLAIN and b < 0x80 else f"%{b:02X}" for b in unescape(user)
    )


def parse_host(text: str) -> tuple[str, int | None]:
    """``host[:port]`` with IPv6 references in brackets; validates both parts."""
    if not text:
        raise _bad("missing host")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _bad("unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _bad("invalid IPv6 reference") from None
        if rest and not rest.startswith(":"):
            raise _bad("junk after IPv6 reference")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = None
        if not is_hostname(host, 0, len(host)):
            raise _bad("invalid host")
    if port_text is None:
        return host, None
    if not is_port(port_text, 0, len(port_text)) or int(port_text) > 65535:
        raise _bad("invalid port")
    return host, int(port_text)


@dataclass(slots=True, init=False, unsafe_hash=True)  # a value: never mutated; not frozen, for speed
class SipURI:
    """A sip:, sips: or tel: URI. ``user`` and ``headers`` keep their escapes."""

    scheme: str
    host: str
    user: str | None
    password: str | None
    port: int | None
    params: Params
    headers: str | None
    raw: str = field(compare=False)

    def __init__(self, scheme: str, host: str, user: str | None = None, password: str | None = None,
                 port: int | None = None, params: Params = (), headers: str | None = None,
                 raw: str = "") -> None:  # written out: compiled (setup.py)
        self.scheme = scheme
        self.host = host
        self.user = user
        self.password = password
        self.port = port
        self.params = params
        self.headers = headers
        self.raw = raw

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.host}{format_params(self.params)}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user
            if self.password is not None:
                userinfo += ":" + self.password
            userinfo += "@"
        port = f":{self.port}" if self.port is not None else ""
        headers = f"?{self.headers}" if self.headers is not None else ""
        return f"{self.scheme}:{userinfo}{self.host}{port}{format_params(self.params)}{headers}"

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.lower() if value else None

    @property
    def aor(self) -> str:
        """Canonical address-of-record: ``user@host`` (RFC 3261 §10.3 step 5).

        The host is lower-cased (an IPv6 reference also compressed), URI params and
        headers are dropped, and the user's escapes are normalised: ``%61lice`` is
        ``alice``, while characters that must stay escaped (``%00``) stay escaped.
        """
        host = self.host.lower()
        if host.startswith("["):
            try:
                host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
            except ValueError:
                pass  # built by hand, not parsed: leave it as written
        if self.user is None:
            return host
        return f"{canonical_user(self.user)}@{host}"


@dataclass(slots=True, unsafe_hash=True)
class AbsoluteURI:
    """Any other scheme (``isbn:``, ``http:``...), kept opaque."""

    scheme: str
    rest: str
    raw: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"

    @property
    def aor(self) -> str:
        return str(self)


URI = SipURI | AbsoluteURI


def is_port(text: str, start: i64, end: i64) -> bool:
    """One to five ASCII digits (the value is checked apart)."""
    return 0 < end - start <= 5 and all_of(text, start, end, DIGIT)


def sip_parts(text: str) -> tuple[str, str | None, str, str | None, str | None] | None:
    r"""(scheme, user, host, port, params) of the common ``sip[s]:[user@]hostname[:port][;params]``,
    or None for any other shape: what the regular expression
    ``(sips?):(?:([^\x00-\x20\x7f<>"@:;?%]+)@)?(hostname)(?::([0-9]{1,5}))?(?:;([^\x00-\x20\x7f<>"@?%]*))?\Z``
    matched (tests/test_sip_properties.py keeps it as the oracle). The user and params leave out
    what the general path treats specially (escapes, a password, a user part with ";" or "?", URI
    headers, IPv6), so a URI of this shape parses the same both ways."""
    if text.startswith("sip:"):
        scheme, start = "sip", 4
    elif text.startswith("sips:"):
        scheme, start = "sips", 5
    else:
        return None
    user: str | None = None
    at = text.find("@", start)
    if at >= 0:  # no class after the user part has "@": it ends at the first one
        user = text[start:at]
        if not user or not (user.isalnum() or all_of(user, 0, len(user), USER)):  # letters and digits all are
            return None
        start = at + 1
    host = host_port(text, start)
    if host is None:
        return None
    host_end, semi, port = host
    params: str | None = None
    if semi >= 0:
        if not all_of(text, semi + 1, len(text), PARAM):
            return None
        params = text[semi + 1 :]
    return scheme, user, text[start:host_end], port, params


def host_port(text: str, start: int) -> tuple[int, int, str | None] | None:
    """(where the host ends, the first ";" or -1, the port) of ``hostname[:port]`` from ``start``
    up to the first ";", or None when the host name or the port is malformed: the part the
    common URI and the common Via share."""
    semi = text.find(";", start)
    host_end = len(text) if semi < 0 else semi
    colon = text.find(":", start, host_end)
    port: str | None = None
    if colon >= 0:
        if not is_port(text, colon + 1, host_end):
            return None
        port = text[colon + 1 : host_end]
        host_end = colon
    if not is_hostname(text, start, host_end):
        return None
    return host_end, semi, port


def parse_uri(text: str) -> URI:
    """Parse a URI; raises SipError(400) on anything malformed."""
    common = sip_parts(text)
    if common is not None:
        scheme, user, host, port_text, params = common
        port = None if port_text is None else digits_value(port_text)  # is_port checked it
        if port is None or port <= 65535:  # else the general path says why not
            parsed = () if params is None else parse_params(params)
            return SipURI(scheme, host, user, None, port, parsed, None, text)
    if not text or _FORBIDDEN.search(text):
        raise _bad("empty or contains whitespace, controls, quotes or angle brackets")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.match(scheme) or not rest:
        raise _bad("no scheme")
    if "%" in rest and _BAD_ESCAPE.search(rest):
        raise _bad("invalid escape")
    lscheme = scheme.lower()
    if lscheme in ("sip", "sips"):
        return _parse_sip(lscheme, rest, text)
    if lscheme == "tel":
        number, _, params = rest.partition(";")
        if not number:
            raise _bad("empty telephone number")
        return SipURI("tel", number, params=parse_params(params) if params else (), raw=text)
    return AbsoluteURI(lscheme, rest, raw=text)


def _parse_sip(scheme: str, rest: str, raw: str) -> SipURI:
    # The user part may hold "?", ";" and "/" (RFC 3261 §25.1 user-unreserved) but
    # never an unescaped "@", so the userinfo ends at the last "@".
    user = password = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if colon:
            password = pw
        if not user:
            raise _bad("empty user")
    rest, qmark, headers = rest.partition("?")
    hostport, semi, params = rest.partition(";")
    host, port = parse_host(hostport)
    return SipURI(
        scheme,
        host,
        user=user,
        password=password,
        port=port,
        params=parse_params(params) if semi else (),
        headers=headers if qmark else None,
        raw=raw,
    )

"""Property tests (hypothesis) for the SIP message layer.

* Round trip: a message built from the public classes, serialised with bytes(),
  parses back equal, field for field.
* Fuzz: arbitrary bytes, and torture messages with bytes mutated, make
  parse_message, the parsed views and StreamFramer.feed raise SipError and
  nothing else; parse_message never needs its last-resort wrapper for it.
* Fast paths: the compiled character scans that replaced the parser's regular
  expressions accept exactly what those expressions matched, with the same parts
  (the expressions are kept here as the oracle), on generated and mutated values.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registrar_core.sip import (
    AbsoluteURI,
    Headers,
    NameAddr,
    Request,
    Response,
    SipError,
    SipURI,
    StreamFramer,
    Via,
    build_response,
    parse_message,
)
from registrar_core.sip.headers import is_token, name_addr_parts, quoted_end, via_parts
from registrar_core.sip.uri import (
    ALPHA,
    DIGIT,
    HOST,
    PARAM,
    SPACE,
    TOKEN,
    USER,
    _CLASSES,
    _split_semicolons,
    all_of,
    digits_value,
    has_space,
    is_hostname,
    is_port,
    parse_params,
    sip_parts,
)

# Modest budgets: CI has 2 cores. Tests that draw several whole messages get fewer examples.
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEAVY = settings(SETTINGS, max_examples=60)

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
UNRESERVED = string.ascii_letters + string.digits + "-_.!~*'()"
TORTURE = sorted(
    p.read_bytes() for p in (Path(__file__).parent / "torture").glob("rfc*/*") if p.is_file()
)

# --- Generators for the public classes ---------------------------------------------------------

token = st.text(TOKEN_CHARS, min_size=1, max_size=10)
escaped = st.integers(0, 255).map(lambda b: f"%{b:02X}")


def uri_text(extra: str) -> st.SearchStrategy[str]:
    """Runs of unreserved (and ``extra``) characters mixed with %XX escapes (RFC 3261 §25.1)."""
    plain = st.text(UNRESERVED + extra, min_size=1, max_size=6)
    return st.lists(plain | escaped, min_size=1, max_size=3).map("".join)


label = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=8).filter(
    lambda s: not (s.startswith("-") or s.endswith("-"))
)
hostname = st.lists(label, min_size=1, max_size=3).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
host = hostname | ipv4 | ipv6.map(lambda a: f"[{a}]")
port = st.none() | st.integers(0, 65535)
param_text = uri_text("[]/:&+$")
uri_params = st.lists(st.tuples(param_text, st.none() | st.just("") | param_text), max_size=2).map(tuple)
header_text = uri_text("[]/?:+$")
uri_headers = st.lists(st.tuples(header_text, header_text), min_size=1, max_size=2).map(
    lambda hs: "&".join(f"{n}={v}" for n, v in hs)
)
user = uri_text("&=+$,;?/")
password = uri_text("&=+$,")


def sip_uris(headers: bool) -> st.SearchStrategy[SipURI]:
    """sip:/sips: URIs with every optional part; URI headers only when ``headers``."""
    userinfo = st.none() | st.tuples(user, st.none() | password)
    return st.builds(
        lambda scheme, host, userinfo, port, params, hdrs: SipURI(
            scheme, host, *(userinfo or (None, None)), port=port, params=params, headers=hdrs
        ),
        st.sampled_from(["sip", "sips"]),
        host,
        userinfo,
        port,
        uri_params,
        (st.none() | uri_headers) if headers else st.none(),
    )


tel_uris = st.builds(
    lambda number, params: SipURI("tel", number, params=params),
    st.text("0123456789-.()+", min_size=1, max_size=12),
    uri_params,
)
absolute_uris = st.builds(
    AbsoluteURI,
    st.sampled_from(["urn", "http", "isbn", "soap.beep", "x-y+z"]),
    uri_text("/:@&=+$,;?"),
)
request_uris = sip_uris(headers=False) | tel_uris | absolute_uris
any_uri = sip_uris(headers=True) | tel_uris | absolute_uris

# Separators the parser must not split on inside quotes come up often, not by luck.
qdtext = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\') | st.sampled_from(
    list(";,<>:@?= \t")
)
quoted = st.lists(qdtext | st.sampled_from(['\\"', "\\\\"]), max_size=8).map(
    lambda parts: '"' + "".join(parts) + '"'
)
display = st.none() | quoted | st.lists(token, min_size=1, max_size=2).map(" ".join)
header_params = st.lists(st.tuples(token, st.none() | token | quoted), max_size=2).map(tuple)
name_addrs = st.builds(NameAddr, any_uri, display, header_params)
vias = st.builds(
    Via,
    token.map(str.upper),
    host,
    port,
    st.lists(st.tuples(token, st.none() | token), max_size=2).map(
        lambda params: (("branch", "z9hG4bK-p"), *params)
    ),
)
# Header values a sender may use: no CR/LF, no surrogates, no edge blanks (parsing strips them).
header_value = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20
).map(lambda s: s.strip(" \t"))
spellings = {name: st.sampled_from([name, short]) for name, short in
             [("Via", "v"), ("From", "f"), ("To", "t"), ("Call-ID", "i"), ("Contact", "m"),
              ("Content-Length", "l")]}
extra_headers = st.lists(st.tuples(token.map("X-".__add__), header_value), max_size=3)


@st.composite
def common_headers(draw: st.DrawFn, method: str) -> list[tuple[str, str]]:
    """The headers every message carries, then extras, spelled in full or compact form."""
    fields = [
        (draw(spellings["Via"]), ", ".join(map(str, draw(st.lists(vias, min_size=1, max_size=2))))),
        (draw(spellings["From"]), str(draw(name_addrs))),
        (draw(spellings["To"]), str(draw(name_addrs))),
        (draw(spellings["Call-ID"]), draw(token) + "@" + draw(hostname)),
        ("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {method}"),
    ]
    contacts = draw(st.lists(name_addrs, max_size=2))
    if contacts:
        fields.append((draw(spellings["Contact"]), ", ".join(map(str, contacts))))
    return fields + draw(extra_headers)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(token)
    body = draw(st.binary(max_size=100))
    fields = draw(common_headers(method))
    fields.append((draw(spellings["Content-Length"]), str(len(body))))
    return Request(Headers(fields), body, method=method, uri=draw(request_uris))


@st.composite
def responses(draw: st.DrawFn) -> Response:
    body = draw(st.binary(max_size=100))
    fields = draw(common_headers(draw(token)))
    fields.append(("Content-Length", str(len(body))))
    reason = draw(header_value)
    return Response(Headers(fields), body, status=draw(st.integers(100, 699)), reason=reason)


# --- Round trip ---------------------------------------------------------------------------------


@SETTINGS
@given(requests())
def test_request_round_trip(request: Request) -> None:
    parsed = parse_message(bytes(request))
    assert parsed == request
    assert isinstance(parsed, Request)
    assert parsed.uri == request.uri and parsed.method == request.method
    assert parsed.vias == request.vias
    assert (parsed.from_, parsed.to, parsed.contacts) == (request.from_, request.to, request.contacts)
    assert parsed.cseq == request.cseq and parsed.body == request.body
    assert bytes(parsed) == bytes(request)


@SETTINGS
@given(responses())
def test_response_round_trip(response: Response) -> None:
    parsed = parse_message(bytes(response))
    assert parsed == response
    assert (parsed.status, parsed.reason, parsed.body) == (response.status, response.reason, response.body)
    assert parsed.vias == response.vias and parsed.to == response.to


@SETTINGS
@given(requests(), st.integers(101, 699), header_value, st.none() | token)
def test_built_response_round_trip(request: Request, status: int, reason: str, tag: str | None) -> None:
    response = build_response(request, status, reason, to_tag=tag)
    parsed = parse_message(bytes(response))
    assert parsed == response
    assert parsed.to.tag == (request.to.tag if request.to.tag is not None else tag)
    assert parsed.vias == request.vias and parsed.cseq == request.cseq


@HEAVY
@given(st.lists(requests(), min_size=1, max_size=3), st.data())
def test_stream_of_generated_messages(messages: list[Request], data: st.DataObject) -> None:
    stream = b"".join(map(bytes, messages))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = StreamFramer()
    framed: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        framed += framer.feed(stream[start:end])
    assert [parse_message(m) for m in framed] == messages
    assert framer.buffered == 0


# --- Fuzz ---------------------------------------------------------------------------------------


def exercise(data: bytes) -> None:
    """Everything the registrar may call on untrusted bytes; only SipError may come out."""
    try:
        message = parse_message(data)
    except SipError as exc:
        assert exc.__cause__ is None, f"parser bug behind {exc!r}"  # not the last-resort wrapper
        assert 400 <= exc.status <= 699
    else:
        for view in ("vias", "from_", "to", "call_id", "cseq", "expires", "contacts"):
            try:
                value = getattr(message, view)
            except SipError:
                continue
            if view == "contacts" and isinstance(value, list):
                for contact in value:
                    _ = contact.uri.aor, str(contact)
        _ = message.to.uri.aor, message.from_.uri.aor, bytes(message)
        if isinstance(message, Request):
            _ = message.uri.aor
            try:
                message.stamp_source("192.0.2.1", 5060)
                build_response(message, 200, "OK", to_tag="t")
            except SipError:
                pass
    framer = StreamFramer()
    try:
        for i in range(0, len(data), 7):
            for frame in framer.feed(data[i : i + 7]):
                try:
                    parse_message(frame)
                except SipError:
                    pass
    except SipError as exc:
        assert exc.drop


@st.composite
def mutated(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    """A seed message with a few bytes deleted, replaced, inserted or duplicated."""
    data = bytearray(draw(seeds))
    pieces = st.sampled_from(
        [b"\x00", b"\r\n", b"\r\n ", b":", b";", b",", b"<", b">", b'"', b"\\", b"[", b"]", b"@",
         b"%", b"?", b"=", b" ", b"\t", b"\xb2", b"\xff", b"\xd9\xa5", b"9" * 25, b"1" * 4400]
    )
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 4))
        if op == 4:  # aim at a header value: right after some ": "
            colons = [i + 2 for i in range(len(data) - 1) if data[i : i + 2] == b": "]
            if colons:
                at = draw(st.sampled_from(colons))
                data[at:at] = draw(pieces)
        elif op == 0:
            del data[at : at + draw(st.integers(1, 16))]
        elif op == 1:
            data[at:at] = draw(pieces)
        elif op == 2 and at < len(data):
            data[at] = draw(st.integers(0, 255))
        else:
            src = draw(st.integers(0, len(data)))
            data[at:at] = data[src : src + draw(st.integers(1, 64))]
    return bytes(data)


@SETTINGS
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    exercise(data)


@SETTINGS
@given(st.binary(max_size=300).map(lambda tail: b"REGISTER sip:a@b SIP/2.0\r\nVia: " + tail))
def test_fuzz_bytes_after_a_request_line(data: bytes) -> None:
    exercise(data)


@SETTINGS
@given(mutated(st.sampled_from(TORTURE)))
def test_fuzz_mutated_torture_messages(data: bytes) -> None:
    exercise(data)


@settings(SETTINGS, max_examples=100)
@given(mutated(requests().map(bytes)))
def test_fuzz_mutated_generated_messages(data: bytes) -> None:
    exercise(data)


# --- Fast paths against the regular expressions they replaced ----------------------------------

# The expressions as the parser had them before 19's rework (commit 14c2ea2): the oracle.
HOSTNAME_PATTERN = r"[A-Za-z0-9](?:[A-Za-z0-9\-._]*[A-Za-z0-9])?\.?"
TOKEN_PATTERN = r"[A-Za-z0-9\-.!%*_+`'~]+"
QUOTED_PATTERN = r'"(?:[^"\\]|\\.)*+"'
ORACLE_SIP = re.compile(
    rf'(sips?):(?:([^\x00-\x20\x7f<>"@:;?%]+)@)?({HOSTNAME_PATTERN})(?::([0-9]{{1,5}}))?'
    r'(?:;([^\x00-\x20\x7f<>"@?%]*))?\Z'
)
ORACLE_VIA = re.compile(rf"SIP/2\.0/([A-Za-z]+) ({HOSTNAME_PATTERN})(?::([0-9]{{1,5}}))?(?:;(.*))?\Z", re.S)
ORACLE_NAME_ADDR = re.compile(rf"(?:({QUOTED_PATTERN})\s*)?<([^>\s]*)>(?:;(.*))?\Z", re.S)
ORACLE_QUOTED = re.compile(QUOTED_PATTERN, re.S)
ORACLE_TOKEN = re.compile(TOKEN_PATTERN + r"\Z")
ORACLE_HOSTNAME = re.compile(HOSTNAME_PATTERN + r"\Z")
ORACLE_PORT = re.compile(r"[0-9]{1,5}\Z")

# Characters at every edge of those expressions: each class's members and neighbours, ASCII
# whitespace that str.isspace() knows (\x1c-\x1f too), non-ASCII letters, digits and spaces.
EDGES = list(
    "aZsSiIpP09-._@:;?%<>\"\\/=+*!~'`()&$,[]# \t\r\n\x0b\x0c\x1c\x1f\x00\x7f"
    "\x85\xa0\xb2\xe9\u0660\u2000\u3000\U0001f600"
)
edge_text = st.text(st.sampled_from(EDGES) | st.characters(max_codepoint=0x7F), max_size=24)


@st.composite
def edited(draw: st.DrawFn, seeds: st.SearchStrategy[str]) -> str:
    """A seed value with a few characters deleted, replaced or inserted (from EDGES mostly)."""
    text = list(draw(seeds))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from(EDGES) | st.characters())
        op = draw(st.integers(0, 2))
        if op == 0:
            del text[at : at + 1]
        elif op == 1 and at < len(text):
            text[at] = char
        else:
            text.insert(at, char)
    return "".join(text)


def shapes(*prefixes: str) -> st.SearchStrategy[str]:
    """A prefix, then edge text and the separators of these shapes in any order."""
    parts = st.sampled_from(["@", ":", ";", "<", ">", '"', " ", "5060", "example.com", "1.2.3.4", "a-b_c."])
    return st.builds(
        lambda prefix, pieces: prefix + "".join(pieces),
        st.sampled_from(prefixes),
        st.lists(parts | edge_text, max_size=6),
    )


def groups(pattern: re.Pattern[str], text: str) -> tuple[str | None, ...] | None:
    match = pattern.match(text)
    return None if match is None else match.groups()


# The shapes the fast paths take, so that about half of the values match.
simple = st.text(string.ascii_letters + string.digits + "-_.!~*'()&=+$,/", min_size=1, max_size=8)
optional_port = st.sampled_from(["", ":"]).flatmap(
    lambda colon: st.just("") if not colon else st.text(string.digits, max_size=6).map(colon.__add__)
)
# Letters, digits, "-", "_" and "." in any order: hostnames and near misses.
host_like = st.text(string.ascii_letters[:6] + string.digits[:3] + "-_.", min_size=1, max_size=10)
optional_params = st.none() | st.lists(simple, max_size=3).map(";".join).map(";".__add__)
common_sip = st.builds(
    lambda scheme, user, host, port, params: f"{scheme}:{user}{host}{port}{params or ''}",
    st.sampled_from(["sip", "sips"]),
    st.just("") | simple.map(lambda u: u + "@"),
    hostname | hostname.map(lambda h: h + ".") | ipv4 | host_like,
    optional_port,
    optional_params,
)
common_via = st.builds(
    lambda transport, host, port, params: f"SIP/2.0/{transport} {host}{port}{params or ''}",
    st.sampled_from(["UDP", "tcp", "TLS", "WS", "X"]),
    hostname | ipv4 | host_like,
    optional_port,
    optional_params,
)
sip_texts = common_sip | edited(
    common_sip | any_uri.map(str) | shapes("sip:", "sips:", "SIP:", "sip", "sipx:", "tel:", "") | edge_text
)
via_texts = common_via | edited(
    common_via | vias.map(str) | shapes("SIP/2.0/UDP ", "SIP/2.0/", "SIP/2.0/tcp  ", "sip/2.0/UDP ") | edge_text
)
name_addr_texts = edited(
    name_addrs.map(str) | common_sip.map(lambda uri: f"<{uri}>") | shapes('"', "<", '"a" <', '"\\"" \t<', "") | edge_text
)
token_texts = edited(token | edge_text)
host_texts = host_like | edited(host | hostname.map(lambda h: h + ".") | edge_text)


@SETTINGS
@given(sip_texts)
def test_sip_parts_match_the_common_uri_expression(text: str) -> None:
    assert sip_parts(text) == groups(ORACLE_SIP, text)


@SETTINGS
@given(via_texts)
def test_via_parts_match_the_common_via_expression(text: str) -> None:
    assert via_parts(text) == groups(ORACLE_VIA, text)


@SETTINGS
@given(name_addr_texts)
def test_name_addr_parts_match_the_common_name_addr_expression(text: str) -> None:
    assert name_addr_parts(text) == groups(ORACLE_NAME_ADDR, text)
    quoted = ORACLE_QUOTED.match(text)
    assert quoted_end(text) == (-1 if quoted is None else quoted.end())
    assert has_space(text, 0, len(text)) == (re.search(r"\s", text) is not None)


@SETTINGS
@given(token_texts, host_texts)
def test_token_hostname_and_port_checks_match_their_expressions(token_text: str, host_text: str) -> None:
    assert is_token(token_text) == (ORACLE_TOKEN.match(token_text) is not None)
    assert is_hostname(host_text, 0, len(host_text)) == (ORACLE_HOSTNAME.match(host_text) is not None)
    for text in (token_text, host_text):
        assert is_port(text, 0, len(text)) == (ORACLE_PORT.match(text) is not None)


# Every ASCII character and some others, in each part of each shape: the class edges exhaustively.
ANY_CHAR = [chr(code) for code in range(128)] + ["\x85", "\xa0", "\xe9", "\u0660", "\u2000", "\U0001f600"]


def test_every_character_in_every_part_as_the_expressions_say() -> None:
    for c in ANY_CHAR:
        for text in (f"sip:a{c}b@h", f"sip:{c}@h", f"sips:a@h{c}b", f"sip:a@h:5{c}", f"sip:a@h;x{c}y",
                     f"sip:h{c}", f"sip:a@h.{c}"):
            assert sip_parts(text) == groups(ORACLE_SIP, text), repr(text)
        for text in (f"SIP/2.0/U{c}P h;b", f"SIP/2.0/UDP{c}h", f"SIP/2.0/UDP h{c}x:1", f"SIP/2.0/UDP h:1{c};x",
                     f"SIP/2.0/UDP h;{c}"):
            assert via_parts(text) == groups(ORACLE_VIA, text), repr(text)
        for text in (f'"a{c}b" <sip:h>', f'"a"{c}<sip:h>', f"<sip:a{c}b>", f"<sip:h>{c}x", f"<sip:h>;{c}",
                     f'"\\{c}"<s>'):
            assert name_addr_parts(text) == groups(ORACLE_NAME_ADDR, text), repr(text)
        for text in (c, f"ab{c}", f"a{c}b"):
            assert is_token(text) == (ORACLE_TOKEN.match(text) is not None), repr(text)
            assert is_hostname(text, 0, len(text)) == (ORACLE_HOSTNAME.match(text) is not None), repr(text)
            assert is_port(text, 0, len(text)) == (ORACLE_PORT.match(text) is not None), repr(text)
            assert has_space(text, 0, len(text)) == (re.search(r"\s", text) is not None), repr(text)


@pytest.mark.parametrize(
    "text",
    ["sip:example.com", "sip:u12@127.0.0.1:5062", "sips:a@b.:1;x=1;y", "sip:a@b:99999", "sip:a@b:",
     "sip:@b", "sip:a@b@c", "sip:a:b@c", "sip:é@b", "sip:a@b;é", "sip:a@b;x\x85", "sip:a@-b", "sip:a@b-",
     "sip:a@b..", "sip:a@.", "sip:a@b;", "sip:a\x1c@b", "sip:a@[::1]", "sip:a%20@b", "SIP:a@b"],
)
def test_sip_parts_on_the_edges(text: str) -> None:
    assert sip_parts(text) == groups(ORACLE_SIP, text)


@pytest.mark.parametrize(
    "text",
    ['"a" <sip:b>', '"a"\x1c<sip:b>;x', '"a"\u3000<sip:b>', '"a\\"b"<sip:b>', '"a\\', '"a', "<sip:b>x",
     "<sip:b>;", "<sip:a b>", "<sip:a\x85b>", "<>", "<sip:b", '"a" x <sip:b>', "a <sip:b>", '"a\\\\"<s>'],
)
def test_name_addr_parts_on_the_edges(text: str) -> None:
    assert name_addr_parts(text) == groups(ORACLE_NAME_ADDR, text)


@pytest.mark.parametrize(
    "text",
    ["SIP/2.0/UDP a", "SIP/2.0/UDP a:5060;branch=x", "SIP/2.0/UDP a:;x", "SIP/2.0/UDP a:123456",
     "SIP/2.0/ a", "SIP/2.0/UDP  a", "SIP/2.0/UDP a;\nx", "SIP/2.0/UDP [::1]:5060", "SIP/2.0/UDP a.:1",
     "SIP/2.0/Ü a", "SIP/2.0/UDP a b"],
)
def test_via_parts_on_the_edges(text: str) -> None:
    assert via_parts(text) == groups(ORACLE_VIA, text)


def partitioned_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """parse_params as it was before 19's rework (a string and a partition per part): the oracle."""
    params: list[tuple[str, str | None]] = []
    for part in _split_semicolons(text):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not name:
            raise SipError(400, "Bad URI: " + ("empty parameter" if not eq else "parameter without a name"))
        params.append((name, value.strip() if eq else None))
    return tuple(params)


def outcome(parse: Callable[[str], object], text: str) -> object:
    """What ``parse`` returns, or the status and reason of the SipError it raises."""
    try:
        return parse(text)
    except SipError as exc:
        return (exc.status, exc.reason)


@SETTINGS
@given(edited(st.lists(st.sampled_from(["a", "b=1", " c = 2 ", "=", "", '"x;y"', "d=\u3000", "\t"]), max_size=5)
              .map(";".join) | edge_text))
def test_parse_params_splits_as_the_partitioned_version(text: str) -> None:
    assert outcome(parse_params, text) == outcome(partitioned_params, text)


@SETTINGS
@given(st.text(alphabet="0123456789", min_size=1, max_size=40))
def test_digits_value_is_int(text: str) -> None:
    """The compiled digit loop that reads ports, CSeq, Expires and Content-Length agrees with int()."""
    assert digits_value(text) == int(text)


@SETTINGS
@given(st.text(alphabet=st.characters(max_codepoint=0x3000) | st.sampled_from("\x85\xa0\ud800\U0010ffff"),
               max_size=12), st.data())
def test_all_of_agrees_with_the_class_table_character_by_character(text: str, data: st.DataObject) -> None:
    """all_of (a compiled loop, or interpreted a regular expression of the class) answers as the
    class table read one character at a time: ASCII by its bits, the rest allowed only by the
    classes defined by what they leave out (USER, PARAM)."""
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, len(text)))
    for cls in (ALPHA, DIGIT, HOST, USER, PARAM, TOKEN, SPACE, ALPHA | DIGIT):
        expected = all(_CLASSES[ord(c)] & cls if ord(c) < 128 else cls & (USER | PARAM) for c in text[start:end])
        assert all_of(text, start, end, cls) == bool(expected)

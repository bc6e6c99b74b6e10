"""Property tests (hypothesis) for the SIP message layer.

* Round trip: a message built from the public classes, serialised with bytes(),
  parses back equal, field for field.
* Fuzz: arbitrary bytes, and torture messages with bytes mutated, make
  parse_message, the parsed views and StreamFramer.feed raise SipError and
  nothing else; parse_message never needs its last-resort wrapper for it.
"""

from __future__ import annotations

import string
from pathlib import Path

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

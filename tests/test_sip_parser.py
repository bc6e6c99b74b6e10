"""Focused unit tests of the sans-IO SIP message layer (registrar_core.sip)."""

from __future__ import annotations

import pytest

from registrar_core.sip import (
    AbsoluteURI,
    Headers,
    Limits,
    NameAddr,
    Request,
    Response,
    SipError,
    SipURI,
    Via,
    build_response,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_values,
)
from registrar_core.sip.headers import parse_cseq

BASE_HEADERS = [
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    "From: <sip:alice@example.com>;tag=1928301774",
    "To: <sip:alice@example.com>",
    "Call-ID: a84b4c76e66710@pc33.example.com",
    "CSeq: 314159 REGISTER",
]


def make(
    *extra: str,
    start: str = "REGISTER sip:example.com SIP/2.0",
    base: list[str] | None = None,
    drop: tuple[str, ...] = (),
    body: bytes = b"",
    length: bool = True,
) -> bytes:
    """A request as bytes: BASE_HEADERS minus ``drop`` (by name), plus ``extra``."""
    lines = [h for h in (BASE_HEADERS if base is None else base) if h.split(":")[0] not in drop]
    lines += extra
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join([start, *lines]) + "\r\n\r\n").encode() + body


def parse_request(data: bytes, limits: Limits | None = None) -> Request:
    message = parse_message(data) if limits is None else parse_message(data, limits)
    assert isinstance(message, Request)
    return message


def sip_error(data: bytes, limits: Limits | None = None) -> SipError:
    with pytest.raises(SipError) as exc:
        parse_message(data) if limits is None else parse_message(data, limits)
    return exc.value


# --- Header fields: compact forms, folding, lists ---------------------------------------


@pytest.mark.parametrize(
    ("compact", "full", "value"),
    [
        ("i", "Call-ID", "compact@example.com"),
        ("m", "Contact", "<sip:alice@192.0.2.1>"),
        ("f", "From", "<sip:bob@example.com>;tag=x1"),
        ("t", "To", "<sip:bob@example.com>"),
        ("v", "Via", "SIP/2.0/TCP 192.0.2.3;branch=z9hG4bKc"),
        ("k", "Supported", "path, outbound"),
        ("s", "Subject", "hello"),
        ("e", "Content-Encoding", "gzip"),
        ("c", "Content-Type", "application/sdp"),
    ],
)
def test_compact_forms_expand(compact: str, full: str, value: str) -> None:
    drop = (full,) if full in ("Call-ID", "From", "To", "Via") else ()
    for spelling in (compact, compact.upper()):
        request = parse_request(make(f"{spelling}: {value}", drop=drop))
        assert request.headers.get(full) == value
        assert request.headers.get(compact) == value
        assert (full, value) in list(request.headers)


def test_compact_content_length_frames_the_body() -> None:
    request = parse_request(make("l: 4", body=b"abcdEXTRA", length=False))
    assert request.body == b"abcd"
    assert request.headers.get("Content-Length") == "4"


def test_header_folding_joins_continuation_lines() -> None:
    request = parse_request(
        make("Subject: first\r\n  second\r\n\tthird", "Contact:\r\n <sip:a@192.0.2.1>")
    )
    assert request.headers.get("Subject") == "first second third"
    assert [c.uri.aor for c in request.contacts] == ["a@192.0.2.1"]


def test_continuation_before_any_header_is_400() -> None:
    data = b"REGISTER sip:example.com SIP/2.0\r\n folded\r\n" + make()[34:]
    assert sip_error(data).status == 400


def test_header_names_are_case_insensitive_and_lws_before_colon_is_allowed() -> None:
    request = parse_request(make("cOnTaCt  :  <sip:a@192.0.2.1>", "EXPIRES\t: 60"))
    assert request.headers.get("contact") == "<sip:a@192.0.2.1>"
    assert request.expires == 60


def test_malformed_header_line_is_400() -> None:
    assert sip_error(make("No colon here")).status == 400
    assert sip_error(make("Bad Name: x")).status == 400
    # A line that is only a known header name (full or compact) has no colon either.
    for name in ("Via", "i", "User-Agent"):
        assert sip_error(make(name)).status == 400, name


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("a, b ,c", ["a", "b", "c"]),
        ('"Doe, John" <sip:j@x>, <sip:k@y>', ['"Doe, John" <sip:j@x>', "<sip:k@y>"]),
        ('"a \\" , b" <sip:j@x>;p="1,2", c', ['"a \\" , b" <sip:j@x>;p="1,2"', "c"]),
        ("<sip:a,b@x;p=1,2>, <sip:c@y>", ["<sip:a,b@x;p=1,2>", "<sip:c@y>"]),
        ("single", ["single"]),
        ("  ", []),
    ],
)
def test_split_values_ignores_commas_in_quotes_and_brackets(value: str, parts: list[str]) -> None:
    assert split_values(value) == parts


def test_split_values_rejects_empty_elements() -> None:
    with pytest.raises(SipError) as exc:
        split_values("<sip:a@x>, , <sip:b@y>")
    assert exc.value.status == 400


def test_contacts_split_across_and_within_fields() -> None:
    request = parse_request(
        make('Contact: "A, B" <sip:a@192.0.2.1>;q=0.5, <sip:b@192.0.2.2>', "m: sip:c@192.0.2.3")
    )
    contacts = request.contacts
    assert [c.uri.aor for c in contacts] == ["a@192.0.2.1", "b@192.0.2.2", "c@192.0.2.3"]
    assert contacts[0].display == '"A, B"' and contacts[0].param("q") == "0.5"


def test_wildcard_contact() -> None:
    assert parse_request(make("Contact: *", "Expires: 0")).contacts == "*"
    request = parse_request(make("Contact: *, <sip:a@192.0.2.1>"))
    with pytest.raises(SipError) as exc:
        _ = request.contacts
    assert exc.value.status == 400


def test_no_contact_is_an_empty_list() -> None:
    assert parse_request(make()).contacts == []


def test_headers_api() -> None:
    headers = Headers([("v", "SIP/2.0/UDP a"), ("X-Thing", "1"), ("Via", "SIP/2.0/UDP b, SIP/2.0/UDP c")])
    assert list(headers)[0] == ("Via", "SIP/2.0/UDP a")
    assert headers.get("VIA") == "SIP/2.0/UDP a"
    assert headers.get_all("v") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b, SIP/2.0/UDP c"]
    assert headers.values("Via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert headers.get("x-thing") == "1" and headers.get("Missing") is None
    headers.add("x-thing", "2")
    assert headers.get_all("X-Thing") == ["1", "2"]
    headers.set("X-THING", "3")  # an unknown name keeps the spelling it was given
    assert headers.get_all("x-thing") == ["3"] and list(headers)[-1] == ("X-THING", "3")
    headers.replace_first("Via", "SIP/2.0/TCP z")
    assert headers.get_all("Via") == ["SIP/2.0/TCP z", "SIP/2.0/UDP b, SIP/2.0/UDP c"]
    copy = headers.copy()
    headers.remove("v")
    assert headers.get_all("Via") == [] and len(headers) == 1
    assert copy.get_all("Via") == ["SIP/2.0/TCP z", "SIP/2.0/UDP b, SIP/2.0/UDP c"]
    assert headers == Headers([("X-THING", "3")]) != Headers([("X-THING", "4")])


def test_parsed_index_of_single_and_repeated_names() -> None:
    """The parser's index holds a name's one value, or a list once repeated: every look-up
    answers the same either way, folding and replace_first included."""
    request = parse_request(make("Route: <sip:p1>", "X-A: one", "Route: <sip:p2>,\r\n <sip:p3>",
                                 "X-A: two\r\n more", "Subject: s\r\n t"))
    headers = request.headers
    assert headers.found("subject") == "s t" and headers.get("Subject") == "s t"
    assert headers.found("route") == ["<sip:p1>", "<sip:p2>, <sip:p3>"]
    assert headers.get_all("Route") == ["<sip:p1>", "<sip:p2>, <sip:p3>"]
    assert headers.values("Route") == ["<sip:p1>", "<sip:p2>", "<sip:p3>"]
    assert headers.get_all("x-a") == ["one", "two more"] and headers.get("X-A") == "one"
    assert headers.get_all("Subject") == ["s t"] and headers.found("missing") is None
    headers.replace_first("Route", "<sip:p0>")
    headers.replace_first("Subject", "u")
    assert headers.get_all("Route") == ["<sip:p0>", "<sip:p2>, <sip:p3>"] and headers.get("Subject") == "u"
    assert [v for n, v in headers if n == "Route"] == ["<sip:p0>", "<sip:p2>, <sip:p3>"]
    assert sip_error(make("Call-ID: second")).reason == "Duplicate Call-ID"


# --- name-addr / addr-spec ----------------------------------------------------------------


def test_addr_spec_params_belong_to_the_header() -> None:
    addr = parse_name_addr("sip:alice@example.com;transport=tcp;expires=60")
    assert not addr.bracketed and addr.display is None
    assert addr.uri.params == () and addr.uri.raw == "sip:alice@example.com"
    assert addr.params == (("transport", "tcp"), ("expires", "60"))


def test_name_addr_params_inside_brackets_belong_to_the_uri() -> None:
    addr = parse_name_addr('"Alice" <sip:alice@example.com;transport=tcp>;expires=60;+sip.instance="<urn:x;y>"')
    assert addr.bracketed and addr.display == '"Alice"'
    assert addr.uri.transport == "tcp"
    assert addr.params == (("expires", "60"), ("+sip.instance", '"<urn:x;y>"'))
    assert addr.param("EXPIRES") == "60" and addr.param("q") is None


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("<sip:a@x>", None),
        ("Alice Smith <sip:a@x>", "Alice Smith"),
        ('"Smith, Alice \\"A\\"" <sip:a@x>', '"Smith, Alice \\"A\\""'),
        ('""<sip:a@x>', '""'),
    ],
)
def test_display_names(text: str, display: str | None) -> None:
    assert parse_name_addr(text).display == display


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<sip:a@x",
        '"unterminated <sip:a@x>',
        '"quoted" sip:a@x',
        "Smith, Alice <sip:a@x>",
        "< sip:a@x>",
        "<sip:a@x> junk",
        "sip:a@x?subject=hi",
        "<sip:a@x>;;",
        "<sip:a@x>;=v",
        '<sip:a@x>;p="open',
    ],
)
def test_bad_addresses_are_400(text: str) -> None:
    with pytest.raises(SipError) as exc:
        parse_name_addr(text)
    assert exc.value.status == 400


def test_name_addr_str_keeps_uri_params_inside_and_header_params_outside() -> None:
    assert str(parse_name_addr("sip:a@x;lr")) == "<sip:a@x>;lr"
    assert str(parse_name_addr("<sip:a@x;lr>")) == "<sip:a@x;lr>"
    assert str(parse_name_addr('"A" <sip:a@x;lr>;tag=1')) == '"A" <sip:a@x;lr>;tag=1'


def test_tag_property() -> None:
    request = parse_request(make())
    assert request.from_.tag == "1928301774" and request.to.tag is None


# --- URIs -----------------------------------------------------------------------------------


def test_sip_uri_all_parts() -> None:
    uri = parse_uri("sip:alice:secret@Example.COM:5070;transport=TCP;lr?Subject=hi%20there&X=1")
    assert isinstance(uri, SipURI)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sip", "alice", "secret", "Example.COM", 5070,
    )
    assert uri.params == (("transport", "TCP"), ("lr", None))
    assert uri.transport == "tcp" and uri.param("LR") == "" and uri.param("maddr") is None
    assert uri.headers == "Subject=hi%20there&X=1"
    assert str(uri) == uri.raw


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sips:bob@192.0.2.4", "192.0.2.4", None),
        ("sip:192.0.2.4:5061", "192.0.2.4", 5061),
        ("sip:[2001:db8::1]", "[2001:db8::1]", None),
        ("sip:u@[2001:db8::1]:5060", "[2001:db8::1]", 5060),
        ("sip:[::ffff:192.0.2.1]:1", "[::ffff:192.0.2.1]", 1),
        ("sip:host-1.example.com.:65535", "host-1.example.com.", 65535),
    ],
)
def test_hosts_and_ports(text: str, host: str, port: int | None) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, SipURI) and (uri.host, uri.port) == (host, port)


def test_scheme_is_case_insensitive_and_raw_is_kept() -> None:
    uri = parse_uri("SIPS:Bob@Example.com")
    assert isinstance(uri, SipURI) and uri.scheme == "sips" and uri.raw == "SIPS:Bob@Example.com"


def test_user_part_may_hold_semicolons_and_question_marks() -> None:
    uri = parse_uri("sip:a;b?c@example.com;lr?h=v")
    assert isinstance(uri, SipURI)
    assert (uri.user, uri.host, uri.params, uri.headers) == ("a;b?c", "example.com", (("lr", None),), "h=v")


def test_tel_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(uri, SipURI) and uri.scheme == "tel"
    assert uri.host == "+1-201-555-0123" and uri.param("phone-context") == "example.com"
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"


@pytest.mark.parametrize("text", ["urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "mailto:a@b.c", "http://x/y?z"])
def test_absolute_uris_are_opaque(text: str) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, AbsoluteURI)
    assert f"{uri.scheme}:{uri.rest}" == text == str(uri) == uri.aor


@pytest.mark.parametrize(
    "text",
    [
        "",
        "example.com",
        "sip:",
        "1sip:x",
        "sip:a b@x",
        "sip:a\x00b@x",
        "sip:<x>",
        "sip:@example.com",
        "sip::pw@example.com",
        "sip:a@",
        "sip:a@exa mple.com",
        "sip:a@-bad-.com",
        "sip:a@x:65536",
        "sip:a@x:",
        "sip:a@x:5o6o",
        "sip:a@x:\uff15\uff10",  # full-width digits: str.isdigit() says yes
        "sip:a@[2001:db8::1",
        "sip:a@[zz::1]",
        "sip:a@[2001:db8::1]x",
        "sip:2001:db8::1",
        "sip:a%zz@x",
        "sip:a@x;",
        "tel:",
    ],
)
def test_bad_uris_are_400(text: str) -> None:
    with pytest.raises(SipError) as exc:
        parse_uri(text)
    assert exc.value.status == 400


def test_to_written_like_from_shares_its_parsed_uri_and_any_other_to_is_parsed_on_its_own() -> None:
    same = parse_request(make())
    assert same.to.uri is same.from_.uri  # one parse: URIs are values nobody mutates
    other = parse_request(make("To: <sip:bob@example.com>", drop=("To",)))
    assert other.to.uri.aor == "bob@example.com" and other.from_.uri.aor == "alice@example.com"
    cased = parse_request(make("To: <sip:alice@EXAMPLE.com>", drop=("To",)))
    assert cased.to.uri is not cased.from_.uri and cased.to.uri.host == "EXAMPLE.com"  # as written
    assert sip_error(make("To: <>", drop=("To",))).status == 400
    assert sip_error(make("To: <sip:alice@exa mple.com>", drop=("To",))).status == 400


@pytest.mark.parametrize(
    ("text", "aor"),
    [
        ("sip:alice@EXAMPLE.com", "alice@example.com"),
        ("sip:%61lice@example.com", "alice@example.com"),
        ("sip:%61%6c%69%63%65@example.com;transport=tcp?X=1", "alice@example.com"),
        ("sips:alice@example.com:5061", "alice@example.com"),
        ("sip:Alice@example.com", "Alice@example.com"),  # the user part is case-sensitive
        ("sip:null-%00-null@example.com", "null-%00-null@example.com"),
        ("sip:a%20b%3a%40@example.com", "a%20b%3A%40@example.com"),
        ("sip:v%2541@example.com", "v%2541@example.com"),  # never unescaped twice
        ("sip:j%C3%B6rg@example.com", "j%C3%B6rg@example.com"),
        ("sip:j\u00f6rg@example.com", "j%C3%B6rg@example.com"),
        ("sip:+1%2D555@example.com", "+1-555@example.com"),
        ("sip:[2001:DB8:0::1]", "[2001:db8::1]"),
        ("sip:Example.COM", "example.com"),
    ],
)
def test_aor_canonicalisation(text: str, aor: str) -> None:
    assert parse_uri(text).aor == aor


# --- Via, CSeq, Expires ---------------------------------------------------------------------


def test_via_parts() -> None:
    via = parse_via("SIP/2.0/udp 192.0.2.1:5062;branch=z9hG4bK-1;rport;received=192.0.2.9")
    assert (via.transport, via.host, via.port) == ("UDP", "192.0.2.1", 5062)
    assert (via.branch, via.rport, via.received) == ("z9hG4bK-1", "", "192.0.2.9")
    assert str(via) == "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK-1;rport;received=192.0.2.9"


def test_via_allows_lws_around_separators() -> None:
    via = parse_via("SIP / 2.0 / TCP  [2001:db8::1] : 5060 ; branch = z9hG4bKx ; rport = 7")
    assert (via.transport, via.host, via.port) == ("TCP", "[2001:db8::1]", 5060)
    assert via.params == (("branch", "z9hG4bKx"), ("rport", "7"))


def test_via_without_params() -> None:
    via = parse_via("SIP/2.0/UDP host.example.com")
    assert (via.host, via.port, via.params, via.branch) == ("host.example.com", None, (), None)


@pytest.mark.parametrize(
    "text",
    [
        "SIP/3.0/UDP h",
        "HTTP/2.0/UDP h",
        "SIP/2.0 h",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP h:99999",
        "SIP/2.0/UDP h h2",
        "SIP/2.0/UDP h;",
        "SIP/2.0/UD@P h",
    ],
)
def test_bad_via_is_400(text: str) -> None:
    with pytest.raises(SipError) as exc:
        parse_via(text)
    assert exc.value.status == 400


def test_several_vias_in_order() -> None:
    request = parse_request(
        make("Via: SIP/2.0/TCP b.example.com, SIP/2.0/UDP c.example.com", base=BASE_HEADERS)
    )
    assert [v.host for v in request.vias] == ["192.0.2.10", "b.example.com", "c.example.com"]


def test_missing_via_is_400() -> None:
    assert sip_error(make(drop=("Via",))).reason == "Missing Via"


def test_empty_via_field_is_400() -> None:
    data = make().replace(b"Via: ", b"Via: \r\nVia: ", 1)
    assert sip_error(data).reason == "Empty Via"


@pytest.mark.parametrize(
    ("value", "cseq"),
    [("0 REGISTER", (0, "REGISTER")), ("4294967295 REGISTER", (2**32 - 1, "REGISTER")),
     ("007\tREGISTER", (7, "REGISTER")), ("  12   REGISTER  ", (12, "REGISTER"))],
)
def test_cseq_range(value: str, cseq: tuple[int, str]) -> None:
    assert parse_request(make(f"CSeq: {value}", drop=("CSeq",))).cseq == cseq


@pytest.mark.parametrize(  # the usual methods take a fast path, any other token the regex: one answer
    ("value", "cseq"),
    [("1 REGISTER", (1, "REGISTER")), ("01 INVITE", (1, "INVITE")), ("3 FOO.bar", (3, "FOO.bar")),
     ("4 register", (4, "register")), ("5  NOTIFY", (5, "NOTIFY"))],
)
def test_parse_cseq_of_any_method(value: str, cseq: tuple[int, str]) -> None:
    assert parse_cseq(value) == cseq


@pytest.mark.parametrize(
    "value",
    ["4294967296 REGISTER", "1" * 5000 + " REGISTER", "-1 REGISTER", "REGISTER", "1",
     "\u0661 REGISTER", "1 REG ISTER", "0x10 REGISTER"],
)
def test_bad_cseq_is_400(value: str) -> None:
    assert sip_error(make(f"CSeq: {value}", drop=("CSeq",))).status == 400


def test_cseq_method_must_match() -> None:
    assert "CSeq method" in sip_error(make("CSeq: 1 INVITE", drop=("CSeq",))).reason


@pytest.mark.parametrize(
    ("value", "expires"),
    [(None, None), ("0", 0), ("3600", 3600), ("  60 ", 60), ("4294967295", 2**32 - 1),
     ("4294967296", 2**32 - 1), ("9" * 200, 2**32 - 1)],
)
def test_expires(value: str | None, expires: int | None) -> None:
    extra = () if value is None else (f"Expires: {value}",)
    assert parse_request(make(*extra)).expires == expires


@pytest.mark.parametrize("value", ["-1", "soon", "Thu, 01 Dec 1994 16:00:00 GMT", "\u0662", ""])
def test_bad_expires_is_400(value: str) -> None:
    assert sip_error(make(f"Expires: {value}")).status == 400


@pytest.mark.parametrize("name", ["From", "To", "Call-ID", "CSeq"])
def test_required_headers(name: str) -> None:
    assert sip_error(make(drop=(name,))).reason == f"Missing {name}"


@pytest.mark.parametrize(
    "extra",
    [("To: <sip:b@x>",), ("Call-ID: other",), ("CSeq: 2 REGISTER",), ("Max-Forwards: 1",),
     ("Expires: 1", "Expires: 1"), ("Content-Type: a/b", "c: a/b"), ("f: <sip:c@x>;tag=2",)],
)
def test_duplicate_single_headers_are_400(extra: tuple[str, ...]) -> None:
    assert "Duplicate" in sip_error(make(*extra)).reason


def test_a_repeated_header_with_an_equal_one_character_value_is_indexed_twice() -> None:
    """Equal one-character values are one cached string: the index must still see two fields."""
    request = parse_request(make("X-A: 1", "X-A: 1", "Allow: A", "Allow: A", "Content-Length: 0"))
    assert request.headers.get_all("X-A") == ["1", "1"] and request.headers.listed("allow") == ["A", "A"]
    assert request.headers.get_all("Content-Length") == ["0", "0"]
    assert sip_error(make("Max-Forwards: 7", "Max-Forwards: 7", drop=("Max-Forwards",))).reason == "Duplicate Max-Forwards"


def test_max_forwards_must_be_digits() -> None:
    assert parse_request(make(base=BASE_HEADERS)).headers.get("Max-Forwards") == "70"
    assert sip_error(make("Max-Forwards: seventy", drop=("Max-Forwards",))).status == 400


# --- Start lines, bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "status"),
    [
        ("REGISTER sip:example.com SIP/3.0", 505),
        ("REGISTER sip:example.com SIP/2", 400),
        ("REGISTER sip:example.com", 400),
        ("REGISTER  sip:example.com SIP/2.0", 400),
        ("REG@STER sip:example.com SIP/2.0", 400),
        ("REGISTER <sip:example.com> SIP/2.0", 400),
        ("REGISTER sip:example.com?Route=x SIP/2.0", 400),
    ],
)
def test_bad_request_lines(start: str, status: int) -> None:
    error = sip_error(make(start=start))
    assert (error.status, error.drop) == (status, False)


def test_version_is_case_insensitive_and_normalised() -> None:
    assert parse_request(make(start="REGISTER sip:example.com sip/2.0")).version == "SIP/2.0"


def test_register_request_lines_are_parsed_once_and_checked_every_time() -> None:
    """A REGISTER line seen before shares its parsed URI (message.py keeps it by its text);
    a bad line is refused however often it comes, and other methods are parsed afresh."""
    start = "REGISTER sip:shared.example.com;transport=udp SIP/2.0"
    first, second = parse_request(make(start=start)), parse_request(make(start=start))
    assert second.uri is first.uri
    assert (second.method, second.uri) == ("REGISTER", parse_uri("sip:shared.example.com;transport=udp"))
    bad = "REGISTER sip:shared.example.com?Route=x SIP/2.0"
    assert [sip_error(make(start=bad)).status for _ in range(2)] == [400, 400]
    options = "OPTIONS sip:bob@example.com SIP/2.0"
    base = [h.replace("REGISTER", "OPTIONS") for h in BASE_HEADERS]
    assert parse_request(make(start=options, base=base)).uri is not parse_request(make(start=options, base=base)).uri


def test_response_parses() -> None:
    data = make(start="SIP/2.0 401 Unauthorized", body=b"x")
    response = parse_message(data)
    assert isinstance(response, Response)
    assert (response.status, response.reason, response.body) == (401, "Unauthorized", b"x")
    assert response.cseq == (314159, "REGISTER")


@pytest.mark.parametrize("start", ["SIP/2.0 099 Low", "SIP/2.0 700 High", "SIP/2.0 20 OK",
                                   "SIP/2.0 2OO OK", "SIP/3.0 200 OK", "SIP/2.0 \u0662\u0660\u0660 OK"])
def test_bad_status_lines_are_dropped(start: str) -> None:
    error = sip_error(make(start=start))
    assert error.drop and error.status == 400


def test_malformed_response_is_dropped() -> None:
    assert sip_error(make(start="SIP/2.0 200 OK", drop=("From",))).drop


def test_body_with_nul_bytes_is_framed_by_content_length() -> None:
    body = b"\x00\r\n\r\n\x00binary\xff"
    request = parse_request(make(body=body) + b"trailing junk")
    assert request.body == body


def test_content_length_larger_than_the_datagram_is_400() -> None:
    error = sip_error(make("Content-Length: 10", length=False, body=b"short"))
    assert (error.status, error.drop) == (400, False)


@pytest.mark.parametrize("value", ["-1", "five", "1 2", "\u0665", "1" * 5000])
def test_bad_content_length_is_dropped(value: str) -> None:
    error = sip_error(make(f"Content-Length: {value}", length=False))
    assert (error.status, error.drop) == (400, True)


def test_conflicting_content_lengths_are_dropped_equal_ones_accepted() -> None:
    assert sip_error(make("Content-Length: 1", "l: 2", length=False, body=b"ab")).drop
    assert parse_request(make("Content-Length: 2", "l: 2", length=False, body=b"ab")).body == b"ab"


def test_no_content_length_in_a_datagram_takes_the_rest() -> None:
    assert parse_request(make(length=False, body=b"v=0\r\n")).body == b"v=0\r\n"


def test_bare_lf_line_ends_and_leading_crlf_are_tolerated() -> None:
    data = b"\r\n" + make().replace(b"\r\n", b"\n")
    assert parse_request(data).call_id == "a84b4c76e66710@pc33.example.com"


@pytest.mark.parametrize("data", [b"", b"\r\n\r\n", b"\x00\x01", b"SIP/2.0", b"REGISTER"])
def test_garbage_is_400(data: bytes) -> None:
    assert sip_error(data).status == 400


# --- Limits -------------------------------------------------------------------------------------


def test_max_message_size_is_513() -> None:
    data = make(body=b"x" * 70_000)
    assert sip_error(data).status == 513
    assert parse_request(data, Limits(max_message_size=80_000)).body == b"x" * 70_000
    assert sip_error(make(), Limits(max_message_size=100)).status == 513


def test_too_many_headers_is_400() -> None:
    many = [f"X-H{i}: {i}" for i in range(130)]
    assert sip_error(make(*many)).reason == "Too many headers"
    assert len(parse_request(make(*many), Limits(max_headers=200)).headers) == 137
    assert sip_error(make(), Limits(max_headers=5)).reason == "Too many headers"


def test_line_too_long_is_400() -> None:
    long_line = "X-Long: " + "a" * 9000
    assert sip_error(make(long_line)).reason == "Line too long"
    assert parse_request(make(long_line), Limits(max_line_length=10_000)).headers.get("X-Long")
    assert sip_error(make(), Limits(max_line_length=40)).reason == "Line too long"


def test_header_block_limit_is_513() -> None:
    block = [f"X-H{i}: " + "a" * 500 for i in range(70)]
    assert sip_error(make(*block)).status == 513
    assert parse_request(make(*block), Limits(max_header_block=40_000)).headers.get("X-H69")


# --- stamp_source (RFC 3261 §18.2.1, RFC 3581) ------------------------------------------------


def _stamped(via: str, host: str, port: int) -> Request:
    request = parse_request(make(f"Via: {via}", "Via: SIP/2.0/UDP second.example.com",
                                 drop=("Via",)))
    request.stamp_source(host, port)
    return request


def test_stamp_adds_received_for_a_host_name() -> None:
    request = _stamped("SIP/2.0/UDP pc33.example.com;branch=z9hG4bK1", "192.0.2.4", 5060)
    assert request.vias[0].received == "192.0.2.4" and request.vias[0].rport is None
    assert request.headers.get_all("Via")[1] == "SIP/2.0/UDP second.example.com"


def test_stamp_adds_received_for_a_different_address() -> None:
    request = _stamped("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;received=1.1.1.1", "192.0.2.4", 5060)
    assert request.vias[0].params == (("branch", "z9hG4bK1"), ("received", "192.0.2.4"))


def test_stamp_leaves_a_matching_address_alone() -> None:
    via = "SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK1"
    request = _stamped(via, "192.0.2.4", 40000)
    assert request.headers.get("Via") == via
    ipv6 = _stamped("SIP/2.0/UDP [2001:DB8:0::1];branch=z9hG4bK1", "2001:db8::1", 5060)
    assert ipv6.vias[0].received is None


def test_stamp_fills_rport_and_always_adds_received() -> None:
    request = _stamped("SIP/2.0/UDP 192.0.2.4:5060;rport;branch=z9hG4bK1", "192.0.2.4", 40000)
    assert request.vias[0].params == (
        ("rport", "40000"), ("branch", "z9hG4bK1"), ("received", "192.0.2.4"),
    )
    assert b"Via: SIP/2.0/UDP 192.0.2.4:5060;rport=40000;branch=z9hG4bK1;received=192.0.2.4\r\n" in bytes(request)


def test_stamp_appends_to_the_usual_via_as_written() -> None:
    """The usual shape (';rport' last) keeps the Via as the UA wrote it, the two values added."""
    request = _stamped("SIP/2.0/udp 192.0.2.4:5060;branch=z9hG4bK1;rport", "192.0.2.9", 40000)
    assert request.headers.get_all("Via")[0] == "SIP/2.0/udp 192.0.2.4:5060;branch=z9hG4bK1;rport=40000;received=192.0.2.9"
    assert request.vias[0].params == (("branch", "z9hG4bK1"), ("rport", "40000"), ("received", "192.0.2.9"))
    assert (request.vias[0].transport, request.vias[1].host) == ("UDP", "second.example.com")
    stale = _stamped("SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK1;RECEIVED=1.1.1.1;rport", "192.0.2.9", 7)
    assert stale.headers.get_all("Via")[0] == "SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK1;rport=7;received=192.0.2.9"
    twice = _stamped("SIP/2.0/UDP 192.0.2.4:5060;RPort;branch=z9hG4bK1;rport", "192.0.2.9", 7)
    assert [v for n, v in twice.vias[0].params if n.lower() == "rport"] == ["7", "7"]


def test_stamp_keeps_an_rport_that_has_a_value() -> None:
    request = _stamped("SIP/2.0/UDP 10.0.0.1;rport=1234", "192.0.2.4", 40000)
    assert request.vias[0].rport == "1234" and request.vias[0].received == "192.0.2.4"


def test_stamp_only_touches_the_top_via_of_a_list() -> None:
    request = parse_request(
        make("Via: SIP/2.0/UDP a.example.com;rport, SIP/2.0/UDP b.example.com;rport", drop=("Via",))
    )
    request.stamp_source("192.0.2.7", 7)
    assert [(v.host, v.rport, v.received) for v in request.vias] == [
        ("a.example.com", "7", "192.0.2.7"), ("b.example.com", "", None),
    ]


# --- build_response ---------------------------------------------------------------------------


def test_build_response_copies_the_dialog_headers() -> None:
    request = parse_request(
        make("v: SIP/2.0/TCP proxy.example.com;branch=z9hG4bK2", "Contact: <sip:alice@192.0.2.10>")
    )
    response = build_response(request, 200, "OK", [("Contact", "<sip:alice@192.0.2.10>;expires=3600")],
                              to_tag="abc")
    assert (response.status, response.reason) == (200, "OK")
    assert response.headers.get_all("Via") == request.headers.get_all("Via")
    assert response.headers.get("From") == request.headers.get("From")
    assert response.headers.get("To") == "<sip:alice@example.com>;tag=abc"
    assert response.headers.get("Call-ID") == request.call_id
    assert response.headers.get("CSeq") == "314159 REGISTER"
    assert response.headers.get("Contact") == "<sip:alice@192.0.2.10>;expires=3600"
    assert response.headers.get("Content-Length") == "0"
    again = parse_message(bytes(response))
    assert again == response and again.to.tag == "abc"


def test_build_response_keeps_an_existing_to_tag() -> None:
    request = parse_request(make("To: <sip:alice@example.com>;tag=old", drop=("To",)))
    response = build_response(request, 200, "OK", to_tag="new")
    assert response.headers.get("To") == "<sip:alice@example.com>;tag=old"


def test_build_response_100_has_no_to_tag_and_body_sets_length() -> None:
    request = parse_request(make())
    assert build_response(request, 100, "Trying", to_tag="t").to.tag is None
    response = build_response(request, 400, "Bad Request", body=b"oops\x00")
    assert response.headers.get("Content-Length") == "5" and bytes(response).endswith(b"\r\n\r\noops\x00")


# --- Serialisation ----------------------------------------------------------------------------


def test_bytes_round_trip_keeps_uri_text_and_fields() -> None:
    data = make("Contact: <sip:%61lice@192.0.2.10;transport=tcp?X=%20>;expires=60", body=b"\x00")
    request = parse_request(data)
    assert bytes(request) == data
    assert parse_message(bytes(request)) == request


def test_public_classes_serialise() -> None:
    request = Request(
        Headers([("v", str(Via("UDP", "192.0.2.1", 5060, (("branch", "z9hG4bKa"),)))),
                 ("f", str(NameAddr(parse_uri("sip:a@x"), params=(("tag", "1"),)))),
                 ("t", str(NameAddr(SipURI("sip", "x", user="a")))),
                 ("i", "id1"), ("CSeq", "1 OPTIONS"), ("l", "0")]),
        b"",
        method="OPTIONS",
        uri=SipURI("sip", "x", user="a", port=5060),
    )
    assert bytes(request) == (
        b"OPTIONS sip:a@x:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa\r\n"
        b"From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: id1\r\nCSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert parse_message(bytes(request)) == request


def test_sip_error_carries_status_reason_and_drop() -> None:
    error = SipError(416, "Unsupported URI Scheme")
    assert (error.status, error.reason, error.drop, str(error)) == (
        416, "Unsupported URI Scheme", False, "416 Unsupported URI Scheme",
    )
    assert SipError(400, "x", drop=True).drop

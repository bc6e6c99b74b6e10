"""RFC 4475 and RFC 5118 torture messages against the SIP message layer.

Every file in tests/torture/ (a byte-exact copy of ../shared/reference/sip-torture,
read in binary) has one row in EXPECTED. The oracle is §1 of
../shared/reference/security-and-reliability.md. Each message is checked twice:

* as a UDP datagram, through ``parse_message``: the SipError status (and whether
  it says drop), or, for messages that parse, the fields that carry meaning;
* as a TCP stream, through ``StreamFramer``: how many messages come out, and
  whether the stream then goes idle, waits for more bytes, or must be closed.

Answers that belong to the registrar (416 for an unknown R-URI scheme, 420, 501,
401, the 400 for a non-SIP To in a REGISTER) are not given here; for those the
tests assert what the registrar needs to decide (the URI scheme, the Require
list, the method as sent...).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from registrar_core.sip import (
    AbsoluteURI,
    Message,
    NameAddr,
    Request,
    Response,
    SipError,
    SipURI,
    StreamFramer,
    parse_message,
)

TORTURE = Path(__file__).parent / "torture"
RFC4475 = sorted((TORTURE / "rfc4475").glob("*.dat"))
RFC5118 = sorted(p for p in (TORTURE / "rfc5118").iterdir() if p.is_file())
FILES = {p.name: p for p in RFC4475 + RFC5118}


@dataclass(frozen=True)
class Expect:
    """Expected outcome of one torture message at the message layer."""

    error: int | None = None  # SipError status from parse_message; None: it parses
    reason: str = ""  # a word the SipError reason must contain (it failed for the right cause)
    drop: bool = False  # the SipError says: no answer, discard / close
    frames: int = 1  # messages StreamFramer delivers when the file arrives byte by byte
    stream: str = "idle"  # then: "idle" (all consumed), "wait" (bytes held back), "close"
    left: int = 0  # bytes held back when stream == "wait"
    note: str = ""  # why, where the RFC leaves a choice


ACCEPT = Expect()
RFC5118_SDP = "RFC 5118's Content-Length counts LF line ends, the file has CRLF: the tail waits"

EXPECTED: dict[str, Expect] = {
    # RFC 4475 §3.1.1: valid messages.
    "wsinv.dat": ACCEPT,
    "intmeth.dat": ACCEPT,
    "esc01.dat": ACCEPT,
    "escnull.dat": ACCEPT,
    "esc02.dat": ACCEPT,
    "lwsdisp.dat": ACCEPT,
    "longreq.dat": ACCEPT,
    "dblreq.dat": Expect(
        frames=2, stream="close",
        note="UDP: REGISTER parsed, the trailing INVITE bytes ignored (RFC 3261 §18.3). "
        "TCP: REGISTER, INVITE (its Content-Length is short), then a tail without one",
    ),
    "semiuri.dat": ACCEPT,
    "transports.dat": ACCEPT,
    "mpart01.dat": ACCEPT,
    "unreason.dat": ACCEPT,
    "noreason.dat": ACCEPT,
    # RFC 4475 §3.1.2: invalid messages.
    "badinv01.dat": Expect(400, "Empty element"),
    "clerr.dat": Expect(
        400, "Content-Length", frames=0, stream="wait", left=498,
        note="UDP: 400. TCP: the body never completes, so wait (then the idle timeout closes)",
    ),
    "scalar02.dat": Expect(
        400, "CSeq", note="400 because of the CSeq; Max-Forwards 300 / huge Expires alone would pass"
    ),
    "scalarlg.dat": Expect(400, "CSeq", drop=True, note="a malformed response is dropped"),
    "quotbal.dat": Expect(400, "quote"),
    "ltgtruri.dat": Expect(400, "URI"),
    "lwsruri.dat": Expect(400, "request line"),
    "lwsstart.dat": Expect(
        400, "request line",
        note="reject (RFC allows either): RFC 3261 §7.1 Request-Line is single-SP separated; "
        "no real UA sends it and a lenient split would also accept junk",
    ),
    "trws.dat": Expect(
        400, "request line",
        note="reject (RFC allows either): trailing SP breaks the strict Request-Line ABNF, "
        "same rule as lwsstart",
    ),
    "escruri.dat": Expect(
        400, "Request-URI",
        note="reject (RFC allows either): headers are not allowed in a Request-URI "
        "(RFC 3261 §19.1.1 table); a registrar must not store or act on them",
    ),
    "baddate.dat": Expect(note="parses; Date is kept as raw text, the registrar never uses it"),
    "regbadct.dat": Expect(
        note="reject (RFC allows either) at .contacts with 400: an addr-spec Contact with '?' is "
        "ambiguous (RFC 3261 §20: such URIs MUST be in <>); the rest of the message parses",
    ),
    "badaspec.dat": Expect(
        400, "Whitespace",
        note="reject (RFC allows either): LWS inside <addr-spec> is not in the ABNF; "
        "stripping it would let '< sip:x >' and 'sip:x' differ only by accident",
    ),
    "baddn.dat": Expect(
        400, "Display name",
        note="reject (RFC allows either): ',' in an unquoted display name is not a token; "
        "a liberal guess of where the name ends is how From/To spoofing parses differ",
    ),
    "badvers.dat": Expect(505, "Version"),
    "mismatch01.dat": Expect(400, "CSeq method"),
    "mismatch02.dat": Expect(
        400, "CSeq method",
        note="400 (allowed; 501 preferred): the message layer does not know which methods the "
        "registrar implements, and must refuse a CSeq/method mismatch for known ones (mismatch01)",
    ),
    "bigcode.dat": Expect(400, "status", drop=True),
    "badbranch.dat": Expect(
        note="parses; a bare 'z9hG4bK' branch is the transaction layer's problem (RFC 2543 match)"
    ),
    # RFC 4475 §3.2 / §3.3: valid syntax, the application answers.
    "insuf.dat": Expect(400, "Missing From"),
    "unkscm.dat": Expect(note="app: 416; here the R-URI is an AbsoluteURI"),
    "novelsc.dat": Expect(note="app: 416; here the R-URI is an AbsoluteURI"),
    "unksm2.dat": Expect(note="app: 400 (a REGISTER's To must be sip/sips); here To is isbn:"),
    "bext01.dat": Expect(note="app: 420 with Unsupported; here Require is readable"),
    "inv2543.dat": Expect(
        frames=0, stream="close",
        note="RFC 2543 syntax parses as a datagram; no Content-Length on a stream: close",
    ),
    "ncl.dat": Expect(400, "Content-Length", drop=True, frames=0, stream="close"),
    "mcl01.dat": Expect(400, "Content-Length", drop=True, frames=0, stream="close"),
    "multi01.dat": Expect(400, "Duplicate"),
    "regaut01.dat": Expect(note="app: 401 with a Digest challenge; here Authorization is readable"),
    "bcast.dat": Expect(note="a response: the registrar drops it; here it parses"),
    "invut.dat": Expect(note="app: 415; here Content-Type is readable"),
    "sdp01.dat": Expect(note="app: 406; here Accept is readable"),
    "zeromf.dat": Expect(note="an endpoint processes Max-Forwards: 0"),
    "cparam01.dat": ACCEPT,
    "cparam02.dat": ACCEPT,
    "regescrt.dat": ACCEPT,
    # RFC 5118.
    "ipv6-good": ACCEPT,
    "port-unambiguous": ACCEPT,
    "port-ambiguous": ACCEPT,
    "ipv6-bad": Expect(400, "port", note="sip:2001:db8::10 without [] reads as host:port"),
    "via-received-param-with-delim": Expect(note="strictly invalid; RFC 5118 says parse it"),
    "via-received-param-no-delim": ACCEPT,
    "ipv6-in-sdp": Expect(stream="wait", left=10, note=RFC5118_SDP),
    "mult-ip-in-header": ACCEPT,
    "mult-ip-in-sdp": Expect(stream="wait", left=8, note=RFC5118_SDP),
    "ipv4-mapped-ipv6": Expect(stream="wait", left=9, note=RFC5118_SDP),
    "ipv6-correct-abnf-2-colons": ACCEPT,
    "ipv6-bug-abnf-3-colons": Expect(
        400, "IPv6",
        note="reject (RFC 5954 allows either): ':::' is not an IPv6 address (RFC 4291)",
    ),
}


CHECKS: dict[str, Callable[[Message, bytes], None]] = {}


def check(*names: str) -> Callable[[Callable[[Message, bytes], None]], Callable]:
    """Register field assertions for the named torture messages that parse."""

    def register(func: Callable[[Message, bytes], None]) -> Callable:
        for name in names:
            CHECKS[name] = func
        return func

    return register


def _sip(uri: object) -> SipURI:
    assert isinstance(uri, SipURI), uri
    return uri


def _contacts(m: Message) -> list[NameAddr]:
    contacts = m.contacts
    assert isinstance(contacts, list)
    return contacts


@check("wsinv.dat")
def _wsinv(m: Message, data: bytes) -> None:
    assert isinstance(m, Request) and m.method == "INVITE"
    assert m.uri.param("unknownparam") == ""
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.to.uri.aor == "vivekg@chair-dnrc.example.com" and m.to.tag == "1918181833n"
    assert m.from_.display == r'"J Rosenberg \\\""' and m.from_.tag == "98asjd8"
    assert m.cseq == (9, "INVITE")
    assert m.headers.get("Max-Forwards") == "0068"
    assert m.headers.get("Subject") == ""
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (contact,) = _contacts(m)
    assert contact.display == r'"Quoted string \"\""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert len(m.body) == 150


@check("intmeth.dat")
def _intmeth(m: Message, data: bytes) -> None:
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert isinstance(m, Request) and m.method == method  # app: 501 with Allow
    uri = _sip(m.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert (uri.host, uri.port, uri.params, uri.headers) == ("example.com", None, (), None)
    assert _sip(m.to.uri).user == uri.user
    assert m.to.display == '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"'
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.from_.param("fromParam''~+*_!.-%") == '"работающий"'
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.cseq == (139122385, method)
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


@check("esc01.dat")
def _esc01(m: Message, data: bytes) -> None:
    uri = _sip(m.uri)
    assert (uri.user, uri.host) == ("sips%3Auser%40example.com", "example.net")
    # ':' and '@' must stay escaped in the AOR, or it would read as another URI.
    assert uri.aor == "sips%3Auser%40example.com@example.net"
    assert _sip(m.to.uri).user == "%75se%72" and m.to.uri.aor == "user@example.com"
    assert m.from_.uri.aor == "I%20have%20spaces@example.net"
    (contact,) = _contacts(m)
    assert _sip(contact.uri).user == "cal%6Cer" and contact.uri.aor == "caller@host5.example.net"
    # Never unescape twice: %25%34%31 is "%41" once unescaped, and never "A".
    assert contact.uri.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))
    assert contact.uri.raw == "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31"
    assert m.headers.get("Content-Type") == "application/sdp"  # compact form "C"


@check("escnull.dat")
def _escnull(m: Message, data: bytes) -> None:
    assert isinstance(m, Request) and m.method == "REGISTER"
    assert m.to.uri.aor == "null-%00-null@example.com"
    assert m.from_.uri.aor == "null-%00-null@example.com"
    contacts = _contacts(m)
    assert [_sip(c.uri).user for c in contacts] == ["%00", "%00%00"]
    assert [c.uri.aor for c in contacts] == ["%00@host5.example.com", "%00%00@host5.example.com"]
    assert m.headers.get("Content-Length") == "0"  # "L:0"


@check("esc02.dat")
def _esc02(m: Message, data: bytes) -> None:
    assert isinstance(m, Request) and m.method == "RE%47IST%45R"  # not REGISTER: app 501
    assert m.cseq == (29344, "RE%47IST%45R")
    assert [_sip(c.uri).host for c in _contacts(m)] == ["host1.example.com", "host3.example.com"]
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"  # an unknown header
    assert m.to.display == '"%Z%45"' and m.from_.tag == "f232jadfj23"
    assert m.vias[0].branch == "z9hG4bK209%fzsnel234"


@check("lwsdisp.dat")
def _lwsdisp(m: Message, data: bytes) -> None:
    assert m.from_.display == "caller" and m.from_.uri.aor == "caller@example.com"
    assert m.from_.tag == "323"


@check("longreq.dat")
def _longreq(m: Message, data: bytes) -> None:
    assert len(m.vias) == 34
    assert [v.host for v in m.vias[:3]] == [f"sip{n}.example.com" for n in (33, 32, 31)]
    assert m.vias[-1].received == "192.0.2.5" and m.vias[-1].branch.endswith("branchvalue")
    to = _sip(m.to.uri)
    assert to.port == 6000 and to.param("unknownparam1").startswith("verylong")
    assert m.to.display.startswith('"I have a user name of extreme')
    assert m.from_.tag.endswith("82424") and len(m.from_.params) == 3
    assert m.call_id.endswith("reallylongcallid")
    assert m.cseq == (3882340, "INVITE") and len(m.body) == 150


@check("dblreq.dat")
def _dblreq(m: Message, data: bytes) -> None:
    assert isinstance(m, Request) and m.method == "REGISTER"
    assert m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"  # compact "I"
    assert m.body == b""  # the INVITE bytes after Content-Length 0 are ignored
    assert [c.uri.aor for c in _contacts(m)] == ["j.user@host.example.com"]


@check("semiuri.dat")
def _semiuri(m: Message, data: bytes) -> None:
    uri = _sip(m.uri)
    assert (uri.user, uri.host, uri.params) == ("user;par=u%40example.net", "example.com", ())
    assert m.headers.values("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed",
        "multipart/signed", "message/sip", "message/sipfrag",
    ]


@check("transports.dat")
def _transports(m: Message, data: bytes) -> None:
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert m.call_id == "transports.kijh4akdnaqjkwendsasfdj"


@check("mpart01.dat")
def _mpart01(m: Message, data: bytes) -> None:
    assert len(m.body) == 553 == int(m.headers.get("Content-Length") or -1)
    assert m.body == data[-553:] and b"\x00" in m.body
    assert m.vias[0].rport == ""


@check("unreason.dat")
def _unreason(m: Message, data: bytes) -> None:
    assert isinstance(m, Response) and m.status == 200
    assert m.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(m.body) == 154


@check("noreason.dat")
def _noreason(m: Message, data: bytes) -> None:
    assert isinstance(m, Response) and (m.status, m.reason) == (100, "")


@check("baddate.dat")
def _baddate(m: Message, data: bytes) -> None:
    assert m.headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"


@check("regbadct.dat")
def _regbadct(m: Message, data: bytes) -> None:
    assert isinstance(m, Request) and m.method == "REGISTER"
    with pytest.raises(SipError) as exc:
        _ = m.contacts
    assert exc.value.status == 400 and "<>" in exc.value.reason


@check("badbranch.dat")
def _badbranch(m: Message, data: bytes) -> None:
    assert m.vias[0].branch == "z9hG4bK"


@check("unkscm.dat", "novelsc.dat")
def _unknown_scheme(m: Message, data: bytes) -> None:
    assert isinstance(m, Request) and isinstance(m.uri, AbsoluteURI)
    assert m.uri.scheme in ("nobodyknowsthisscheme", "soap.beep")
    assert m.uri.raw in ("nobodyKnowsThisScheme:totallyopaquecontent", "soap.beep://192.0.2.103:3002")


@check("unksm2.dat")
def _unksm2(m: Message, data: bytes) -> None:
    assert isinstance(m, Request) and m.method == "REGISTER"
    assert isinstance(m.to.uri, AbsoluteURI) and str(m.to.uri) == "isbn:2983792873"
    assert isinstance(m.from_.uri, AbsoluteURI) and m.from_.uri.scheme == "http"
    (contact,) = _contacts(m)
    assert isinstance(contact.uri, AbsoluteURI) and str(contact.uri) == "name:John_Smith"


@check("bext01.dat")
def _bext01(m: Message, data: bytes) -> None:
    assert m.headers.values("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert m.headers.values("Proxy-Require") == [
        "noProxiesSupportThis", "norDoAnyProxiesSupportThis",
    ]
    assert m.vias[0].transport == "TLS"


@check("regaut01.dat")
def _regaut01(m: Message, data: bytes) -> None:
    assert isinstance(m, Request) and m.method == "REGISTER"
    assert m.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


@check("inv2543.dat")
def _inv2543(m: Message, data: bytes) -> None:
    assert m.vias[0].branch is None and m.vias[0].host == "iftgw.example.com"
    assert m.headers.get("Content-Length") is None
    assert m.body == data[data.index(b"\r\n\r\n") + 4 :] and len(m.body) == 105
    assert m.from_.uri.param("user") == "phone"  # inside <>: a URI param
    assert m.to.param("user") == "phone" and m.to.uri.params == ()  # addr-spec: a header param
    assert m.headers.get("Record-Route") == "<sip:UserB@example.com;maddr=ss1.example.com>"


@check("bcast.dat")
def _bcast(m: Message, data: bytes) -> None:
    assert isinstance(m, Response) and m.status == 200
    assert [v.host for v in m.vias] == ["192.0.2.198", "255.255.255.255"]


@check("invut.dat")
def _invut(m: Message, data: bytes) -> None:
    assert m.headers.get("Content-Type") == "application/unknownformat"
    assert m.body.startswith(b"<audio>") and len(m.body) == 40


@check("sdp01.dat")
def _sdp01(m: Message, data: bytes) -> None:
    assert m.headers.values("Accept") == ["text/nobodyKnowsThis"]
    assert m.headers.get("Content-Type") == "application/sdp"


@check("zeromf.dat")
def _zeromf(m: Message, data: bytes) -> None:
    assert m.headers.get("Max-Forwards") == "0"


@check("cparam01.dat")
def _cparam01(m: Message, data: bytes) -> None:
    (contact,) = _contacts(m)
    assert not contact.bracketed
    assert contact.param("unknownparam") == "" and contact.uri.params == ()
    assert contact.uri.raw == "sip:+19725552222@gw1.example.net"
    assert str(contact) == "<sip:+19725552222@gw1.example.net>;unknownparam"


@check("cparam02.dat")
def _cparam02(m: Message, data: bytes) -> None:
    (contact,) = _contacts(m)
    assert contact.bracketed and contact.params == ()
    assert contact.uri.param("unknownparam") == ""
    assert str(contact) == "<sip:+19725552222@gw1.example.net;unknownparam>"


@check("regescrt.dat")
def _regescrt(m: Message, data: bytes) -> None:
    (contact,) = _contacts(m)  # compact "M"
    uri = _sip(contact.uri)
    assert uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert uri.raw == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    assert str(contact) == "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"
    assert uri.aor == "user@example.com"


@check("ipv6-good")
def _ipv6_good(m: Message, data: bytes) -> None:
    uri = _sip(m.uri)
    assert (uri.host, uri.port) == ("[2001:db8::10]", None)
    assert m.vias[0].host == "[2001:db8::9:1]"
    assert [c.uri.aor for c in _contacts(m)] == ["caller@[2001:db8::1]"]


@check("port-unambiguous")
def _port_unambiguous(m: Message, data: bytes) -> None:
    uri = _sip(m.uri)
    assert (uri.host, uri.port) == ("[2001:db8::10]", 5070)


@check("port-ambiguous")
def _port_ambiguous(m: Message, data: bytes) -> None:
    uri = _sip(m.uri)
    assert (uri.host, uri.port) == ("[2001:db8::10:5070]", None)  # 5070 is part of the address


@check("via-received-param-with-delim")
def _received_with_delim(m: Message, data: bytes) -> None:
    assert m.vias[0].received == "[2001:db8::9:255]"
    assert m.vias[0].branch == "z9hG4bKas3-111"


@check("via-received-param-no-delim")
def _received_no_delim(m: Message, data: bytes) -> None:
    assert m.vias[0].received == "2001:db8::9:255"
    assert m.vias[0].branch == "z9hG4bKas3"


@check("ipv6-in-sdp", "mult-ip-in-sdp", "ipv4-mapped-ipv6")
def _sdp_bodies(m: Message, data: bytes) -> None:
    length = int(m.headers.get("Content-Length") or -1)
    start = data.index(b"\r\n\r\n") + 4
    assert m.body == data[start : start + length]  # exactly Content-Length bytes
    assert len(data) - start > length  # the datagram held more: ignored
    assert m.body.startswith(b"v=0\r\n") and b"IN IP6 " in m.body


@check("mult-ip-in-header")
def _mult_ip_in_header(m: Message, data: bytes) -> None:
    assert [(v.transport, v.host, v.port) for v in m.vias] == [
        ("UDP", "[2001:db8::9:1]", 6050),
        ("UDP", "192.0.2.1", None),
        ("TCP", "[2001:db8::9:255]", None),
    ]
    assert m.vias[2].received == "192.0.2.200"


@check("ipv6-correct-abnf-2-colons")
def _two_colons(m: Message, data: bytes) -> None:
    assert _sip(m.uri).host == "[2001:db8::192.0.2.1]"
    assert _sip(m.to.uri).host == "[2001:db8::192.0.2.1]"


def _file_ids() -> list:
    return [pytest.param(name, id=name) for name in sorted(FILES)]


def test_corpus_is_complete_and_covered() -> None:
    """49 + 12 files, byte-exact, each with an expectation; parsed ones with field checks."""
    assert len(RFC4475) == 49 and len(RFC5118) == 12
    assert set(FILES) == set(EXPECTED)
    sums = {}
    for line in (TORTURE / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[Path(name).name] = digest
    assert {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in FILES.items()} == sums
    assert set(CHECKS) == {name for name, e in EXPECTED.items() if e.error is None}
    assert all(e.stream in ("idle", "wait", "close") for e in EXPECTED.values())


@pytest.mark.parametrize("name", _file_ids())
def test_datagram(name: str) -> None:
    """The message as one UDP datagram through parse_message."""
    data = FILES[name].read_bytes()
    expect = EXPECTED[name]
    if expect.error is not None:
        with pytest.raises(SipError) as exc:
            parse_message(data)
        assert (exc.value.status, exc.value.drop) == (expect.error, expect.drop)
        assert expect.reason.lower() in exc.value.reason.lower()
        return
    message = parse_message(data)
    CHECKS[name](message, data)


def _assert_in_order(frames: list[bytes], data: bytes) -> None:
    """The frames are consecutive slices of ``data``, with at most CRLFs between them."""
    pos = 0
    for frame in frames:
        start = data.find(frame, pos)
        assert start >= 0 and data[pos:start].strip(b"\r\n") == b""
        pos = start + len(frame)


@pytest.mark.parametrize("name", _file_ids())
def test_stream(name: str) -> None:
    """The message as a TCP stream through StreamFramer: byte by byte, then in one piece."""
    data = FILES[name].read_bytes()
    expect = EXPECTED[name]

    framer = StreamFramer()
    frames: list[bytes] = []
    error: SipError | None = None
    for i in range(len(data)):
        try:
            frames += framer.feed(data[i : i + 1])
        except SipError as exc:
            error = exc
            break
    assert len(frames) == expect.frames
    _assert_in_order(frames, data)
    if expect.stream == "close":
        assert error is not None and error.drop
    else:
        assert error is None
        assert framer.buffered == (expect.left if expect.stream == "wait" else 0)

    whole = StreamFramer()
    if expect.stream == "close":
        with pytest.raises(SipError) as exc:
            whole.feed(data)
        assert exc.value.drop
    else:
        assert whole.feed(data) == frames
        assert whole.buffered == framer.buffered

    if expect.error is None and frames:
        # A framed message means the same as the datagram it came from.
        assert parse_message(frames[0]) == parse_message(data)

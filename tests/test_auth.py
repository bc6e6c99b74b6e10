"""Digest authentication and the defences against enumeration, brute force, hijack and floods."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import re
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrar_core.auth import digest
from registrar_core.config import Config, build_config, load_toml
from registrar_core.security import IpGuard
from registrar_core.sip import Response

from .processes import run_sipp, write_injection
from .sipclient import UdpPhone, authorization, challenges, register_bytes, request_bytes, server_address

PASSWORD = "correct horse"


def test_rfc2617_vector():
    h1 = digest.ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    got = digest.response("MD5", h1, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "00000001", "0a4f113b",
                          "auth", "GET", "/dir/index.html")
    assert got == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize("algorithm, expected", [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_vectors(algorithm, expected):
    h1 = digest.ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    got = digest.response(algorithm, h1, "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "00000001",
                          "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "auth", "GET", "/dir/index.html")
    assert got == expected


def test_sha512_256_is_the_truncated_sha512_variant():
    import hashlib

    assert digest.hash_hex("SHA-512-256", "Mufasa") == hashlib.new("sha512_256", b"Mufasa").hexdigest()


@pytest.mark.parametrize("text, expected", [
    ('username="alice", realm="example.com", nc=00000001', {"username": "alice", "realm": "example.com", "nc": "00000001"}),
    ('  ,uri = "sip:a, b" ,qop=auth ,', {"uri": "sip:a, b", "qop": "auth"}),
    (r'username="al\"ice", opaque="a\\b"', {"username": 'al"ice', "opaque": "a\\b"}),
    ('realm="", x=', {"realm": "", "x": ""}),
    ('Response=\t"AbC"', {"response": "AbC"}),
    ('a= \t"x\\"y", b=  z , c="d"', {"a": 'x"y', "b": "z", "c": "d"}),  # escapes and spaces in one text
    ('a="1", b=2,c="3"', {"a": "1", "b": "2", "c": "3"}),
])
def test_digest_parameters_parsed(text, expected):
    assert params(text) == list(expected.items())


def params(text: str) -> list[tuple[str, str]]:
    """digest._param's pairs, one after the other, names lower-cased as parse_authorization reads them."""
    pairs, i, escapes = [], 0, "\\" in text
    while True:
        name, value, i = digest._param(text, i, escapes)
        if i < 0:
            return pairs
        pairs.append((name.lower(), value))


def params_before_19_2(text: str) -> list[tuple[str, str]]:
    """The parameters as split before the parse went character by character (a string method
    per separator, a list of pairs): the oracle of the property below."""
    found: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        equals = text.find("=", i)
        if equals < 0:
            if text[i:].strip(" \t,"):
                raise digest.DigestError("malformed Digest parameters")
            return found
        name = text[i:equals].lstrip(" \t,").strip().lower()
        i = equals + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            value, i = digest._quoted(name, text, i + 1)[1:]
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            value, i = text[i:end].strip(), end
        found.append((name, value))


def parsed(split, text: str) -> object:
    try:
        return split(text)
    except digest.DigestError as exc:
        return str(exc)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(['nonce="a, b"', "nc=00000001", "Realm", "=", ",", ", ", " ", "\t", '"', "\\",
                                 '\\"', "qop = auth ", "x=\u00a0y\u00a0", "\u3000", "\n", "é", 'uri="sip:r"',
                                 "opaque=", "A=1"]), max_size=8).map("".join))
def test_digest_parameters_split_as_before(text):
    assert parsed(params, text) == parsed(params_before_19_2, text)


@pytest.mark.parametrize("text, problem", [
    ('username="alice', "unterminated quoted string"),
    (r'username="alice\"', "unterminated quoted string"),
    ('username="a", realm', "malformed Digest parameters"),
    (r'a="\\", b="x', "unterminated quoted string"),
    ('nonce="a", Nonce="b"', "duplicate Digest parameter nonce"),
    ('a=1, b=2, a=1', "duplicate Digest parameter a"),
    ('username="u", realm="r", nonce="n", uri="sip:r", response="d", username="v"', "duplicate Digest parameter username"),
    ('username="u", realm="r", nonce="n", uri="sip:r"', "lack response"),
    ('username="u", realm="r", nonce="n", uri="sip:r", response="d", algorithm=MD4', "unsupported algorithm MD4"),
])
def test_malformed_digest_parameters_are_refused(text, problem):
    with pytest.raises(digest.DigestError, match=problem):
        digest.parse_authorization("Digest " + text)


@pytest.mark.parametrize("value", [
    'Digest username="u", realm="r", nonce="n", uri="sip:r", response="d"',
    ' Digest username="u", realm="r", nonce="n", uri="sip:r", response="d" ',
    'digest username="u", realm="r", nonce="n", uri="sip:r", response="d"\u00a0',
    'DIGEST  username="u", realm="r", nonce="n", uri="sip:r", response="d",',
])
def test_digest_scheme_in_any_case_and_spacing(value):
    creds = digest.parse_authorization(value)
    assert (creds.username, creds.realm, creds.nonce, creds.uri, creds.response) == ("u", "r", "n", "sip:r", "d")


def test_response_matched_in_either_case_and_never_when_not_ascii():
    assert digest.matches("0a9f", "0a9f") and digest.matches("0a9f", "0A9F")
    assert not digest.matches("0a9f", "0a9e") and not digest.matches("0a9f", "0a9") and not digest.matches("0a9f", "0a9é")


def test_digest_credentials_parsed():
    creds = digest.parse_authorization('Digest Username="u", realm="r", nonce="n", uri="sip:r", response="d", '
                                       'algorithm=sha-256, cnonce="c", qop=auth, nc=00000001, opaque="o", x=1')
    assert (creds.username, creds.realm, creds.nonce, creds.uri, creds.response, creds.algorithm, creds.qop,
            creds.nc, creds.cnonce, creds.opaque) == ("u", "r", "n", "sip:r", "d", "SHA-256", "auth", "00000001", "c", "o")
    assert digest.parse_authorization('Basic dTpw') is None


@pytest.mark.parametrize("size", [16, 32, 64, 65, 200])
def test_nonce_mac_is_keyed_blake2s(size):
    import hashlib

    from registrar_core.auth.nonce import NonceMac

    key = bytes(range(256))[:size]
    keyed = key if size <= 32 else hashlib.sha256(key).digest()  # longer keys are hashed first
    mac = NonceMac(key)
    for message in (b"", b"x" * 16 + b"example.com", bytes(range(200))):
        assert mac.digest(message) == hashlib.blake2s(message, key=keyed, digest_size=16).digest()
    assert mac.digest(b"a") != NonceMac(key + b"!").digest(b"a"), "the key decides"


def test_nonce_round_trip_and_nonce_count():
    from registrar_core.auth.nonce import FORGED, STALE, NonceFactory

    nonces = NonceFactory(b"k" * 32)
    nonce = nonces.make("example.com")
    assert re.fullmatch(r"[0-9a-f]{64}", nonce)
    nid = nonces.check(nonce, "example.com")
    assert nid == 0, "the first nonce made"
    assert nonces.check(nonce, "example.org") == FORGED
    # A MAC character changed; a character that is no hex digit, whitespace (which bytes.fromhex
    # would skip), a character more or less.
    assert nonces.check(nonce[:-1] + ("a" if nonce[-1] != "a" else "b"), "example.com") == FORGED
    assert nonces.check("é" + nonce[1:], "example.com") == FORGED
    assert nonces.check(nonce[:-2] + " " + nonce[-1], "example.com") == FORGED
    assert nonces.check(nonce[:2] + " " + nonce[2:], "example.com") == FORGED
    assert nonces.check(nonce[:-1], "example.com") == FORGED
    assert NonceFactory(b"k" * 32).check(nonce, "example.com") == STALE  # another boot
    # The base64url nonces of versions before hex: genuine ones (an earlier boot) stale, not failures.
    legacy = base64.urlsafe_b64encode(bytes.fromhex(nonce)).rstrip(b"=").decode()
    assert len(legacy) == 43 and NonceFactory(b"k" * 32).check(legacy, "example.com") == STALE
    assert NonceFactory(b"k" * 32).check(legacy[:-2] + ("A" if legacy[-2] != "A" else "B") + legacy[-1],
                                         "example.com") == FORGED
    assert nonces.nc_fresh(nid, 1)
    nonces.accept_nc(nid, 1)
    assert not nonces.nc_fresh(nid, 1) and nonces.nc_fresh(nid, 2)
    other = nonces.make("example.com")
    assert nonces.check(other, "example.com") == 1 and nonces.nc_fresh(1, 1), "each nonce counts apart"
    assert not nonces.nc_fresh(nid, 1), "and leaves the others' counts alone"


def test_nonce_past_its_lifetime_or_the_count_window_is_stale():
    from registrar_core.auth.nonce import STALE, NonceFactory

    now = [1_000_000.0]
    nonces = NonceFactory(b"k" * 32, clock=lambda: now[0], window=4)
    first = nonces.make("example.com")
    now[0] += nonces.lifetime
    assert nonces.check(first, "example.com") == STALE, "expired"
    now[0] -= nonces.lifetime
    nonces.accept_nc(nonces.check(first, "example.com"), 7)
    later = [nonces.make("example.com") for _ in range(3)]
    assert nonces.check(first, "example.com") == 0, "the window holds the last 4 nonces made"
    fifth = nonces.make("example.com")
    assert nonces.check(first, "example.com") == STALE, "its count slot now belongs to a newer nonce"
    assert nonces.check(fifth, "example.com") == 4 and nonces.nc_fresh(4, 1), "which starts from nothing"
    assert [nonces.check(n, "example.com") for n in later] == [1, 2, 3]


def test_recent_nonce_is_known_as_made_and_older_ones_by_their_mac():
    from registrar_core.auth.nonce import FORGED, NonceFactory, NonceMac

    nonces = NonceFactory(b"k" * 32, recent=2)
    first, second, third = (nonces.make("example.com") for _ in range(3))  # third takes first's slot
    assert [nonces.check(n, "example.com") for n in (first, second, third)] == [0, 1, 2]
    nonces._mac_of = NonceMac(b"another key")  # from now on no MAC of ours verifies
    assert nonces.check(first, "example.com") == FORGED, "out of the recent ones: its MAC decides"
    assert [nonces.check(n, "example.com") for n in (second, third)] == [1, 2], "recent: compared as made"
    assert nonces.check(third, "example.org") == FORGED, "made for another realm"


@pytest.fixture
async def auth_server(make_server):
    srv = await make_server(auth=True)
    await srv.core.subscribers.add("alice@example.com", PASSWORD)
    await srv.core.subscribers.add("bob@example.com", "bobs secret")
    return srv


@pytest.fixture
async def phone(auth_server):
    p = await UdpPhone(server_address(auth_server)).open()
    yield p
    p.close()


async def register(phone, aor="alice@example.com", *, auth: str | None = None, call_id="c@t", cseq=1,
                   contacts=None, expires=3600) -> Response:
    extra = [auth] if auth else []
    return await phone.register(aor, contacts=contacts, call_id=call_id, cseq=cseq, extra=extra, expires=expires)


async def test_default_challenge_is_md5_alone_with_qop(auth_server, phone):
    r = await register(phone)
    assert r.status == 401
    chs = challenges(r)
    assert [c["algorithm"] for c in chs] == ["MD5"], "baresip 1.0, sipsak, sipp 3.6 fail on SHA-256"
    assert all(c["qop"] == "auth" and c["realm"] == "example.com" for c in chs)
    assert re.fullmatch(r"[0-9a-f]{64}", chs[0]["nonce"]), "nonce is hex: no character any client quotes or escapes"
    assert auth_server.core.fetch_contacts("alice@example.com").count == 0


async def test_configured_algorithms_challenged_in_their_order(make_server):
    srv = await make_server(auth=True, auth_algorithms="SHA-256,MD5")
    phone = await UdpPhone(server_address(srv)).open()
    assert [c["algorithm"] for c in challenges(await register(phone))] == ["SHA-256", "MD5"]
    phone.close()


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-512-256"])
async def test_register_with_each_algorithm(make_server, algorithm):
    srv = await make_server(auth=True, auth_algorithms=["SHA-256", "SHA-512-256", "MD5"])
    await srv.core.subscribers.add("alice@example.com", PASSWORD)
    phone = await UdpPhone(server_address(srv)).open()
    ch = challenges(await register(phone))[0]
    r = await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com", algorithm=algorithm),
                       cseq=2)
    assert r.status == 200
    assert srv.core.fetch_contacts("alice@example.com").count == 1
    phone.close()


async def test_each_algorithm_in_turn_to_one_request_uri(make_server):
    """H(method:uri) is remembered per Request-URI: a phone changing algorithm is checked with its own."""
    srv = await make_server(auth=True, auth_algorithms=["SHA-256", "SHA-512-256", "MD5"])
    await srv.core.subscribers.add("alice@example.com", PASSWORD)
    phone = await UdpPhone(server_address(srv)).open()
    cseq = 1
    for algorithm, password, status in (("MD5", PASSWORD, 200), ("SHA-256", PASSWORD, 200), ("MD5", "wrong", 401),
                                        ("SHA-512-256", PASSWORD, 200), ("SHA-256", "wrong", 401), ("MD5", PASSWORD, 200)):
        ch = challenges(await register(phone, cseq=cseq))[0]
        r = await register(phone, auth=authorization(ch, "alice", password, "sip:example.com", algorithm=algorithm),
                           cseq=cseq + 1)
        assert r.status == status, (algorithm, password)
        cseq += 2
    phone.close()


async def test_algorithm_not_offered_is_refused(auth_server, phone):
    ch = challenges(await register(phone))[0]
    r = await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com", algorithm="SHA-256"),
                       cseq=2)
    assert r.status == 401
    assert auth_server.core.fetch_contacts("alice@example.com").count == 0


async def test_challenges_counted_apart_from_rejections(auth_server, phone):
    ch = challenges(await register(phone))[0]
    assert (await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com"), cseq=2)).status == 200
    ch = challenges(await register(phone, call_id="w@t"))[0]
    wrong = await register(phone, auth=authorization(ch, "alice", "wrong", "sip:example.com"), call_id="w@t", cseq=2)
    assert wrong.status == 401
    stats = auth_server.core.snapshot_stats()
    assert (stats["accepted_regs"], stats["challenged"], stats["rejected_regs"]) == (1, 2, 1), \
        "two challenges, one wrong password"


async def test_foreign_domain_is_404_before_authentication(make_server):
    srv = await make_server(auth=True, domain=["example.com"])
    await srv.core.subscribers.add("alice@example.com", PASSWORD)
    phone = await UdpPhone(server_address(srv)).open()
    r = await register(phone, "alice@elsewhere.org")
    assert (r.status, r.reason) == (404, "Not Found"), "RFC 3261 §10.3 step 1 comes before step 3"
    assert not r.headers.get("WWW-Authenticate")
    assert (await register(phone)).status == 401, "a served domain is still challenged"
    phone.close()


async def test_unknown_require_is_420_before_authentication(auth_server, phone):
    r = await phone.register("alice@example.com", extra=["Require: foo"])
    assert r.status == 420 and r.headers.get("Unsupported") == "foo", "step 2 comes before step 3"
    assert auth_server.core.fetch_contacts("alice@example.com").count == 0


async def test_lower_cseq_on_the_same_call_id_fails_with_auth_on(auth_server, phone):
    ch = challenges(await register(phone, call_id="o@t", cseq=1))[0]
    ok = await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com", nc=1),
                        call_id="o@t", cseq=5, expires=600)
    assert ok.status == 200
    late = await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com", nc=2),
                          call_id="o@t", cseq=4, expires=0)
    assert late.status == 500 and "Out of order" in late.headers.get("P-Registrar-Error")
    [binding] = auth_server.core.fetch_contacts("alice@example.com")
    assert binding.cseq == 5, "the out-of-order REGISTER changed nothing"
    same = await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com", nc=3),
                          call_id="o@t", cseq=5, expires=0)
    assert same.status == 200 and auth_server.core.fetch_contacts("alice@example.com").count == 1, \
        "an equal CSeq is the documented no-op 200"


async def test_retransmitted_register_without_credentials_gets_a_fresh_401(auth_server, phone):
    data = register_bytes("alice@example.com", [phone.contact], local=phone.local)
    first = await phone.send(data)
    again = await phone.send(data)  # a UDP retransmission: same branch, same bytes
    assert (first.status, again.status) == (401, 401)
    assert challenges(first)[0]["nonce"] != challenges(again)[0]["nonce"], "answered afresh, statelessly"
    assert auth_server.core.snapshot_stats()["transactions"] == 0, "no transaction kept for a challenge"
    ok = await register(phone, auth=authorization(challenges(first)[0], "alice", PASSWORD, "sip:example.com"),
                        cseq=2)
    assert ok.status == 200, "the first challenge's nonce still answers"
    stats = auth_server.core.snapshot_stats()
    assert stats["transactions"] == 1, "the authorized REGISTER's transaction is kept"
    assert (stats["challenged"], stats["retransmissions"]) == (2, 0), "the retransmission was challenged anew"


async def test_unknown_auth_scheme_gets_digest_challenge(auth_server, phone):
    r = await register(phone, auth='Authorization: NoOneKnowsThisScheme opaque-data=here')
    assert r.status == 401 and challenges(r)


async def test_replayed_nc_is_stale_and_nc_must_grow(auth_server, phone):
    ch = challenges(await register(phone))[0]
    first = authorization(ch, "alice", PASSWORD, "sip:example.com", nc=1)
    assert (await register(phone, auth=first, cseq=2)).status == 200
    replay = await register(phone, auth=first, cseq=3, expires=0)
    assert replay.status == 401 and challenges(replay)[0].get("stale") == "true"
    assert auth_server.core.fetch_contacts("alice@example.com").count == 1, "the replay changed nothing"
    nc2 = authorization(ch, "alice", PASSWORD, "sip:example.com", nc=2)
    assert (await register(phone, auth=nc2, cseq=4)).status == 200


async def test_nc_zero_rejected(auth_server, phone):
    ch = challenges(await register(phone))[0]
    r = await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com", nc=0), cseq=2)
    assert r.status == 401 and "stale" not in challenges(r)[0]


async def test_wrong_uri_and_wrong_realm(auth_server, phone):
    ch = challenges(await register(phone))[0]
    wrong_uri = await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:other.example.com"), cseq=2)
    assert wrong_uri.status == 400
    wrong_realm = await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com",
                                                           realm="evil.example"), cseq=3)
    assert wrong_realm.status == 401
    assert auth_server.core.fetch_contacts("alice@example.com").count == 0


async def test_expired_nonce_is_stale_and_forged_is_not(auth_server, phone):
    auth_server.core.authenticator.nonces.lifetime = 1
    ch = challenges(await register(phone))[0]
    forged_nonce = ch["nonce"][:-2] + ("AA" if not ch["nonce"].endswith("AA") else "BB")
    forged = await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com", nonce=forged_nonce),
                            cseq=2)
    assert forged.status == 401 and "stale" not in challenges(forged)[0]
    await asyncio.sleep(1.2)
    late = await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com"), cseq=3)
    assert late.status == 401 and challenges(late)[0]["stale"] == "true"
    assert auth_server.core.fetch_contacts("alice@example.com").count == 0


async def test_restart_between_challenge_and_answer_is_stale_then_ok(make_server, short_dir):
    settings = dict(auth=True, db=str(short_dir / "restart.db"))
    first = await make_server(**settings)
    await first.core.subscribers.add("alice@example.com", PASSWORD)
    phone = await UdpPhone(server_address(first)).open()
    ch = challenges(await register(phone))[0]
    await first.stop()
    second = await make_server(**settings, listen=[f"udp:127.0.0.1:{server_address(first)[1]}"])
    stale = await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com"), cseq=2)
    assert stale.status == 401 and challenges(stale)[0]["stale"] == "true"
    fresh = challenges(stale)[0]
    assert (await register(phone, auth=authorization(fresh, "alice", PASSWORD, "sip:example.com"), cseq=3)).status == 200
    assert second.core.fetch_contacts("alice@example.com").count == 1
    phone.close()


async def test_hijack_auth_as_alice_register_bob_is_403(auth_server, phone):
    ch = challenges(await register(phone, "bob@example.com"))[0]
    r = await register(phone, "bob@example.com", auth=authorization(ch, "alice", PASSWORD, "sip:example.com"), cseq=2)
    assert r.status == 403
    assert auth_server.core.fetch_contacts("bob@example.com").count == 0


@pytest.mark.parametrize("to, from_aor, allowed", [
    ("sip:alice@example.com", "alice@example.com", True),
    ("sip:alice@Example.COM", "alice@example.com", True),  # the host in any case
    ("sip:alice@example.com", "alice@Example.COM", True),
    ("sip:bob@example.com", "alice@example.com", False),  # another's AOR in To
    ("sip:alice@example.com", "bob@example.com", False),  # or in From
    ("sip:alice@example.org", "alice@example.org", False),  # another realm
    ("sip:Alice@example.com", "Alice@example.com", False),  # the user is case-sensitive
])
def test_authorised_for_its_own_aor_in_to_and_from(to, from_aor, allowed):
    from registrar_core.auth import authorised_for
    from registrar_core.sip import parse_message

    request = parse_message(request_bytes("REGISTER", to, from_aor, local=("127.0.0.1", 5062)))
    assert authorised_for(request, "alice", "example.com") is allowed


async def test_unauthenticated_wildcard_removal_refused(auth_server, phone):
    ch = challenges(await register(phone))[0]
    await register(phone, auth=authorization(ch, "alice", PASSWORD, "sip:example.com"), cseq=2)
    r = await register(phone, contacts=["*"], expires=0, call_id="other@t")
    assert r.status == 401
    assert auth_server.core.fetch_contacts("alice@example.com").count == 1


def _fingerprint(r: Response, user: str) -> list[tuple[str, str]]:
    """Status line and headers, with what legitimately varies masked: the user asked about,
    tags, branch, Call-ID and nonce."""
    out = [("status", f"{r.status} {r.reason}")]
    for name, value in r.headers:
        value = value.replace(user, "USER")
        value = re.sub(r"(tag|branch|rport)=[^;>,]+", r"\1=*", value)
        value = re.sub(r'nonce="[^"]+"', 'nonce="*"', value)
        out.append((name, "*" if name == "Call-ID" else value))
    return out


async def test_unknown_user_and_wrong_password_answer_identically(auth_server, phone):
    fingerprints = []
    for user, password in (("alice", "wrong password"), ("nosuchuser", "whatever")):
        aor = f"{user}@example.com"
        ch = challenges(await register(phone, aor, call_id=f"{user}@t"))[0]
        r = await register(phone, aor, auth=authorization(ch, user, password, "sip:example.com"),
                           call_id=f"{user}@t", cseq=2)
        fingerprints.append(_fingerprint(r, user))
    assert fingerprints[0] == fingerprints[1]
    assert fingerprints[0][0] == ("status", "401 Unauthorized")


async def guess(phone, password: str, call_id: str, user: str = "alice") -> Response:
    ch = challenges(await register(phone, f"{user}@example.com", call_id=call_id))[0]
    return await register(phone, f"{user}@example.com", auth=authorization(ch, user, password, "sip:example.com"),
                          call_id=call_id, cseq=2)


async def test_failed_auth_budget_bans_the_address_not_the_user(make_server, caplog):
    srv = await make_server(auth=True, auth_fail_budget=3, trusted="127.0.0.1")
    await srv.core.subscribers.add("alice@example.com", PASSWORD)
    attacker = await UdpPhone(server_address(srv)).open("127.0.0.2")
    owner = await UdpPhone(server_address(srv)).open("127.0.0.1")
    caplog.set_level(logging.WARNING, logger="sipconsole.security")
    assert [(await guess(attacker, "guess", f"g{i}@t")).status for i in range(2)] == [401, 401]
    over = await guess(attacker, "guess", "g3@t")
    assert (over.status, over.reason, over.headers.get("Retry-After")) == (403, "Try later", "300")
    messages = [m.getMessage() for m in caplog.records]
    assert any(re.fullmatch(r'SIPSEC user-banned src=127\.0\.0\.2:\d+ user="alice"', m) for m in messages)
    assert any(re.fullmatch(r'SIPSEC ban src=127\.0\.0\.2:\d+ user="alice"', m) for m in messages)
    assert srv.core.snapshot_stats()["banned_ips"] == ["127.0.0.2"]
    assert (await guess(owner, PASSWORD, "own@t")).status == 200, "the real user is not locked out"
    attacker.send_raw(register_bytes("alice@example.com", [attacker.contact], local=attacker.local))
    with pytest.raises(asyncio.TimeoutError):
        await attacker.receive(timeout=0.4)  # the banned address gets nothing at all
    attacker.close()
    owner.close()


async def test_trusted_peer_over_auth_budget_is_refused_for_that_user_only(make_server):
    assert Config().trusted == ("127.0.0.0/8", "::1"), "loopback is trusted by default"
    srv = await make_server(auth=True, auth_fail_budget=3, trusted="127.0.0.0/8,::1")
    await srv.core.subscribers.add("alice@example.com", PASSWORD)
    await srv.core.subscribers.add("bob@example.com", "bobs secret")
    proxy = await UdpPhone(server_address(srv)).open("127.0.0.1")
    for i in range(3):
        await guess(proxy, "guess", f"t{i}@t")
    locked = await guess(proxy, PASSWORD, "right@t")
    assert (locked.status, locked.reason) == (403, "Try later")
    assert 0 < int(locked.headers.get("Retry-After")) <= 300
    assert (await guess(proxy, "bobs secret", "bob@t", user="bob")).status == 200, "other users pass the proxy"
    assert srv.core.snapshot_stats()["banned_ips"] == [], "a trusted peer is never banned"
    proxy.close()


async def test_flood_from_untrusted_address_banned_trusted_never(make_server, caplog):
    srv = await make_server(auth=False, ip_budget=20, trusted="127.0.0.1")
    caplog.set_level(logging.WARNING, logger="sipconsole.security")
    host, _ = server_address(srv)

    async def flood(phone) -> int:
        for _ in range(60):
            phone.send_raw(request_bytes("OPTIONS", f"sip:{host}", "flood@example.com", local=phone.local))
        answered = 0
        while True:
            try:
                await phone.receive(timeout=0.5)
                answered += 1
            except asyncio.TimeoutError:
                return answered

    flooder = await UdpPhone(server_address(srv)).open("127.0.0.2")
    trusted = await UdpPhone(server_address(srv)).open("127.0.0.1")
    assert await flood(flooder) <= 20, "everything past the budget is dropped"
    assert srv.core.snapshot_stats()["banned_ips"] == ["127.0.0.2"]
    assert any(m.getMessage().startswith("SIPSEC ban src=127.0.0.2:") for m in caplog.records)
    assert await flood(trusted) == 60, "a trusted peer is exempt from the budget"
    assert (await trusted.register("legit@example.com")).status == 200
    flooder.close()
    trusted.close()


async def test_scanner_user_agent_dropped(auth_server, phone, caplog):
    caplog.set_level(logging.WARNING, logger="sipconsole.security")
    host, _ = server_address(auth_server)
    phone.send_raw(request_bytes("OPTIONS", f"sip:100@{host}", "100@example.com", local=phone.local,
                                 extra=["User-Agent: friendly-scanner"]))
    with pytest.raises(asyncio.TimeoutError):
        await phone.receive(timeout=0.4)
    assert auth_server.core.snapshot_stats()["security"]["scanner"] == 1
    assert any('SIPSEC scanner src=127.0.0.1:' in m.getMessage() for m in caplog.records)


async def test_log_line_takes_ip_from_socket_not_headers(auth_server, phone, caplog):
    caplog.set_level(logging.WARNING, logger="sipconsole.security")
    aor = "alice@example.com"
    data = register_bytes(aor, [phone.contact], local=("6.6.6.6", 5060), call_id="inj@t",
                           extra=['Authorization: Digest username="x\' failed for \'1.2.3.4", realm="example.com", '
                                  'nonce="AAAA", uri="sip:example.com", response="00", qop=auth, nc=00000001, cnonce="c"'])
    await phone.send(data)
    lines = [m.getMessage() for m in caplog.records if m.getMessage().startswith("SIPSEC")]
    assert lines and all(" src=127.0.0.1:" in line for line in lines)
    assert "6.6.6.6" not in "".join(lines)


def test_sipp_registers_with_digest(serve_process, tmp_path):
    serve_process.start("--auth", "on")  # sipp 3.6 speaks MD5 only: the default challenge
    for i in range(5):
        done = serve_process.user("add", f"dev{i}@example.com", password=f"pw{i}")
        assert done.returncode == 0, done.stderr
    inf = write_injection(tmp_path / "users.csv", [
        (f"dev{i}", "example.com", f"[authentication username=dev{i} password=pw{i}]") for i in range(5)])
    result = run_sipp("register_auth.xml", serve_process.port, "-inf", str(inf), calls=5, rate=20)
    assert (result.successful, result.failed) == (5, 0), result.output[-3000:]
    code, dump = serve_process.ctl("dump")
    assert sorted(a["aor"] for a in dump["aors"]) == [f"dev{i}@example.com" for i in range(5)]


def test_sipp_at_5000_per_second_from_loopback_is_never_banned(serve_process, tmp_path):
    serve_process.start("--ip-budget", "400")  # the shipped defaults otherwise (loopback trusted)
    total = 10_000
    inf = write_injection(tmp_path / "aors.csv", [(f"load{i}", "example.com") for i in range(total)])
    result = run_sipp("register.xml", serve_process.port, "-inf", str(inf), "-l", "1000",
                      calls=total, rate=5000, timeout=120)
    assert (result.successful, result.failed) == (total, 0), result.output[-3000:]
    code, stats = serve_process.ctl("stats")
    assert stats["banned_ips"] == [] and stats["accepted_regs"] == total


def test_sipp_flood_from_an_untrusted_address_is_banned_while_loopback_registers(serve_process, tmp_path):
    serve_process.start("--ip-budget", "400", "--trusted", "127.0.0.1")
    flood = write_injection(tmp_path / "flood.csv", [(f"flood{i}", "example.com") for i in range(5000)])
    legit = write_injection(tmp_path / "legit.csv", [(f"legit{i}", "example.com") for i in range(500)])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        flooding = pool.submit(run_sipp, "register.xml", serve_process.port, "-inf", str(flood),
                               "-i", "127.0.0.2", calls=5000, rate=5000, timeout=8)
        time.sleep(0.5)  # the flood is on
        registering = pool.submit(run_sipp, "register.xml", serve_process.port, "-inf", str(legit),
                                  calls=500, rate=100, timeout=60)
        flooded, registered = flooding.result(), registering.result()
    assert (registered.successful, registered.failed) == (500, 0), registered.output[-3000:]
    assert 0 < flooded.successful <= 400, "answered until the budget, then nothing"
    code, stats = serve_process.ctl("stats")
    assert stats["banned_ips"] == ["127.0.0.2"]
    assert re.search(r'SIPSEC ban src=127\.0\.0\.2:\d+ user=""', serve_process.log.read_text())


@pytest.mark.parametrize("value", ["10.0.0.0/33", "proxy.example.com", "127.0.0.1,nonsense"])
def test_bad_trusted_value_is_one_line_naming_it(value):
    done = subprocess.run([sys.executable, "-m", "sipconsole", "serve", "--trusted", value],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("sipconsole: error: trusted:") and "is not an address or CIDR" in line, line


def test_trusted_from_the_configuration_file(tmp_path):
    path = tmp_path / "sipconsole.toml"
    path.write_text('trusted = ["192.0.2.10", "fd00::/8"]\n')
    config = build_config(load_toml(str(path)))
    assert config.trusted == ("192.0.2.10", "fd00::/8")
    guard = IpGuard(1, 60, config.trusted)
    assert guard.trusted("192.0.2.10") and guard.trusted("fd00::1") and not guard.trusted("192.0.2.11")

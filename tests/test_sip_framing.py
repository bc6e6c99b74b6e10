"""StreamFramer: one TCP byte stream in, whole SIP messages out (RFC 3261 §18.3)."""

from __future__ import annotations

import random

import pytest

from registrar_core.sip import KEEPALIVE, Limits, SipError, StreamFramer, parse_message


def message(call_id: str, body: bytes = b"", length: str | None = None) -> bytes:
    """A REGISTER with ``body``; ``length`` overrides the Content-Length value."""
    return (
        "REGISTER sip:example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n"
        "From: <sip:alice@example.com>;tag=1\r\n"
        "To: <sip:alice@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        "\r\n"
    ).encode() + body


MESSAGES = [message("one"), message("two", b"\x00\r\n\r\nbody with NULs\x00"), message("three", b"x")]
STREAM = b"".join(MESSAGES)


def feed_in_chunks(data: bytes, cuts: list[int], limits: Limits | None = None) -> tuple[list[bytes], int]:
    """Feed ``data`` cut at ``cuts``; return the framed messages and the bytes left over."""
    framer = StreamFramer() if limits is None else StreamFramer(limits)
    out: list[bytes] = []
    start = 0
    for end in [*sorted(cuts), len(data)]:
        out += framer.feed(data[start:end])
        start = end
    return out, framer.buffered


def test_several_messages_in_one_chunk() -> None:
    assert StreamFramer().feed(STREAM) == MESSAGES


def test_byte_by_byte() -> None:
    assert feed_in_chunks(STREAM, list(range(len(STREAM)))) == (MESSAGES, 0)


@pytest.mark.parametrize("seed", range(25))
def test_arbitrary_chunk_boundaries(seed: int) -> None:
    rnd = random.Random(seed)
    cuts = rnd.sample(range(1, len(STREAM)), rnd.randint(1, 40))
    assert feed_in_chunks(STREAM, cuts) == (MESSAGES, 0)


def test_every_single_split_point() -> None:
    for cut in range(len(STREAM) + 1):
        assert feed_in_chunks(STREAM, [cut]) == (MESSAGES, 0), cut


def test_body_with_nul_bytes_and_crlfcrlf_is_kept_whole() -> None:
    framed = StreamFramer().feed(MESSAGES[1])
    assert framed == [MESSAGES[1]]
    assert parse_message(framed[0]).body == b"\x00\r\n\r\nbody with NULs\x00"


def test_incomplete_message_waits() -> None:
    framer = StreamFramer()
    assert framer.feed(MESSAGES[2][:-1]) == []
    assert framer.buffered == len(MESSAGES[2]) - 1
    assert framer.feed(MESSAGES[2][-1:] + MESSAGES[0][:10]) == [MESSAGES[2]]
    assert framer.buffered == 10


def test_keepalive_ping_between_messages() -> None:
    framer = StreamFramer()
    assert framer.feed(KEEPALIVE) == [KEEPALIVE]
    assert framer.feed(MESSAGES[0] + KEEPALIVE + MESSAGES[2]) == [MESSAGES[0], KEEPALIVE, MESSAGES[2]]
    assert framer.buffered == 0


def test_keepalive_split_across_reads() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == [] and framer.buffered == 2
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [KEEPALIVE] and framer.buffered == 0


def test_single_crlf_pong_is_skipped() -> None:
    assert StreamFramer().feed(b"\r\n" + MESSAGES[0]) == [MESSAGES[0]]


def test_compact_and_lower_case_content_length() -> None:
    for spelling in (b"l", b"L", b"content-length", b"CONTENT-LENGTH  "):
        data = MESSAGES[2].replace(b"Content-Length", spelling)
        assert StreamFramer().feed(data + MESSAGES[0]) == [data, MESSAGES[0]]


def test_only_a_whole_content_length_name_at_a_line_start_counts() -> None:
    """Blanks before the colon are allowed; names that merely begin like it (an extension
    "Lamp", "Content-Lengths"), a folded line's text and a Via parameter are other fields."""
    data = MESSAGES[2].replace(b"Content-Length: 1", b"Lamp: 7\r\nContent-Lengths: 9\r\n"
                               b"Subject: a\r\n content-length: 5\r\nVia: x;l=3\r\nContent-Length \t: 1")
    assert StreamFramer().feed(data + MESSAGES[0]) == [data, MESSAGES[0]]


def test_content_length_zero_ends_at_the_blank_line() -> None:
    framer = StreamFramer()
    assert framer.feed(MESSAGES[0] + b"REGISTER") == [MESSAGES[0]]
    assert framer.buffered == len(b"REGISTER")


def with_length(raw: bytes) -> bytes:
    """A message whose Content-Length value is exactly the bytes ``raw``."""
    return message("bad", length="LENGTH").replace(b"LENGTH", raw)


@pytest.mark.parametrize(
    "data",
    [
        message("none").replace(b"Content-Length: 0\r\n", b""),
        with_length(b"-1"),
        with_length(b"five"),
        with_length(b""),
        with_length(b"1 2"),
        with_length("\u0665".encode()),  # ARABIC-INDIC DIGIT FIVE
        with_length(b"\xb2"),  # latin-1 superscript two: str.isdigit() says yes
        with_length(b"1" * 5000),  # beyond int()'s 4300-digit limit
        message("dup", b"abc").replace(b"Content-Length: 3", b"Content-Length: 3\r\nl: 4"),
    ],
    ids=["missing", "negative", "word", "empty", "two-values", "arabic-digit", "superscript",
         "5000-digits", "conflicting"],
)
def test_bad_framing_closes_the_stream(data: bytes) -> None:
    with pytest.raises(SipError) as exc:
        StreamFramer().feed(data)
    assert exc.value.drop


def test_equal_duplicate_content_lengths_frame_normally() -> None:
    data = message("dup", b"abc").replace(b"Content-Length: 3", b"Content-Length: 3\r\nl: 3")
    assert StreamFramer().feed(data) == [data]


def test_error_after_good_messages_in_the_same_read() -> None:
    bad = message("bad").replace(b"Content-Length: 0\r\n", b"")
    framer = StreamFramer()
    assert framer.feed(MESSAGES[0]) == [MESSAGES[0]]
    with pytest.raises(SipError):
        framer.feed(MESSAGES[2] + bad)


def test_oversize_header_block_closes_before_it_ends() -> None:
    framer = StreamFramer(Limits(max_header_block=1_000))
    framer.feed(b"REGISTER sip:example.com SIP/2.0\r\n")
    with pytest.raises(SipError) as exc:
        for _ in range(100):
            framer.feed(b"X-Filler: " + b"a" * 50 + b"\r\n")
    assert (exc.value.status, exc.value.drop) == (513, True)
    assert framer.buffered <= 1_100


def test_oversize_header_block_in_one_read() -> None:
    data = MESSAGES[0].replace(b"\r\n\r\n", b"\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    with pytest.raises(SipError) as exc:
        StreamFramer().feed(data)
    assert (exc.value.status, exc.value.drop) == (513, True)
    assert StreamFramer(Limits(max_header_block=50_000)).feed(data) == [data]


def test_oversize_message_closes_before_the_body_arrives() -> None:
    framer = StreamFramer(Limits(max_message_size=1_000))
    with pytest.raises(SipError) as exc:
        framer.feed(message("big", length="5000"))
    assert (exc.value.status, exc.value.drop) == (513, True)


def test_trickled_header_is_not_rescanned_from_the_start() -> None:
    """A slowloris trickle: each byte is searched once, not once per read (white-box)."""
    framer = StreamFramer()
    head = MESSAGES[0][:-4] + b"\r\nX-Pad: " + b"p" * 30_000
    for i in range(len(head)):
        assert framer.feed(head[i : i + 1]) == []
    assert framer._scanned >= len(head) - 3
    assert framer.feed(b"\r\n\r\n") == [head + b"\r\n\r\n"]

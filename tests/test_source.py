"""registrar_core/source.py: the one spelling of a transport address, both ways."""

from __future__ import annotations

import pytest

from registrar_core.source import Source, format_address, parse_address


@pytest.mark.parametrize(("proto", "host", "port", "text"), [
    ("udp", "127.0.0.1", 5060, "udp:127.0.0.1:5060"),
    ("tcp", "::1", 5070, "tcp:[::1]:5070"),
    ("udp", "2001:db8::7", 0, "udp:[2001:db8::7]:0"),
])
def test_format_and_parse_are_inverse(proto, host, port, text):
    assert format_address(proto, host, port) == text
    assert parse_address(text) == (proto, host, port)
    assert Source(proto, host, port, "udp:127.0.0.1:5060").address == text


def test_parse_lowercases_the_transport_and_refuses_a_port_that_is_no_number():
    assert parse_address("UDP:192.0.2.1:5060") == ("udp", "192.0.2.1", 5060)
    with pytest.raises(ValueError):
        parse_address("udp:192.0.2.1:sip")


def test_an_address_is_the_sources_own_whatever_was_formatted_before():
    """Source.address remembers the last address formatted: it answers for its own source."""
    sources = [Source("udp", "192.0.2.1", 5060, "l"), Source("udp", "192.0.2.1", 5060, "l"),
               Source("tcp", "192.0.2.1", 5060, "l"), Source("udp", "192.0.2.1", 5061, "l"),
               Source("udp", "192.0.2.10", 5060, "l"), Source("udp", "2001:db8::1", 5060, "l"),
               Source("udp", "192.0.2.1", 5060, "l")]
    assert [s.address for s in sources] == [
        "udp:192.0.2.1:5060", "udp:192.0.2.1:5060", "tcp:192.0.2.1:5060", "udp:192.0.2.1:5061",
        "udp:192.0.2.10:5060", "udp:[2001:db8::1]:5060", "udp:192.0.2.1:5060"]

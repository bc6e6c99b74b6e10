"""Split a TCP byte stream into SIP messages by Content-Length (RFC 3261 §18.3)."""

from __future__ import annotations

import re

from .errors import SipError
from .limits import DEFAULT_LIMITS, Limits
from .message import content_length

# A CRLFCRLF "ping" between messages (RFC 5626 §4.4.1); answered with a CRLF "pong".
KEEPALIVE = b"\r\n\r\n"
# A Content-Length field (long or compact name, any case) at a line's start, searched in the
# head with a line end put in front (the first line is one too). Led by the literal line end,
# the search skips from line to line; the multi-line "^" it replaces was tried at every byte
# of every message on a stream (about 15k instructions a REGISTER).
_LENGTH_FIELD = re.compile(rb"\n(?:content-length|l)[ \t]*:[ \t]*([^\n]*)", re.I)


class StreamFramer:
    """Feed bytes as they arrive; take whole messages out.

    A message without Content-Length, with a bad one, or a header block larger
    than the limits raises SipError(drop=True): the connection must be closed,
    and messages framed earlier in the same ``feed`` call are not returned.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._buffer = bytearray()
        self._limits = limits
        self._scanned = 0  # bytes of the current header block already searched for CRLFCRLF
        self._total: int | None = None  # length of the current message, once its head is read

    @property
    def buffered(self) -> int:
        """Bytes held back, waiting for the rest of a message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every complete message (and KEEPALIVE pings) now framed."""
        self._buffer += data
        out: list[bytes] = []
        while self._buffer:
            if self._total is None:
                # Only a ping, a pong or a stray line end starts with CR (no SIP message does):
                # one byte read per message instead of two method calls.
                if self._buffer[0] == 13:
                    if self._buffer.startswith(KEEPALIVE):
                        del self._buffer[:4]
                        out.append(KEEPALIVE)
                        continue
                    if self._buffer.startswith(b"\r\n"):
                        if len(self._buffer) < 4 and KEEPALIVE.startswith(self._buffer):
                            break  # maybe the start of a ping
                        del self._buffer[:2]  # a CRLF "pong" or stray line end between messages
                        continue
                self._total = self._read_head()
                if self._total is None:
                    break
            if len(self._buffer) < self._total:
                break
            out.append(bytes(self._buffer[: self._total]))
            del self._buffer[: self._total]
            self._total = None
            self._scanned = 0
        return out

    def _read_head(self) -> int | None:
        """The whole length of the message starting the buffer, or None until its head is in."""
        limits = self._limits
        end = self._buffer.find(KEEPALIVE, self._scanned)
        if end < 0:
            if len(self._buffer) > limits.max_header_block:
                raise SipError(513, "Header block too large", drop=True)
            self._scanned = max(0, len(self._buffer) - 3)
            return None
        if end > limits.max_header_block:
            raise SipError(513, "Header block too large", drop=True)
        head = b"\n" + self._buffer[:end]  # bytes + bytearray is bytes: no bytes() call needed
        length = content_length([m.decode("latin-1") for m in _LENGTH_FIELD.findall(head)])
        if length is None:
            raise SipError(400, "Content-Length required on a stream", drop=True)
        total = end + 4 + length
        if total > limits.max_message_size:
            raise SipError(513, "Message Too Large", drop=True)
        return total

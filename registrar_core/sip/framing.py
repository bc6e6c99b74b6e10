"""Split a TCP byte stream into SIP messages by Content-Length (RFC 3261 §18.3)."""

from __future__ import annotations

from .errors import SipError
from .limits import DEFAULT_LIMITS, Limits
from .message import content_length

# A CRLFCRLF "ping" between messages (RFC 5626 §4.4.1); answered with a CRLF "pong".
KEEPALIVE = b"\r\n\r\n"
# A Content-Length field's name at a line's start, in the head lower-cased with a line end
# put in front (the first line is one too); the compact "l" then must be followed by the colon.
_LENGTH_NAMES = (b"\ncontent-length", b"\nl")


def _length_values(head: bytes) -> list[str]:
    """Every Content-Length field's value in a header block, any case, long or compact name.

    Found with ``find`` in the lower-cased head rather than a case-insensitive multi-line
    regex: that one tried every position of every message on a stream (1.4 us a REGISTER,
    against 0.4)."""
    lower = b"\n" + head.lower()
    values: list[str] = []
    for name in _LENGTH_NAMES:
        at = lower.find(name)
        while at >= 0:
            i = at + len(name)
            while lower[i:i + 1] in (b" ", b"\t"):
                i += 1
            if lower[i:i + 1] == b":":
                end = lower.find(b"\n", i)
                if end < 0:
                    end = len(lower)
                values.append(lower[i + 1:end].decode("latin-1"))
            at = lower.find(name, i)
    return values


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
        head = bytes(self._buffer[:end])
        length = content_length(_length_values(head))
        if length is None:
            raise SipError(400, "Content-Length required on a stream", drop=True)
        total = end + 4 + length
        if total > limits.max_message_size:
            raise SipError(513, "Message Too Large", drop=True)
        return total

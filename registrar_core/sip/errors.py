"""The one exception the SIP message layer raises."""

from __future__ import annotations


class SipError(Exception):
    """A message could not be accepted.

    ``status`` is the response to send (400, 505, 416, ...); ``drop`` is true when
    no response is possible or wise (a framing error, a malformed response): the
    datagram is discarded, or the TCP connection is closed.
    """

    def __init__(self, status: int, reason: str, *, drop: bool = False) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.drop = drop

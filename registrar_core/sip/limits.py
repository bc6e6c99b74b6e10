"""Size limits that protect the parser against abusive input."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds for one message; every one is configurable."""

    max_message_size: int = 65_535
    max_headers: int = 128
    max_line_length: int = 8_192
    max_header_block: int = 32_768


DEFAULT_LIMITS = Limits()

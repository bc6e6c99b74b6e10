"""Error replies for messages the parser rejected, built from whatever headers can be salvaged."""

from __future__ import annotations

import re

from .sip import SipError

_WANTED = {"via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
           "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq"}
_LINE = re.compile(rb"^([A-Za-z-]+)[ \t]*:[ \t]*(.*?)[ \t]*\r?$", re.M)


def salvage_reply(data: bytes, error: SipError, to_tag: str) -> bytes | None:
    """A stateless ``error.status`` reply, or None when no reply can be addressed.

    Responses are never answered, and without Via, From, To, Call-ID and CSeq
    there is nothing to build a reply on (RFC 3261 §8.2.6): the message is dropped.
    """
    if error.drop or data.lstrip(b"\r\n").startswith(b"SIP/"):
        return None
    head = data.split(b"\r\n\r\n", 1)[0]
    fields: dict[str, list[str]] = {}
    for name, value in _LINE.findall(head):
        canonical = _WANTED.get(name.decode("latin-1").lower())
        if canonical:
            fields.setdefault(canonical, []).append(value.decode("utf-8", "replace"))
    if any(name not in fields for name in ("Via", "From", "To", "Call-ID", "CSeq")):
        return None
    lines = [f"SIP/2.0 {error.status} {error.reason}"]
    lines += [f"Via: {v}" for v in fields["Via"]]
    to = fields["To"][0]
    if ";tag=" not in to.lower():
        to += f";tag={to_tag}"
    lines += [f"From: {fields['From'][0]}", f"To: {to}", f"Call-ID: {fields['Call-ID'][0]}",
              f"CSeq: {fields['CSeq'][0]}", "Server: sipconsole", "Content-Length: 0"]
    text = "\r\n".join(lines) + "\r\n\r\n"
    if any(c in text for c in "\x00") or len(text) > 8192:
        return None
    return text.encode("utf-8")

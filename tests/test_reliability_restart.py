"""Restart safety (issue 9, item 5).

A REGISTER that was committed, then retransmitted to a registrar that has crashed and
restarted in between (its transaction table is gone with the old process), must get the
same 200 (the same bindings) and cause no second update: the Call-ID/CSeq rule (RFC 3261
§10.3 step 7; Kamailio's cseq check) works from what was stored, not from memory of the
old process. The same holds for a retransmitted removal and for a late, older CSeq.

The other half of item 5, a restart between the 401 and the authenticated REGISTER
(stale=true, then 200), is tests/test_auth.py::
test_restart_between_challenge_and_answer_is_stale_then_ok.
"""

from __future__ import annotations

import sqlite3
import time

from .sipclient import UdpPhone, register_bytes

COLUMNS = "ruid, aor, addr, params, expires, q, callid, cseq, path, received, socket, user_agent, modified"


def rows(db, aor: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM contacts WHERE aor = ? ORDER BY addr", (aor,)).fetchall()


def bindings(response) -> dict[str, int]:
    """Contact URI -> expires, from a 200."""
    return {c.uri.raw: int(dict((n.lower(), v) for n, v in c.params)["expires"]) for c in response.contacts}


def same_bindings(first, again, elapsed: float) -> None:
    a, b = bindings(first), bindings(again)
    assert a.keys() == b.keys(), (a, b)
    for uri in a:
        assert a[uri] - elapsed - 2 <= b[uri] <= a[uri], f"{uri}: expires {a[uri]} then {b[uri]}"


async def test_retransmitted_register_after_crash_gets_same_200_and_no_update(serve_process):
    proc = serve_process.start()
    phone = await UdpPhone(("127.0.0.1", proc.port)).open()
    aor = "retrans@example.com"
    other = "<sip:other@10.0.0.2:5060>"
    # An older binding of another device, so the 200 lists more than the one just sent.
    assert (await phone.send(register_bytes(aor, [other], local=phone.local, call_id="other@t", cseq=1))).status == 200
    register = register_bytes(aor, [phone.contact], local=phone.local, call_id="phone@t", cseq=5,
                              branch="z9hG4bKcommitted1")
    first = await phone.send(register)
    assert first.status == 200 and len(first.contacts) == 2
    stored = rows(proc.db, aor)
    sent_at = time.monotonic()

    time.sleep(1.1)  # a second update would move modified and expires
    proc.kill()
    proc.start()
    again = await phone.send(register)  # the very same bytes: a retransmission
    assert again.status == 200
    same_bindings(first, again, time.monotonic() - sent_at)
    assert rows(proc.db, aor) == stored, "the retransmission updated the binding a second time"

    # A late REGISTER of the same Call-ID with an older CSeq fails (RFC 3261 §10.3 step 7: 500)
    # and changes nothing either.
    older = register_bytes(aor, [phone.contact], local=phone.local, call_id="phone@t", cseq=4, expires=60)
    assert (await phone.send(older)).status == 500
    assert rows(proc.db, aor) == stored

    # A removal, committed, then retransmitted after another crash: 200, still removed,
    # and the other device's binding untouched.
    removal = register_bytes(aor, [phone.contact], local=phone.local, call_id="phone@t", cseq=6, expires=0,
                             branch="z9hG4bKcommitted2")
    gone = await phone.send(removal)
    assert gone.status == 200 and [c.uri.raw for c in gone.contacts] == ["sip:other@10.0.0.2:5060"]
    after_removal = rows(proc.db, aor)
    proc.kill()
    proc.start()
    again = await phone.send(removal)
    assert again.status == 200 and [c.uri.raw for c in again.contacts] == ["sip:other@10.0.0.2:5060"]
    assert rows(proc.db, aor) == after_removal
    # (A copy of the cseq 5 REGISTER arriving now would add the binding again: the removed
    # binding's Call-ID/CSeq went with it, and RFC 3261 §10.3 step 7 only orders updates of
    # existing bindings. Kamailio behaves the same; a conformant client stops retransmitting
    # once it has the 200, so only a duplicating network could do it.)
    phone.close()

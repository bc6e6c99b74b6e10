"""The server transaction table (registrar_core/transactions.py): Timer J, the bound on its
size, and RFC 3261 §17.2.3 matching. Over the wire: tests/test_transport.py."""

from __future__ import annotations

from registrar_core.sip import parse_message
from registrar_core.transactions import IN_PROGRESS, TIMER_J, TransactionTable, transaction_key


def test_transaction_table_keeps_a_response_for_timer_j_then_forgets_it():
    now = [0.0]
    table = TransactionTable(clock=lambda: now[0])
    first, second, third = "z9hG4bK1 a:1 REGISTER", "z9hG4bK2 a:1 REGISTER", "z9hG4bK3 a:1 REGISTER"
    reply = b"SIP/2.0 200 OK\r\n\r\n"
    table.begin(first)
    assert table.lookup(first) == IN_PROGRESS
    table.complete(first, reply)
    now[0] = TIMER_J - 0.1
    table.begin(second)
    assert table.lookup(first) == reply, "a retransmission within Timer J gets the same response"
    now[0] = TIMER_J
    table.begin(third)
    assert table.lookup(first) is None and table.lookup(second) == IN_PROGRESS and len(table) == 2


def test_transaction_table_completes_in_the_shard_begin_returned():
    """The pipeline keeps the shard begin() returns and hands it to complete(): the response is
    stored where lookup() finds it, as when complete() works the shard out itself."""
    table = TransactionTable(clock=lambda: 0.0)
    reply = b"SIP/2.0 200 OK\r\n\r\n"
    keys = [f"z9hG4bK{i} 127.0.0.1:5060 REGISTER" for i in range(64)]
    shards = {key: table.begin(key) for key in keys}
    assert len(set(shards.values())) > 1 and all(0 <= shard < 256 for shard in shards.values())
    for key in keys[::2]:
        table.complete(key, reply, shards[key])
    for key in keys[1::2]:
        table.complete(key, reply)
    assert [table.lookup(key) for key in keys] == [reply] * len(keys) and len(table) == len(keys)


def test_transaction_table_is_bounded_oldest_first_and_never_revives_an_evicted_key():
    table = TransactionTable(clock=lambda: 0.0, max_entries=3)
    reply = b"SIP/2.0 200 OK\r\n\r\n"
    keys = [f"z9hG4bK{i} a:1 REGISTER" for i in range(5)]
    table.begin(keys[0])  # stays in progress: its response comes after it was evicted
    for key in keys[1:3]:
        table.begin(key)
        table.complete(key, reply)
    table.begin(keys[3])  # over the bound: keys[0] (in progress) goes first
    table.complete(keys[3], reply)
    table.complete(keys[0], reply)  # late response of an evicted transaction: not stored again
    assert table.lookup(keys[0]) is None and len(table) == 3 and table.evicted == 0
    table.begin(keys[4])  # keys[1], completed, goes: a retransmission of it would be processed again
    assert table.lookup(keys[1]) is None and table.evicted == 1
    assert [table.lookup(k) for k in keys[2:4]] == [reply, reply] and table.lookup(keys[4]) == IN_PROGRESS


def test_transaction_table_ring_wraps_round_with_timer_j_and_the_bound():
    """Arrival order is a ring of max_entries slots: several laps of expiries and evictions
    keep exactly the newest, spread over the shards, and count only completed evictions."""
    now = [0.0]
    table = TransactionTable(lifetime=10.0, clock=lambda: now[0], max_entries=100)
    reply = b"SIP/2.0 200 OK\r\n\r\n"
    for i in range(350):  # 3.5 laps; every third left in progress
        key = f"z9hG4bK{i} 192.0.2.1:5060 REGISTER"
        assert table.lookup(key) is None
        table.begin(key)
        if i % 3:
            table.complete(key, reply)
    assert len(table) == 100
    assert all(table.lookup(f"z9hG4bK{i} 192.0.2.1:5060 REGISTER") is None for i in range(250))
    assert all(table.lookup(f"z9hG4bK{i} 192.0.2.1:5060 REGISTER") == (reply if i % 3 else IN_PROGRESS)
               for i in range(250, 350))
    assert table.evicted == sum(1 for i in range(250) if i % 3)
    now[0] = 10.0  # Timer J for all: the next begin forgets every one of them, none counted evicted
    table.begin("z9hG4bKlast 192.0.2.1:5060 REGISTER")
    assert len(table) == 1 and table.evicted == sum(1 for i in range(250) if i % 3)
    table.forget("z9hG4bKlast 192.0.2.1:5060 REGISTER")
    assert len(table) == 0 and table.lookup("z9hG4bKlast 192.0.2.1:5060 REGISTER") is None


def test_transaction_table_begins_a_key_other_than_the_one_looked_up():
    """begin() reuses the last lookup's shard only for that same key."""
    table = TransactionTable(clock=lambda: 0.0)
    looked, other = "z9hG4bKa 192.0.2.1:5060 REGISTER", "z9hG4bKb 192.0.2.1:5060 REGISTER"
    assert table.lookup(looked) is None
    table.begin(other)
    table.complete(other, b"reply")
    assert table.lookup(other) == b"reply" and table.lookup(looked) is None


def _request(via: str, method: str = "REGISTER", cseq: str = "1 REGISTER") -> bytes:
    return (f"{method} sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {via}\r\n"
            f"From: <sip:alice@example.com>;tag=f1\r\nTo: <sip:alice@example.com>\r\n"
            f"Call-ID: c1\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n").encode()


def test_transaction_key_matches_on_branch_sent_by_and_method():
    key = transaction_key(parse_message(_request("192.0.2.1:5060;branch=z9hG4bKabc")))
    assert key == transaction_key(parse_message(_request("192.0.2.1:5060;branch=z9hG4bKabc")))
    assert key != transaction_key(parse_message(_request("192.0.2.1:5060;branch=z9hG4bKabd")))
    assert key != transaction_key(parse_message(_request("192.0.2.2:5060;branch=z9hG4bKabc")))
    options = _request("192.0.2.1:5060;branch=z9hG4bKabc", "OPTIONS", "1 OPTIONS")
    assert key != transaction_key(parse_message(options))


def test_transaction_key_without_the_magic_cookie_falls_back_to_rfc_2543_matching():
    """No z9hG4bK branch: Call-ID, CSeq, From tag and sent-by tell transactions apart."""
    old = transaction_key(parse_message(_request("192.0.2.1:5060;branch=1")))
    assert old == transaction_key(parse_message(_request("192.0.2.1:5060;branch=1")))
    assert old != transaction_key(parse_message(_request("192.0.2.1:5060;branch=1", cseq="2 REGISTER")))

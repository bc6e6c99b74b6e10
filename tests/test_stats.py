"""Stats: the counters ctl stats and the metrics read (registrar_core/stats.py)."""

from __future__ import annotations

from registrar_core.stats import Stats


def test_rate_series_counts_registers_per_whole_second_the_current_one_included() -> None:
    stats = Stats()
    for now in (100.1, 100.5, 101.2, 103.9, 103.95, 103.99):
        stats.count_register(True, False, now)
    assert stats.rate_series(104.5, 6) == [0, 0, 2, 1, 0, 3]  # seconds 98-103
    assert stats.rate_series(105.0, 3) == [0, 3, 0]  # 102-104: 103 still counted once it is past
    stats.count_register(False, True, 104.2)
    assert stats.rate_series(105.0, 3) == [0, 3, 1]
    assert (stats.accepted_regs, stats.challenged, stats.rejected_regs) == (6, 1, 0)


def test_requests_and_responses_are_counted_by_method_and_status() -> None:
    stats = Stats()
    for method in ("REGISTER", "REGISTER", "OPTIONS"):
        stats.count_request(method)
    stats.by_status[200] += 2
    stats.by_status[401] += 1
    assert stats.requests == {"REGISTER": 2, "OPTIONS": 1}
    assert stats.responses == {"200": 2, "401": 1}

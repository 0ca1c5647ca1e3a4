"""HitRateWindow: the hit rate over a sliding window, and its low-rate warning."""

from crew7.services.cache import HitRateWindow


def test_no_lookups_no_rate(clock):
    assert HitRateWindow(seconds=60).rate() == (None, 0)


def test_rate_over_the_window(clock):
    window = HitRateWindow(seconds=60)
    window.add(True, 3)
    window.add(False)
    assert window.rate() == (0.75, 4)
    clock.advance(30)
    window.add(False, 4)
    assert window.rate() == (3 / 8, 8)


def test_old_seconds_leave_the_window(clock):
    window = HitRateWindow(seconds=10)
    window.add(True, 5)
    clock.advance(10)
    window.add(False)
    assert window.rate() == (0.0, 1)


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if "hit rate" in r.getMessage()]


def test_warns_once_below_the_threshold_then_once_on_recovery(clock, crew7_logs):
    caplog = crew7_logs
    window = HitRateWindow(seconds=60, threshold=0.5, min_lookups=10)
    window.add(False, 10)
    window.check()
    window.check()
    low = _messages(caplog)
    assert len(low) == 1 and "0.0%" in low[0] and "below 50%" in low[0]
    window.add(True, 30)
    window.check()
    window.check()
    assert _messages(caplog)[1:] == ["cache hit rate back to 75.0%"]


def test_no_warning_without_enough_lookups_or_threshold(clock, crew7_logs):
    caplog = crew7_logs
    few = HitRateWindow(seconds=60, threshold=0.5, min_lookups=100)
    few.add(False, 99)
    few.check()
    off = HitRateWindow(seconds=60, threshold=0.0, min_lookups=1)
    off.add(False, 1000)
    off.check()
    assert _messages(caplog) == []


def test_configure_changes_the_window(clock):
    window = HitRateWindow()
    window.configure(5, 0.9, 1)
    assert (window.seconds, window.threshold, window.min_lookups) == (5, 0.9, 1)

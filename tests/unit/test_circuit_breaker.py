"""CircuitBreaker: open after consecutive failures, one probe after the cooldown."""

import pytest

from crew7.services.cache import CircuitBreaker


@pytest.fixture
def breaker(clock):
    return CircuitBreaker(threshold=3, cooldown=5.0)


def test_closed_until_the_threshold_of_consecutive_failures(breaker):
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure(OSError("down"))
    breaker.failure(OSError("down"))
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure(OSError("down"))
    assert breaker.state == "open" and not breaker.allow()


def test_a_success_resets_the_count(breaker):
    breaker.failure(OSError())
    breaker.failure(OSError())
    breaker.success()
    assert breaker.failures == 0
    breaker.failure(OSError())
    breaker.failure(OSError())
    assert breaker.state == "closed"


def test_one_probe_after_the_cooldown(breaker, clock):
    for _ in range(3):
        breaker.failure(OSError())
    clock.advance(4.9)
    assert breaker.state == "open" and not breaker.allow()
    clock.advance(0.1)
    assert breaker.state == "half-open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits for its outcome
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


def test_a_failed_probe_reopens_for_a_full_cooldown(breaker, clock):
    for _ in range(3):
        breaker.failure(OSError())
    clock.advance(5)
    assert breaker.allow()
    breaker.failure(OSError("still down"))
    assert breaker.state == "open"
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()


def test_stays_open_when_on_close_cannot_catch_up(clock):
    calls = []

    def on_close():
        calls.append(clock.now)
        return len(calls) > 1

    breaker = CircuitBreaker(threshold=1, cooldown=1.0, on_close=on_close)
    breaker.failure(OSError())
    clock.advance(1)
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "open" and len(calls) == 1
    clock.advance(1)
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and len(calls) == 2


def test_one_warning_when_it_opens_and_one_when_it_closes(breaker, clock, crew7_logs):
    caplog = crew7_logs
    for _ in range(5):
        breaker.failure(ConnectionError("refused"))
    opened = [r for r in caplog.records if "breaker open" in r.getMessage()]
    assert len(opened) == 1 and "ConnectionError: refused" in opened[0].getMessage()
    clock.advance(5)
    breaker.allow()
    breaker.success()
    breaker.success()
    closed = [r for r in caplog.records if "breaker closed" in r.getMessage()]
    assert len(closed) == 1

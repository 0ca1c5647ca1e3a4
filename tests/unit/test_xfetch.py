"""The XFetch early-refresh decision (no servers)."""

import math
import random

import pytest

from crew7.services.cache.read_through import should_refresh_early


def test_no_expiry_or_no_window_never_refreshes():
    assert not should_refresh_early(None, 0.01, 1.0, 1.0, 0.99)
    assert not should_refresh_early(-1, 0.01, 1.0, 1.0, 0.99)  # no TTL on the key
    assert not should_refresh_early(10, 0.0, 0.0, 0.0, 0.99)  # turned off


def test_the_threshold_is_exactly_the_xfetch_formula():
    # scale 1 s: refresh iff -ln(1 - u) * 1000 >= pttl
    for pttl in (1, 100, 500, 1000, 3000):
        u_edge = 1 - math.exp(-pttl / 1000)
        assert should_refresh_early(pttl, 0.001, 1.0, 1.0, min(u_edge + 1e-9, 0.999999))
        assert not should_refresh_early(pttl, 0.001, 1.0, 1.0, max(u_edge - 1e-6, 0.0))


@pytest.mark.parametrize(("pttl", "expected"), [(100, 0.905), (1000, 0.368), (299_000, 0.0)])
def test_the_chance_rises_as_expiry_nears(pttl, expected):
    rng = random.Random(7)
    n = 20_000
    rate = sum(should_refresh_early(pttl, 0.001, 1.0, 1.0, rng.random()) for _ in range(n)) / n
    # P(refresh) = exp(-pttl / 1000) for a 1 s scale: 0.905 at 0.1 s left, 0.368 at 1 s
    assert rate == pytest.approx(expected, abs=0.02)


def test_a_slow_computation_widens_the_window():
    # delta * beta = 5 s > the 1 s window: a key 2 s from expiry refreshes often
    u = 0.5
    assert should_refresh_early(2000, 5.0, 1.0, 1.0, u)
    assert not should_refresh_early(2000, 0.001, 1.0, 1.0, u)

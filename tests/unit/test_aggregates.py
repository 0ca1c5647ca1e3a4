"""The pure parts of the run aggregates: one run's contribution and a flush's deltas."""

from datetime import UTC, datetime
from types import SimpleNamespace

from crew7.services.aggregates import StatsDelta, _contribution

T1 = datetime(2026, 1, 1, tzinfo=UTC)
T2 = datetime(2026, 1, 2, tzinfo=UTC)


def test_contribution_of_a_finished_run():
    assert _contribution("succeeded", 2.5, 100) == {
        "total_runs": 1,
        "queued_runs": 0,
        "running_runs": 0,
        "succeeded_runs": 1,
        "failed_runs": 0,
        "duration_sum": 2.5,
        "duration_count": 1,
        "tokens_sum": 100,
    }


def test_contribution_without_duration_or_tokens():
    c = _contribution("queued", None, None)
    assert c["queued_runs"] == 1 and c["total_runs"] == 1
    assert c["duration_sum"] == 0 and c["duration_count"] == 0 and c["tokens_sum"] == 0


def _run(crew_id, status="succeeded", duration=1.0, tokens=10, started_at=None, created_at=T1):
    return SimpleNamespace(
        crew_id=crew_id,
        status=status,
        duration=duration,
        tokens_used=tokens,
        started_at=started_at,
        created_at=created_at,
    )


def test_added_runs_sum_per_crew():
    delta = StatsDelta()
    delta.run_added(_run(1, "succeeded", 2.0, 5))
    delta.run_added(_run(1, "failed", None, 7))
    delta.run_added(_run(2, None, None, None))  # a new run without status is queued
    one, two = delta.deltas[1], delta.deltas[2]
    assert (one["total_runs"], one["succeeded_runs"], one["failed_runs"]) == (2, 1, 1)
    assert (one["duration_sum"], one["duration_count"], one["tokens_sum"]) == (2.0, 1, 12)
    assert (two["total_runs"], two["queued_runs"]) == (1, 1)


def test_a_change_is_the_new_contribution_minus_the_old():
    delta = StatsDelta()
    delta.add(3, _contribution("running", None, 0), -1)
    delta.add(3, _contribution("succeeded", 4.0, 50))
    d = delta.deltas[3]
    assert d["total_runs"] == 0 and d["running_runs"] == -1 and d["succeeded_runs"] == 1
    assert (d["duration_sum"], d["duration_count"], d["tokens_sum"]) == (4.0, 1, 50)


def test_last_run_keeps_the_latest_time():
    delta = StatsDelta()
    delta.run_added(_run(1, started_at=T2))
    delta.run_added(_run(1, created_at=T1))
    delta.touch(1, None)
    delta.touch(2, None)
    assert delta.last_run == {1: T2}


def test_a_deleted_run_recomputes_its_crew():
    delta = StatsDelta()
    delta.run_deleted(_run(5))
    assert delta.recompute == {5} and not delta.deltas

"""Cache analytics and Prometheus metrics, aggregated across gunicorn workers."""

import json
import logging
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.gunicorn import GunicornServer, served_env


def fetch(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def samples(text, name):
    """{labels-string: value} for one metric in Prometheus text format."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def event_total(text, family=None, event=None):
    total = 0
    for labels, value in samples(text, "crew7_cache_events_total").items():
        d = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if (family is None or d["family"] == family) and (event is None or d["event"] == event):
            total += value
    return total


@pytest.mark.slow
@pytest.mark.gunicorn
def test_counters_reconcile_across_workers(app, database_url, redis_server, redis_client):
    from crew7.services.seed import seed_demo
    from crew7.services.users import create_user

    with app.app_context():
        seed_demo(users=1, crews=10, agents_per_crew=2, runs_per_crew=3, private_every=5)
        _, admin = create_user("ops", admin=True)
        _, plain = create_user("dev")
    env = served_env(database_url, redis_server.url)
    paths = []
    for n in range(1, 11):
        paths += [f"/metadata/crew/{n}"] * 3 + [
            f"/metadata/agent/{n}",
            f"/metadata/crew/{n}/agents",
        ]
    with GunicornServer(env, workers=3) as server:
        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(pool.map(lambda p: fetch(server.url + p)[0], paths))
        assert statuses.count(200) == 40 and statuses.count(404) == 10  # crews 5, 10 private
        status, text = fetch(server.url + "/metrics")
        assert status == 200
        text = text.decode()
        status, report = fetch(server.url + "/cache/stats", {"Authorization": f"Bearer {admin}"})
        assert status == 200
        report = json.loads(report)
        assert fetch(server.url + "/cache/stats")[0] == 401
        assert fetch(server.url + "/cache/stats", {"Authorization": f"Bearer {plain}"})[0] == 403
    served = len(paths)
    lookups = sum(
        event_total(text, f, e)
        for f in ("crew", "agent", "crew_agents")
        for e in ("hit", "miss", "bypass")
    )
    assert lookups == served  # exactly: every metadata request is one of the three
    http = samples(text, "crew7_http_requests_total")
    metadata_requests = sum(v for k, v in http.items() if 'endpoint="/metadata/' in k)
    assert metadata_requests == served
    crew_hits, crew_misses = event_total(text, "crew", "hit"), event_total(text, "crew", "miss")
    # Concurrent requests for one cold crew are misses that wait: still one computation.
    assert crew_hits + crew_misses == 30 and crew_misses >= 10
    assert event_total(text, "crew", "computation") == 10
    assert "crew7_http_request_duration_seconds_bucket{" in text
    assert report["families"]["crew"]["hit"] == crew_hits
    assert report["families"]["crew"]["hit_rate"] == round(crew_hits / 30, 4)
    assert report["breaker"] == "closed" and report["keys"]["crew"] == 10
    assert report["memory_used"]


def test_low_hit_rate_warns_once(app_factory, caplog):
    app = app_factory(HIT_RATE_ALERT_THRESHOLD=0.9, HIT_RATE_MIN_LOOKUPS=10, HIT_RATE_WINDOW=60)
    client = app.test_client()
    caplog.set_level(logging.WARNING, logger="crew7")
    window = app.extensions["crew7.cache"].counters.window
    for n in range(30):
        client.get(f"/metadata/crew/{1000 + n}")  # unknown ids: all misses
        window.check()
    warnings = [r.getMessage() for r in caplog.records if "hit rate" in r.getMessage()]
    assert len(warnings) == 1 and "below 90%" in warnings[0]
    for _ in range(300):
        client.get("/metadata/crew/1000")  # now remembered: hits
    window.check()
    warnings = [r.getMessage() for r in caplog.records if "hit rate" in r.getMessage()]
    assert len(warnings) == 2 and "back to" in warnings[1]

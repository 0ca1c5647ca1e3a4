"""Webhooks delivered by the real app under gunicorn, on both databases: through a
receiver that fails, then times out, then recovers, and across a SIGKILL of every
process mid-delivery and a restart, every event the feed has arrives, signed, in order,
a batch repeated only whole after it went unacknowledged."""

import json
import os
import signal
import time

import pytest

from crew7.cli_webhooks import format_attempts
from tests.support.app import database_url_for, make_app, make_user, reset_schema
from tests.support.gunicorn import GunicornServer, served_env
from tests.support.processes import wait_until
from tests.support.raw_http import request
from tests.support.webhook_receiver import (
    WebhookReceiver,
    check_delivered_in_order,
    feed_cursors,
)

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

SETTINGS = {
    "WEBHOOKS_ALLOW_PRIVATE": True,
    "WEBHOOKS_INTERVAL": 0.1,
    "WEBHOOKS_CONNECT_TIMEOUT": 0.5,
    "WEBHOOKS_TIMEOUT": 1.0,
    "WEBHOOKS_RETRY_BASE": 0.2,
    "WEBHOOKS_RETRY_MAX": 1.0,
    "WEBHOOKS_MAX_FAILURES": 100,
    "WEBHOOKS_BATCH": 3,
}


def call(server, method, path, user, body=None):
    status, _, data = request(server.port, method, path, body, user["headers"], timeout=10)
    assert status < 300, (method, path, status, data[:300])
    return json.loads(data) if data else None


def writes(server, user, name):
    """Create, add agents, rename, run and finish, make private: a crew's feed events."""
    crew = call(server, "POST", "/crews", user, {"name": name})
    for agent in ("Ada", "Bo"):
        call(server, "POST", f"/crews/{crew['id']}/agents", user, {"name": agent, "role": "r"})
    call(server, "PATCH", f"/crews/{crew['id']}", user, {"name": f"{name} renamed"})
    run = call(server, "POST", f"/crews/{crew['id']}/runs", user, {"status": "running"})
    call(server, "PATCH", f"/runs/{run['id']}", user, {"status": "succeeded"})
    call(server, "PATCH", f"/crews/{crew['id']}", user, {"is_public": False})


def kill_all(server):
    """SIGKILL the workers and the master, by pid: nothing is finished or committed."""
    for pid in [*server.worker_pids(), server.proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.proc.wait(10)


def test_every_event_arrives_signed_and_in_order_across_failures_and_a_kill(
    db_kind, tmp_path, request, redis_server
):
    database_url = database_url_for(db_kind, tmp_path, request)
    app = make_app(database_url, redis_server.url, **SETTINGS)
    reset_schema(app)
    admin, alice = make_user(app, "root", admin=True), make_user(app, "alice")
    env = served_env(database_url, redis_server.url, **SETTINGS)
    script = ["fail", "timeout", "ok", "ok", "hold"]
    with WebhookReceiver(script, sleep=1.5) as receiver:
        server = GunicornServer(env, workers=2, name="before-kill")
        try:
            writes(server, alice, "Unseen")  # before the subscription: never delivered
            sub = call(server, "POST", "/admin/webhooks", admin, {"url": receiver.url})
            start = sub["cursor"]
            for n in range(3):
                writes(server, alice, f"Crew {n}")
            assert receiver.held.wait(30), "the fifth delivery never came"
            kill_all(server)
        finally:
            receiver.release()
            server.stop()
        held = receiver.batches()[-1]
        server = GunicornServer(env, workers=2, name="after-kill")
        try:
            writes(server, alice, "Later")
            expected = feed_cursors(app, start, page_size=500)

            def all_delivered():
                seen = {c for b in receiver.batches() if b.status == 200 for c in b.cursors}
                return seen >= set(expected)

            # The killed process's lease runs out first (2 * WEBHOOKS_TIMEOUT + 10 s).
            wait_until(all_delivered, 60, "every feed event delivered", interval=0.2)
            time.sleep(0.5)  # a late duplicate would show here
            batches = receiver.batches()
        finally:
            server.stop()
    assert len(expected) >= 15
    assert check_delivered_in_order(batches, expected) == expected
    assert [b.action for b in batches[:5]] == script
    redelivered = [b for b in batches[5:] if b.cursors[0] == held.cursors[0]]
    assert redelivered, "the batch in flight when the app was killed was not delivered again"
    for batch in batches:
        assert batch.verifies(sub["secret"]), batch.headers
        assert batch.payload["subscription"] == sub["id"]
    from crew7.services.webhooks.subscriptions import recent_attempts

    with app.app_context():
        attempts = list(reversed(recent_attempts(sub["id"], limit=200)))
    print(f"\nwebhook delivery log ({db_kind}):\n{format_attempts(attempts)}")
    assert [a["status"] for a in attempts[:2]] == [500, None]
    assert attempts[1]["error"] == "timeout"
    # The attempt cut short by the kill left no row; every other batch the receiver
    # answered 200 is a row.
    assert sum(a["status"] == 200 for a in attempts) == sum(
        b.status == 200 for b in batches if b is not held and b.action != "timeout"
    )

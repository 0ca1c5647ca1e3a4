"""Webhooks in one process, on both databases: the admin API and the CLI, refused targets,
signed in-order delivery with retries, disabling after repeated failures, the lease that
keeps one deliverer per subscription, and the checks made again at delivery time."""

import time

import pytest

from crew7.services.webhooks.delivery import Deliverer
from tests.support.app import db_scalar, make_user
from tests.support.webhook_receiver import (
    WebhookReceiver,
    check_delivered_in_order,
    event_key,
    feed_cursors,
)

SECRET = "whsec_0123456789abcdef"
FAST = {
    "WEBHOOKS_ALLOW_PRIVATE": True,
    "WEBHOOKS_INTERVAL": 0,
    "WEBHOOKS_CONNECT_TIMEOUT": 0.5,
    "WEBHOOKS_TIMEOUT": 1.0,
    "WEBHOOKS_RETRY_BASE": 0.0,
    "WEBHOOKS_RETRY_MAX": 0.0,
    "WEBHOOKS_BATCH": 2,
}


@pytest.fixture
def wh_app(app_factory):
    return app_factory(**FAST)


@pytest.fixture
def admin(wh_app):
    return make_user(wh_app, "root", admin=True)


@pytest.fixture
def writer(wh_app):
    return make_user(wh_app, "alice")


def key(cursor):
    return event_key({"cursor": cursor})


def some_writes(client, user, name="Crew"):
    """A crew created, renamed, run and made private: several feed events."""
    h = user["headers"]
    crew = client.post("/crews", json={"name": name}, headers=h).get_json()
    client.post(f"/crews/{crew['id']}/agents", json={"name": "Ada", "role": "r"}, headers=h)
    client.patch(f"/crews/{crew['id']}", json={"name": name + " renamed"}, headers=h)
    run = client.post(f"/crews/{crew['id']}/runs", json={"status": "running"}, headers=h)
    client.patch(f"/runs/{run.get_json()['id']}", json={"status": "succeeded"}, headers=h)
    client.patch(f"/crews/{crew['id']}", json={"is_public": False}, headers=h)
    return crew["id"]


def subscribe(client, admin, url, **fields):
    r = client.post("/admin/webhooks", json={"url": url, **fields}, headers=admin["headers"])
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def deliver_all(app, deliverer=None, passes=50):
    deliverer = deliverer or Deliverer(app)
    with app.app_context():
        for _ in range(passes):
            if not deliverer.deliver_due():
                return
            time.sleep(0.01)


def test_admin_api_manages_subscriptions(wh_app, admin, writer):
    client = wh_app.test_client()
    with WebhookReceiver() as receiver:
        created = subscribe(client, admin, receiver.url, description="ops", from_start=True)
        assert created["secret"].startswith("whsec_") and len(created["secret"]) > 30
        given = subscribe(client, admin, receiver.url, secret=SECRET)
        assert given["secret"] == SECRET
    listed = client.get("/admin/webhooks", headers=admin["headers"]).get_json()
    assert [s["id"] for s in listed] == [created["id"], given["id"]]
    assert all("secret" not in s for s in listed)
    one = client.get(f"/admin/webhooks/{created['id']}", headers=admin["headers"]).get_json()
    assert one["enabled"] and one["consecutive_failures"] == 0 and one["attempts"] == []
    assert one["description"] == "ops" and "secret" not in one
    for method, path in (("get", "/admin/webhooks"), ("post", "/admin/webhooks")):
        assert getattr(client, method)(path, headers=writer["headers"]).status_code == 403
        assert getattr(client, method)(path).status_code == 401
    r = client.post(f"/admin/webhooks/{given['id']}/enable", headers=admin["headers"])
    assert r.status_code == 200 and r.get_json()["enabled"]
    assert (
        client.delete(f"/admin/webhooks/{given['id']}", headers=admin["headers"]).status_code == 204
    )
    r = client.get(f"/admin/webhooks/{given['id']}", headers=admin["headers"])
    assert r.status_code == 404 and r.get_json()["error"]["status"] == 404
    r = client.post(
        "/admin/webhooks", json={"url": receiver.url, "bogus": 1}, headers=admin["headers"]
    )
    assert r.status_code == 400
    r = client.post(
        "/admin/webhooks", json={"url": receiver.url, "secret": "short"}, headers=admin["headers"]
    )
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("LOOPBACK", "127.0.0.1 is loopback"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://example.com/hook", "scheme 'ftp'"),
        ("http://10.0.0.1/hook", "10.0.0.1 is private"),
        ("http://[::1]:8080/hook", "::1 is loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "127.0.0.1 is loopback"),
        ("http://localhost:8080/hook", "is loopback"),
        ("http://169.254.169.254/latest/meta-data", "is link-local"),
        ("http://0.0.0.0:8080/", "is unspecified"),
    ],
)
def test_private_and_non_http_targets_are_refused(app_factory, url, why):
    app = app_factory()  # WEBHOOKS_ALLOW_PRIVATE off, the default
    admin = make_user(app, "root", admin=True)
    client = app.test_client()
    with WebhookReceiver() as receiver:
        target = receiver.url if url == "LOOPBACK" else url
        r = client.post("/admin/webhooks", json={"url": target}, headers=admin["headers"])
    assert r.status_code == 400, r.get_json()
    assert why in r.get_json()["error"]["message"]
    assert db_scalar(app, "SELECT count(*) FROM webhook_subscriptions") == 0


def test_delivery_is_signed_in_order_and_retried_until_acknowledged(wh_app, admin, writer):
    client = wh_app.test_client()
    some_writes(client, writer, "Before")  # before the subscription: not delivered
    with WebhookReceiver(["fail", "timeout"], sleep=1.5) as receiver:
        sub = subscribe(client, admin, receiver.url)
        some_writes(client, writer, "After")
        deliver_all(wh_app)
        batches = receiver.batches()
    expected = feed_cursors(wh_app, after=sub["cursor"])
    assert len(expected) >= 4
    assert check_delivered_in_order(batches, expected) == expected
    assert [b.action for b in batches[:3]] == ["fail", "timeout", "ok"]
    assert batches[0].body == batches[1].body.replace(
        batches[1].payload["delivery"], batches[0].payload["delivery"]
    )
    for batch in batches:
        assert batch.verifies(sub["secret"])
        assert not batch.verifies(sub["secret"] + "x")
        assert batch.headers["X-Crew7-Delivery"] == batch.payload["delivery"]
        assert batch.payload["subscription"] == sub["id"]
        assert batch.headers["Content-Type"] == "application/json"
        assert len(batch.payload["events"]) <= FAST["WEBHOOKS_BATCH"]
    state = client.get(f"/admin/webhooks/{sub['id']}", headers=admin["headers"]).get_json()
    assert key(state["cursor"]) == expected[-1] and state["consecutive_failures"] == 0
    results = [(a["status"], a["error"]) for a in reversed(state["attempts"])]
    assert results[0][0] == 500 and results[1] == (None, "timeout")
    assert all(status == 200 for status, _ in results[2:])


def test_a_subscription_is_disabled_after_max_failures_and_enabled_again(app_factory):
    app = app_factory(**FAST, WEBHOOKS_MAX_FAILURES=3)
    admin, writer = make_user(app, "root", admin=True), make_user(app, "alice")
    client = app.test_client()
    with WebhookReceiver(["fail"] * 5) as receiver:
        sub = subscribe(client, admin, receiver.url, from_start=True)
        some_writes(client, writer)
        deliver_all(app)
        assert [b.action for b in receiver.batches()] == ["fail"] * 3
        state = client.get(f"/admin/webhooks/{sub['id']}", headers=admin["headers"]).get_json()
        assert not state["enabled"] and state["consecutive_failures"] == 3
        assert state["last_error"].startswith("HTTP 500")
        assert [a["attempt"] for a in reversed(state["attempts"])] == [1, 2, 3]
        client.post(f"/admin/webhooks/{sub['id']}/enable", headers=admin["headers"])
        deliver_all(app)
        assert [b.action for b in receiver.batches()][3:5] == ["fail", "fail"]
        assert receiver.batches()[-1].status == 200
    state = client.get(f"/admin/webhooks/{sub['id']}", headers=admin["headers"]).get_json()
    assert state["enabled"] and state["consecutive_failures"] == 0
    assert key(state["cursor"]) == feed_cursors(app)[-1]


def test_targets_are_checked_again_at_delivery(app_factory):
    lenient = app_factory(**FAST)
    admin, writer = make_user(lenient, "root", admin=True), make_user(lenient, "alice")
    strict = app_factory(**{**FAST, "WEBHOOKS_ALLOW_PRIVATE": False})
    with WebhookReceiver() as receiver:
        sub = subscribe(lenient.test_client(), admin, receiver.url, from_start=True)
        some_writes(lenient.test_client(), writer)
        deliver_all(strict, passes=1)
        assert receiver.batches() == []
    state = lenient.test_client().get(f"/admin/webhooks/{sub['id']}", headers=admin["headers"])
    assert "127.0.0.1 is loopback" in state.get_json()["last_error"]


def test_redirects_are_not_followed(wh_app, admin, writer):
    client = wh_app.test_client()
    with (
        WebhookReceiver() as elsewhere,
        WebhookReceiver(["redirect"], redirect_to=elsewhere.url) as receiver,
    ):
        sub = subscribe(client, admin, receiver.url, from_start=True)
        some_writes(client, writer)
        deliver_all(wh_app, passes=1)
        assert elsewhere.batches() == [] and len(receiver.batches()) == 1
    state = client.get(f"/admin/webhooks/{sub['id']}", headers=admin["headers"]).get_json()
    assert state["last_error"].startswith("HTTP 302") and state["cursor"] is None


def test_one_deliverer_at_a_time_holds_a_subscription(wh_app, admin, writer):
    """A second process finds the subscription leased and leaves it alone, until the lease
    expires: its holder died."""
    client = wh_app.test_client()
    with WebhookReceiver() as receiver:
        sub = subscribe(client, admin, receiver.url, from_start=True)
        some_writes(client, writer)
        first, second = Deliverer(wh_app), Deliverer(wh_app)
        with wh_app.app_context():
            assert first._claim(sub["id"], None)  # and then it dies, holding the lease
            assert second.deliver_one(sub["id"], None) == 0
            assert second.deliver_due() == 0
            assert receiver.batches() == []
            db_expire_lease(wh_app, sub["id"])
            assert second.deliver_due() == 1
        assert len(receiver.batches()) == 1


def db_expire_lease(app, sub_id):
    from sqlalchemy import text

    from crew7.extensions import db

    with db.engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_subscriptions SET lease_until = '2000-01-01' WHERE id = :id"),
            {"id": sub_id},
        )


def test_cli_manages_subscriptions_and_delivers(wh_app, writer):
    import json

    runner = wh_app.test_cli_runner()
    with WebhookReceiver() as receiver:
        out = runner.invoke(args=["webhooks", "add", receiver.url, "--from-start"])
        assert out.exit_code == 0, out.output
        sub = json.loads(out.output)
        some_writes(wh_app.test_client(), writer)
        out = runner.invoke(args=["webhooks", "deliver", "--once"])
        assert out.exit_code == 0 and "delivery attempts" in out.output
        assert receiver.batches() and all(b.verifies(sub["secret"]) for b in receiver.batches())
    listed = json.loads(runner.invoke(args=["webhooks", "list"]).output)
    assert key(listed[0]["cursor"]) == feed_cursors(wh_app)[-1]
    log = runner.invoke(args=["webhooks", "log"]).output
    assert " 200 " in log
    assert runner.invoke(args=["webhooks", "add", "ftp://x/"]).exit_code == 1
    assert runner.invoke(args=["webhooks", "enable", str(sub["id"])]).exit_code == 0
    assert runner.invoke(args=["webhooks", "remove", str(sub["id"])]).exit_code == 0
    assert runner.invoke(args=["webhooks", "remove", str(sub["id"])]).exit_code == 1


def test_delivery_connects_to_the_address_it_checked_within_a_deadline():
    """No second lookup: the host's name is only the Host header (this one resolves
    nowhere). A receiver trickling bytes never idles past a socket timeout; the attempt
    still ends by WEBHOOKS_TIMEOUT."""
    import socket

    from crew7.services.webhooks.transport import post

    with WebhookReceiver(["ok", "trickle"], sleep=4.0) as receiver:
        port = int(receiver.url.split(":")[2].split("/")[0])
        target = ("http", "rebound.invalid", port, [(socket.AF_INET, ("127.0.0.1", port))])
        outcome = post(target, "/hook", b"{}", {"Content-Type": "application/json"}, 0.5, 1.0)
        assert outcome.ok, outcome
        assert receiver.batches()[0].headers["Host"] == f"rebound.invalid:{port}"
        started = time.monotonic()
        outcome = post(target, "/hook", b"{}", {"Content-Type": "application/json"}, 0.5, 1.0)
        assert outcome.error == "timeout" and time.monotonic() - started < 1.5, outcome


def test_a_holder_whose_lease_was_taken_over_records_nothing(wh_app, admin, writer):
    """A deliverer stalled past its lease finds another holder when it answers: its
    outcome is rolled back, so only the new holder's attempt moves the subscription."""
    import threading

    from crew7.services.webhooks.delivery import LeaseLost

    client = wh_app.test_client()
    with WebhookReceiver(["hold", "ok"]) as receiver:
        sub = subscribe(client, admin, receiver.url, from_start=True)
        some_writes(client, writer)
        stalled, errors = Deliverer(wh_app), []

        def deliver():
            with wh_app.app_context():
                try:
                    stalled.deliver_one(sub["id"], None)
                except LeaseLost as exc:
                    errors.append(exc)

        thread = threading.Thread(target=deliver)
        thread.start()
        assert receiver.held.wait(10)
        with wh_app.app_context():
            db_expire_lease(wh_app, sub["id"])
            assert Deliverer(wh_app).deliver_one(sub["id"], None) == 1
        receiver.release()
        thread.join(10)
    assert len(errors) == 1
    state = client.get(f"/admin/webhooks/{sub['id']}", headers=admin["headers"]).get_json()
    assert len(state["attempts"]) == 1 and state["attempts"][0]["status"] == 200
    assert key(state["cursor"]) == key(receiver.batches()[1].payload["events"][-1]["cursor"])

"""Webhook subscriptions: created, listed, removed and re-enabled by operators (the admin
API in ``crew7.ops.webhooks`` and ``flask webhooks``)."""

import secrets

from flask import current_app
from sqlalchemy import func, select

from crew7.extensions import db
from crew7.models import utcnow
from crew7.services.errors import NotFound, ServiceError
from crew7.services.webhooks.addresses import RefusedURL, checked_target
from crew7.webhook_models import WebhookDelivery, WebhookSubscription

FEED_PAGE = 1000


def _iso(value):
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


def new_secret():
    return "whsec_" + secrets.token_urlsafe(32)


def feed_end():
    """The cursor after the feed's last event now (None while the feed is empty)."""
    from crew7.services.feed import read_feed

    cursor = None
    while True:
        page = read_feed(cursor, FEED_PAGE)
        if not page.has_more:
            return page.next_cursor or (page.events[-1]["cursor"] if page.events else cursor)
        cursor = page.next_cursor or page.events[-1]["cursor"]


def check_url(url):
    """Refuse a URL no webhook may target (ServiceError 400, saying why)."""
    try:
        checked_target(url, current_app.config["WEBHOOKS_ALLOW_PRIVATE"])
    except RefusedURL as exc:
        raise ServiceError(str(exc)) from None


def create_subscription(url, secret=None, description="", from_start=False):
    """A new subscription and its secret (generated when not given). It receives the
    events after the feed's current end, or every event the feed has with ``from_start``."""
    check_url(url)
    if secret is not None and not (isinstance(secret, str) and 16 <= len(secret) <= 200):
        raise ServiceError("secret must be a string of 16 to 200 characters")
    if not isinstance(description, str) or len(description) > 500:
        raise ServiceError("description must be a string of at most 500 characters")
    secret = secret or new_secret()
    sub = WebhookSubscription(
        url=url,
        secret=secret,
        description=description,
        enabled=True,
        cursor=None if from_start else feed_end(),
        consecutive_failures=0,
        next_attempt_at=utcnow(),
    )
    db.session.add(sub)
    db.session.commit()
    return sub, secret


def get_subscription(sub_id):
    sub = db.session.get(WebhookSubscription, sub_id)
    if sub is None:
        raise NotFound(f"webhook subscription {sub_id} not found")
    return sub


def list_subscriptions():
    return db.session.scalars(select(WebhookSubscription).order_by(WebhookSubscription.id)).all()


def delete_subscription(sub_id):
    db.session.delete(get_subscription(sub_id))
    db.session.commit()


def enable_subscription(sub_id):
    """Enabled again, its failures forgotten, due at once."""
    sub = get_subscription(sub_id)
    sub.enabled = True
    sub.consecutive_failures = 0
    sub.next_attempt_at = utcnow()
    db.session.commit()
    return sub


def subscription_state(sub):
    """What operators see of a subscription (never its secret)."""
    return {
        "id": sub.id,
        "url": sub.url,
        "description": sub.description,
        "enabled": sub.enabled,
        "cursor": sub.cursor,
        "consecutive_failures": sub.consecutive_failures,
        "next_attempt_at": _iso(sub.next_attempt_at) if sub.enabled else None,
        "last_attempt_at": _iso(sub.last_attempt_at),
        "last_success_at": _iso(sub.last_success_at),
        "last_error": sub.last_error,
        "created_at": _iso(sub.created_at),
    }


def recent_attempts(sub_id=None, limit=50):
    """The latest attempts (of one subscription), newest first, as dicts."""
    query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit)
    if sub_id is not None:
        query = query.where(WebhookDelivery.subscription_id == sub_id)
    return [
        {
            "subscription": row.subscription_id,
            "delivery": row.delivery,
            "attempt": row.attempt,
            "first_cursor": row.first_cursor,
            "last_cursor": row.last_cursor,
            "events": row.event_count,
            "status": row.status_code,
            "error": row.error,
            "duration_ms": row.duration_ms,
            "at": _iso(row.created_at),
        }
        for row in db.session.scalars(query)
    ]


def attempt_count(sub_id):
    return db.session.scalar(select(func.count()).where(WebhookDelivery.subscription_id == sub_id))

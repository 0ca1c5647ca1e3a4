"""Pure pieces of webhook delivery: the signature and the retry delay."""

import hashlib
import hmac
import random

SIGNATURE_HEADER = "X-Crew7-Signature"
TIMESTAMP_HEADER = "X-Crew7-Timestamp"
DELIVERY_HEADER = "X-Crew7-Delivery"
USER_AGENT = "crew7-webhooks/1"


def signature(secret, timestamp, body):
    """``v1=<hex>``: HMAC-SHA256 of ``f"{timestamp}.{body}"`` keyed with the secret."""
    if isinstance(body, bytes):
        body = body.decode()
    mac = hmac.new(secret.encode(), f"{int(timestamp)}.{body}".encode(), hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret, timestamp, body, header, now, tolerance=300):
    """What a receiver checks: the signature (in constant time) and a recent timestamp."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, ts, body), header or "")


def signed_headers(secret, timestamp, body, delivery):
    """The headers of one delivery's POST."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        TIMESTAMP_HEADER: str(int(timestamp)),
        DELIVERY_HEADER: delivery,
    }


def backoff_delay(failures, base, cap, rng=random):
    """Seconds to wait after ``failures`` consecutive failures: exponential backoff with
    full jitter, uniform in [0, min(cap, base * 2 ** (failures - 1))]."""
    if failures <= 0:
        return 0.0
    # Past 2**64 the cap has long been reached; don't build huge integers.
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 64))
    return rng.uniform(0, ceiling)

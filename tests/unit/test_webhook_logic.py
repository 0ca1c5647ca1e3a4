"""Webhooks' pure logic: the signature, the retry delay, which addresses are refused."""

import hashlib
import hmac
import random

import pytest

from crew7.services.webhooks.addresses import RefusedURL, address_problem, parse_target
from crew7.services.webhooks.signing import backoff_delay, signature, signed_headers, verify

SECRET = "whsec_test_secret_0123456789"


def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = '{"events":[]}'
    expected = hmac.new(SECRET.encode(), b'1700000000.{"events":[]}', hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, body) == "v1=" + expected
    assert signature(SECRET, 1700000000, body.encode()) == "v1=" + expected


def test_headers_name_the_signature_timestamp_and_delivery():
    headers = signed_headers(SECRET, 1700000000, "{}", "d-1")
    assert headers["X-Crew7-Signature"] == signature(SECRET, 1700000000, "{}")
    assert headers["X-Crew7-Timestamp"] == "1700000000"
    assert headers["X-Crew7-Delivery"] == "d-1"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("crew7-webhooks/")


def test_verify_rejects_another_body_secret_or_an_old_timestamp():
    sig = signature(SECRET, 1000, "{}")
    assert verify(SECRET, "1000", "{}", sig, now=1000)
    assert verify(SECRET, "1000", "{}", sig, now=1300)
    assert not verify(SECRET, "1000", "{}", sig, now=1301)
    assert not verify(SECRET, "1000", "{ }", sig, now=1000)
    assert not verify(SECRET + "x", "1000", "{}", sig, now=1000)
    assert not verify(SECRET, "1001", "{}", sig, now=1000)
    assert not verify(SECRET, "soon", "{}", sig, now=1000)
    assert not verify(SECRET, "1000", "{}", None, now=1000)


def test_backoff_is_full_jitter_under_an_exponential_capped_ceiling():
    rng = random.Random(7)
    assert backoff_delay(0, 2, 60, rng) == 0
    for failures, ceiling in ((1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (40, 60), (5000, 60)):
        delays = [backoff_delay(failures, 2, 60, rng) for _ in range(2000)]
        assert 0 <= min(delays) and max(delays) <= ceiling
        # Full jitter: spread over the whole range, not bunched near the ceiling.
        assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling
        assert 0.4 * ceiling < sum(delays) / len(delays) < 0.6 * ceiling


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",
        "2002:a00:1::1",
    ],
)
def test_private_and_special_addresses_are_refused(address):
    assert address_problem(address) is not None


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address):
    assert address_problem(address) is None


def test_allow_private_lets_private_ones_through_but_never_multicast_or_unspecified():
    for address in ("127.0.0.1", "10.0.0.1", "::1", "::ffff:127.0.0.1", "fe80::1"):
        assert address_problem(address, allow_private=True) is None
    for address in ("0.0.0.0", "::", "224.0.0.1", "ff02::1", "::ffff:0.0.0.0"):
        assert address_problem(address, allow_private=True) is not None


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/",
        "gopher://example.com/",
        "javascript:alert(1)",
        "http://",
        "http:///path",
        "http://user:pass@example.com/",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "",
        None,
    ],
)
def test_urls_other_than_plain_http_and_https_are_refused(url):
    with pytest.raises(RefusedURL):
        parse_target(url)


def test_targets_default_ports():
    assert parse_target("https://example.com/hook") == ("https", "example.com", 443)
    assert parse_target("http://example.com/hook") == ("http", "example.com", 80)
    assert parse_target("http://[2606:4700::1]:8080/") == ("http", "2606:4700::1", 8080)


def test_the_readme_verification_snippet_accepts_our_signature_and_nothing_else():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Webhooks", 1)[1].split("\n## ", 1)[0]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(snippet, namespace)  # noqa: S102 - the project's own README
    verify_snippet = namespace["verify"]
    body = b'{"subscription":1,"events":[]}'
    now = int(__import__("time").time())
    headers = signed_headers(SECRET, now, body, "d")
    sig, ts = headers["X-Crew7-Signature"], headers["X-Crew7-Timestamp"]
    assert verify_snippet(SECRET, body, ts, sig)
    assert not verify_snippet(SECRET, body + b" ", ts, sig)
    assert not verify_snippet("other" + SECRET, body, ts, sig)
    old = signed_headers(SECRET, now - 301, body, "d")
    assert not verify_snippet(SECRET, body, old["X-Crew7-Timestamp"], old["X-Crew7-Signature"])


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"WEBHOOKS_BATCH": 0}, "WEBHOOKS_BATCH"),
        ({"WEBHOOKS_BATCH": 1001}, "WEBHOOKS_BATCH"),
        ({"WEBHOOKS_MAX_FAILURES": 0}, "WEBHOOKS_MAX_FAILURES"),
        ({"WEBHOOKS_TIMEOUT": 0}, "WEBHOOKS_TIMEOUT"),
        ({"WEBHOOKS_CONNECT_TIMEOUT": 20, "WEBHOOKS_TIMEOUT": 10}, "WEBHOOKS_CONNECT_TIMEOUT"),
        ({"WEBHOOKS_RETRY_BASE": 10, "WEBHOOKS_RETRY_MAX": 5}, "WEBHOOKS_RETRY_MAX"),
        ({"WEBHOOKS_RETRY_BASE": -1}, "WEBHOOKS_RETRY_BASE"),
        ({"WEBHOOKS_INTERVAL": "often"}, "WEBHOOKS_INTERVAL"),
        ({"WEBHOOKS_ALLOW_PRIVATE": "maybe"}, "WEBHOOKS_ALLOW_PRIVATE"),
        ({"WEBHOOKS_LOG_RETENTION": 10}, "WEBHOOKS_LOG_RETENTION"),
    ],
)
def test_webhook_settings_are_validated_by_name(changes, named):
    from crew7.config import ConfigError, DefaultConfig, validate_config

    config = {k: getattr(DefaultConfig, k) for k in dir(DefaultConfig) if k.isupper()}
    config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    validate_config(dict(config))
    with pytest.raises(ConfigError, match=named):
        validate_config({**config, **changes})

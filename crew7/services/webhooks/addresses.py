"""Which URLs a webhook may target, and the addresses it may connect to.

Only http(s) URLs whose host resolves to public addresses: private, loopback, link-local,
shared, reserved, multicast and unspecified ones are refused, for IPv4 and IPv6 alike (an
IPv4 address inside IPv6, mapped or 6to4, is judged as the IPv4 address).
``WEBHOOKS_ALLOW_PRIVATE`` lets private, loopback and link-local ones through (tests, a
receiver on the same network); multicast and unspecified addresses are never a receiver.
The check runs at creation and again at every delivery on the addresses then resolved, and
delivery connects to exactly the addresses it checked.
"""

import ipaddress
import socket
from urllib.parse import urlsplit


class RefusedURL(ValueError):
    """The URL may not be a webhook target; the message says why."""


def address_problem(address, allow_private=False):
    """Why ``address`` may not be connected to, or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            problem = address_problem(embedded, allow_private)
            return problem and f"{problem} (inside {ip})"
    if ip.is_unspecified:
        return f"{ip} is unspecified"
    if ip.is_multicast:
        return f"{ip} is multicast"
    if allow_private:
        return None
    for name, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return f"{ip} is {name}"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def parse_target(url):
    """(scheme, host, port) of an http(s) URL; RefusedURL otherwise."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise RefusedURL("url must be an http:// or https:// URL of at most 2000 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedURL(f"url is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedURL(f"url scheme {parts.scheme or '(none)'!r} refused: only http and https")
    if not parts.hostname:
        raise RefusedURL("url has no host")
    if parts.username is not None or parts.password is not None:
        raise RefusedURL("url must not contain credentials")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise RefusedURL("url contains whitespace or control characters")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve(host, port):
    """Every address ``host`` resolves to: [(family, sockaddr)], in resolver order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise RefusedURL(f"url host {host!r} does not resolve: {exc}") from None
    seen, out = set(), []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in seen:
            seen.add(sockaddr[0])
            out.append((family, sockaddr))
    if not out:
        raise RefusedURL(f"url host {host!r} has no IPv4 or IPv6 address")
    return out


def checked_target(url, allow_private=False):
    """(scheme, host, port, [(family, sockaddr)]) of a URL every address of which may be
    connected to; RefusedURL naming the first that may not."""
    scheme, host, port = parse_target(url)
    addresses = resolve(host, port)
    for _, sockaddr in addresses:
        problem = address_problem(sockaddr[0], allow_private)
        if problem:
            raise RefusedURL(f"url host {host!r} refused: {problem}")
    return scheme, host, port, addresses

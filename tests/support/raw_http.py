"""One HTTP request on a new connection to 127.0.0.1, for tests and bench (standard library)."""

from __future__ import annotations

import http.client
import json

CHUNK = 8192


def request(port, method, path, body=None, headers=None, *, timeout=5, chunked=False):
    """One request on a new connection: (status, lower-cased headers, body bytes).

    body: bytes, or a dict sent as JSON (with Content-Type: application/json unless given).
    chunked: the body sent in CHUNK-byte pieces with Transfer-Encoding: chunked.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if chunked:
            conn.putrequest(method, path)
            for name, value in hdrs.items():
                conn.putheader(name, value)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for start in range(0, len(body), CHUNK):
                piece = body[start : start + CHUNK]
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=hdrs)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()

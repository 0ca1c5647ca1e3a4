"""One JSON shape for every error::

    {"error": {"status": 422, "code": "validation_error", "message": "...", "fields": {...}}}

Validation errors are 422 everywhere, with per-field messages under ``fields``.
"""

import logging

from flask import current_app, jsonify
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


def error_response(status, message, fields=None, headers=None, extra=None):
    body = {"status": status, "code": _CODES.get(status, "error"), "message": message}
    if fields:
        body["fields"] = fields
    body.update(extra or {})
    response = jsonify(error=body)
    response.status_code = status
    if headers:
        response.headers.update(headers)
    return response


def _flatten_messages(messages):
    # webargs nests messages by location ({"json": {...}, "query": {...}}).
    if isinstance(messages, dict) and set(messages) <= {"json", "query", "view_args", "form"}:
        merged = {}
        for value in messages.values():
            merged.update(value if isinstance(value, dict) else {"_schema": value})
        return merged
    return messages


def handle_http_exception(exc):
    data = getattr(exc, "data", None) or {}
    fields = _flatten_messages(data.get("messages")) if isinstance(data, dict) else None
    message = data.get("message") if isinstance(data, dict) else None
    if exc.code == 400 and data.get("messages", {}).get("json") == ["Invalid JSON body."]:
        return error_response(400, "malformed JSON body")
    if exc.code == 422:
        message = "validation failed"
    if exc.code == 400 and fields and not message:
        message = "invalid query arguments"  # a route that answers them with 400
    headers = {}
    if exc.code == 405 and exc.valid_methods:
        headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    if exc.code == 413:
        message = f"request body larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes"
    if exc.code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="crew7"'
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    return error_response(exc.code, message or exc.description or exc.name, fields, headers)


def handle_database_unavailable(exc):
    """The database is unreachable: a JSON 503 the client may retry, logged once per error."""
    from crew7.extensions import db

    log.warning("database unavailable: %s", str(exc.orig or exc).splitlines()[0][:200])
    try:
        db.session.rollback()
    except Exception:  # the connection is already gone; nothing more to undo
        pass
    return error_response(503, "database unavailable, retry shortly", headers={"Retry-After": "5"})


def handle_unexpected(exc):
    if isinstance(exc, HTTPException):
        return handle_http_exception(exc)
    if isinstance(exc, OperationalError | InterfaceError) and _is_disconnect(exc):
        return handle_database_unavailable(exc)
    log.exception("unhandled error")
    return error_response(500, InternalServerError.description)


def _is_disconnect(exc):
    # SQLAlchemy flags lost connections; a refused connection at connect time is an
    # OperationalError from the driver without that flag.
    return exc.connection_invalidated or isinstance(exc, OperationalError)


def handle_service_error(exc):
    return error_response(exc.status, str(exc))


def register_error_handlers(app):
    from crew7.services.errors import ServiceError

    app.register_error_handler(ServiceError, handle_service_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)

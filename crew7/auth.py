"""Bearer-token authentication and the ownership rules."""

import secrets
from functools import wraps

from flask import g, request
from flask_smorest import abort
from sqlalchemy import select

from crew7.bodies import require_json_body
from crew7.extensions import db
from crew7.models import User, hash_token


def new_token():
    return "c7_" + secrets.token_urlsafe(32)


def current_user():
    """The user the request's bearer token names, None without one; 401 on a bad one."""
    if "user" in g:
        return g.user
    header = request.headers.get("Authorization")
    user = None
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            abort(401, message="malformed Authorization header: expected 'Bearer <token>'")
        user = db.session.scalar(select(User).where(User.token_hash == hash_token(token.strip())))
        if user is None:
            abort(401, message="invalid token")
    g.user = user
    return user


def login_required(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        if current_user() is None:
            abort(401, message="authentication required: send 'Authorization: Bearer <token>'")
        return view(*args, **kwargs)

    return wrapper


def admin_required(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        user = current_user()
        if user is None:
            abort(401, message="authentication required: send 'Authorization: Bearer <token>'")
        if not user.is_admin:
            abort(403, message="admin token required")
        return view(*args, **kwargs)

    return wrapper


def _load_object(load, kwargs, user):
    """The one id in the path replaced by the object ``load(id, user)`` finds: ``crew_id``
    becomes ``crew``. ``load`` raises the 404 (or 403)."""
    ((name, value),) = kwargs.items()
    return {name.removesuffix("_id"): load(value, user)}


def read_access(load):
    """For a read that takes a query: the object the path names, visible to the caller
    (404), before ``@blp.arguments`` validates the query (422). Place it above that."""

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            return view(*args, **_load_object(load, kwargs, current_user()))

        return wrapper

    return decorator


def write_access(load=None):
    """What a write checks before its body is validated, in this order: a valid token
    (401); the object the path names, visible (404) and owned (403), found by
    ``load(id, user)`` and passed on without its ``_id``; a JSON body for a POST or PATCH
    (400, 415). Only the owner learns anything about the body's rules.

    Place it above ``@blp.arguments``, which validates the body (422).
    """

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            user = current_user()
            if user is None:
                abort(401, message="authentication required: send 'Authorization: Bearer <token>'")
            if load is not None:
                kwargs = _load_object(load, kwargs, user)
            if request.method in ("POST", "PATCH"):
                require_json_body()
            return view(*args, **kwargs)

        return wrapper

    return decorator

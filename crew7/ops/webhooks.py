"""Operators' endpoints for webhook subscriptions (admin token required)."""

from flask import Blueprint, jsonify, request
from flask_smorest import abort

from crew7.auth import admin_required
from crew7.bodies import require_json_body
from crew7.services.webhooks import subscriptions as service

bp = Blueprint("webhooks", __name__, url_prefix="/admin/webhooks")

_FIELDS = {"url", "secret", "description", "from_start"}


@bp.post("")
@admin_required
def create():
    """A subscription: 201 with its id and secret (shown only this once)."""
    require_json_body()
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, message="the body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        abort(400, message=f"unknown fields: {', '.join(unknown)}")
    from_start = body.get("from_start", False)
    if not isinstance(from_start, bool):
        abort(400, message="from_start must be true or false")
    sub, secret = service.create_subscription(
        body.get("url"), body.get("secret"), body.get("description", ""), from_start
    )
    return jsonify(service.subscription_state(sub) | {"secret": secret}), 201


@bp.get("")
@admin_required
def list_all():
    return jsonify([service.subscription_state(s) for s in service.list_subscriptions()])


@bp.get("/<id:sub_id>")
@admin_required
def show(sub_id):
    """A subscription's state and its latest attempts."""
    state = service.subscription_state(service.get_subscription(sub_id))
    return jsonify(state | {"attempts": service.recent_attempts(sub_id, limit=20)})


@bp.delete("/<id:sub_id>")
@admin_required
def remove(sub_id):
    service.delete_subscription(sub_id)
    return "", 204


@bp.post("/<id:sub_id>/enable")
@admin_required
def enable(sub_id):
    """Enabled again, its consecutive failures reset."""
    return jsonify(service.subscription_state(service.enable_subscription(sub_id)))

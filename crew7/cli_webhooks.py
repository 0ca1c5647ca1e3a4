"""``flask webhooks``: thin commands over ``crew7.services.webhooks``."""

import json

import click
from flask import current_app
from flask.cli import AppGroup

from crew7.services.errors import ServiceError

webhooks_cli = AppGroup("webhooks", help="Webhook subscriptions to the change feed.")


def _service_call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None


@webhooks_cli.command("add")
@click.argument("url")
@click.option("--secret", help="Signing secret (default: a new random one).")
@click.option("--description", default="")
@click.option("--from-start", is_flag=True, help="Deliver every event the feed has.")
def add_command(url, secret, description, from_start):
    """Subscribe URL; prints the id and the secret (shown only this once)."""
    from crew7.services.webhooks.subscriptions import create_subscription

    sub, secret = _service_call(create_subscription, url, secret, description, from_start)
    click.echo(json.dumps({"id": sub.id, "url": sub.url, "secret": secret}))


@webhooks_cli.command("list")
def list_command():
    """Every subscription with its delivery state."""
    from crew7.services.webhooks.subscriptions import list_subscriptions, subscription_state

    click.echo(json.dumps([subscription_state(s) for s in list_subscriptions()], indent=2))


@webhooks_cli.command("remove")
@click.argument("sub_id", type=int)
def remove_command(sub_id):
    """Delete a subscription and its attempts log."""
    from crew7.services.webhooks.subscriptions import delete_subscription

    _service_call(delete_subscription, sub_id)
    click.echo(f"removed webhook subscription {sub_id}")


@webhooks_cli.command("enable")
@click.argument("sub_id", type=int)
def enable_command(sub_id):
    """Enable a subscription again and reset its failures."""
    from crew7.services.webhooks.subscriptions import enable_subscription

    _service_call(enable_subscription, sub_id)
    click.echo(f"enabled webhook subscription {sub_id}")


@webhooks_cli.command("log")
@click.option("--subscription", "sub_id", type=int, help="Only this subscription's attempts.")
@click.option("--last", default=20, show_default=True, help="How many attempts to show.")
def log_command(sub_id, last):
    """The latest delivery attempts, oldest first."""
    from crew7.services.webhooks.subscriptions import recent_attempts

    click.echo(format_attempts(reversed(recent_attempts(sub_id, limit=last))))


@webhooks_cli.command("deliver")
@click.option("--once", is_flag=True, help="Deliver until nothing is due, then exit.")
def deliver_command(once):
    """Deliver due batches (in the foreground; serving processes do it in a thread)."""
    from crew7.services.webhooks.delivery import get_deliverer

    deliverer = get_deliverer(current_app)
    if once:
        click.echo(f"{deliverer.run_until_idle()} delivery attempts")
        return
    interval = current_app.config["WEBHOOKS_INTERVAL"] or 1.0
    thread = deliverer.start()
    try:
        while thread.is_alive():
            thread.join(interval)
    except KeyboardInterrupt:
        deliverer.stop()


def format_attempts(attempts):
    """The attempts log as a table."""
    lines = [f"{'at':20} {'sub':>4} {'try':>3} {'events':>6} {'result':>8} {'ms':>8}  cursors"]
    for a in attempts:
        result = str(a["status"]) if a["status"] is not None else (a["error"] or "")[:8]
        lines.append(
            f"{a['at']:20} {a['subscription']:>4} {a['attempt']:>3} {a['events']:>6} "
            f"{result:>8} {a['duration_ms']:>8}  {a['first_cursor']}..{a['last_cursor']}"
        )
    return "\n".join(lines)

"""Thin click commands over the services."""

import json
import sys
import time

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import select

from crew7.extensions import db
from crew7.models import User


@click.command("create-user")
@with_appcontext
@click.argument("name")
@click.option("--admin", is_flag=True, help="May read /cache/stats and other admin routes.")
def create_user_command(name, admin):
    """Create a user and print its API token (shown only this once)."""
    from crew7.services.users import create_user

    if db.session.scalar(select(User).where(User.name == name)):
        raise click.ClickException(f"user {name!r} already exists")
    user, token = create_user(name, admin=admin)
    click.echo(token)
    click.echo(f"created user {user.name} (id {user.id}{', admin' if admin else ''})", err=True)


@click.command("seed-demo")
@with_appcontext
@click.option("--users", default=3, show_default=True)
@click.option("--crews", default=20, show_default=True)
@click.option("--agents-per-crew", default=3, show_default=True)
@click.option("--runs-per-crew", default=25, show_default=True)
@click.option("--private-every", default=5, show_default=True, help="every Nth crew is private")
@click.option("--seed", default=7, show_default=True)
def seed_demo_command(users, crews, agents_per_crew, runs_per_crew, private_every, seed):
    """Create deterministic demo data (bulk inserts)."""
    from crew7.services.errors import ServiceError
    from crew7.services.seed import seed_demo

    started = time.perf_counter()
    try:
        summary = seed_demo(users, crews, agents_per_crew, runs_per_crew, private_every, seed)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    summary["seconds"] = round(time.perf_counter() - started, 2)
    click.echo(json.dumps(summary))


@click.command("recompute-stats")
@with_appcontext
def recompute_stats_command():
    """Rebuild every crew's run aggregates from the runs table."""
    from crew7.services.aggregates import recompute_all_stats

    count = recompute_all_stats()
    get_cache().invalidate_all_metadata()
    click.echo(f"recomputed run aggregates of {count} crews")


@click.command("warm-cache")
@with_appcontext
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    help="How many popular crews (default CACHE_WARM_COUNT).",
)
def warm_cache_command(limit):
    """Warm the most popular crews, their agents and the leaderboards."""
    from crew7.services.cache import CacheUnavailable
    from crew7.services.warming import describe, warm_all_caches

    started = time.perf_counter()
    bar = None

    def progress(done, total):
        # A progress bar for a person at a terminal; logs and pipes get the summary only.
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label="warming", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        summary = warm_all_caches(limit, progress if sys.stderr.isatty() else None)
    except CacheUnavailable as exc:
        raise click.ClickException(f"cache not warmed: Redis is unavailable ({exc})") from None
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    click.echo(f"Cache warming complete: {describe(summary)}")
    click.echo(f"took {time.perf_counter() - started:.2f} s", err=True)


@click.command("cache-clear")
@with_appcontext
@click.option("--crew", "crew_id", type=int, help="Only this crew's documents.")
@click.option("--all", "everything", is_flag=True, help="Every metadata and stats document.")
def cache_clear_command(crew_id, everything):
    """Invalidate cached documents (SCAN in batches; never FLUSHDB)."""
    if (crew_id is None) == (not everything):
        raise click.UsageError("give exactly one of --crew ID or --all")
    cache = get_cache()
    if everything:
        click.echo(f"invalidated {cache.invalidate_all_metadata()} keys")
    else:
        from crew7.services.metadata import agent_ids_of_crew

        ok = cache.invalidate_all_crew_metadata(crew_id, agent_ids_of_crew(crew_id))
        click.echo(f"invalidated crew {crew_id}" + ("" if ok else " (Redis unavailable)"))


@click.command("cache-stats")
@with_appcontext
def cache_stats_command():
    """Hits, misses and hit rate per family (all workers), keys per family, memory used."""
    from crew7.ops.views import cache_report

    click.echo(json.dumps(cache_report(), indent=2, default=str))


@click.command("cache-log")
@with_appcontext
@click.option("--last", default=10, show_default=True, help="How many recent entries to show.")
def cache_log_command(last):
    """The cache change log: size, watermark, the relay's lag and the last entries."""
    from crew7.services.changelog import get_relay

    click.echo(json.dumps(get_relay(current_app).status(last=last), indent=2, default=str))


@click.command("cache-replay")
@with_appcontext
def cache_replay_command():
    """Apply the invalidations of every retained change-log entry (after restoring a Redis
    from a backup, say)."""
    from crew7.services.cache import CacheUnavailable
    from crew7.services.changelog import get_relay

    try:
        count = get_relay(current_app).replay_all()
    except CacheUnavailable as exc:
        raise click.ClickException(f"Redis unavailable, nothing applied past it: {exc}") from exc
    click.echo(f"applied {count} change-log entries")


@click.command("nginx-config")
@with_appcontext
@click.option("--listen", required=True, help="HOST:PORT nginx listens on.")
@click.option("--app", "app_addr", required=True, help="HOST:PORT of gunicorn.")
@click.option("--redis", "redis_addr", help="HOST:PORT of Redis (default: REDIS_URL's).")
@click.option("--prefix", default=".", show_default=True, help="nginx -p: pid, logs, temp.")
@click.option("--redis-password", help="Redis AUTH password (default: REDIS_URL's).")
@click.option("--redis-db", type=int, help="Redis database (default: REDIS_URL's, or 0).")
@click.option("--key-prefix", help="Prefix of every key (default: CACHE_KEY_PREFIX).")
@click.option("--redis-timeout-ms", type=click.IntRange(1), default=100, show_default=True)
@click.option("--workers", default="auto", show_default=True, help="worker_processes")
@click.option("--access-log", help="Default: PREFIX/access.log (e.g. /dev/stdout).")
@click.option("--error-log", help="Default: PREFIX/error.log (e.g. /dev/stderr).")
@click.option("--module-dir", help="Folder of ngx_http_lua_module.so (default: found).")
@click.option("--flush-interval", type=float, default=0.5, show_default=True)
@click.option("--proxy-read-timeout", default="35s", show_default=True)
@click.option("--resolver", help="DNS server for a Redis named by host (Docker: 127.0.0.11).")
@click.option(
    "--rate-limit",
    "rate_limits",
    multiple=True,
    metavar="ZONE=RATE:BURST",
    help="Override a rate limit, e.g. crew7_api=1r/m:2 (tests).",
)
def nginx_config_command(rate_limits, **kwargs):
    """Print the nginx.conf of the front (nginx + Lua hits from Redis) for this app."""
    from crew7.front import front_options, render_front_config

    limits = {}
    for item in rate_limits:
        zone, _, spec = item.partition("=")
        rate, _, burst = spec.partition(":")
        if not (zone and rate and burst.isdigit()):
            raise click.BadParameter(f"{item!r}: not ZONE=RATE:BURST", param_hint="--rate-limit")
        limits[zone] = (rate, int(burst))
    try:
        options = front_options(current_app.config, limits=limits, **kwargs)
        text = render_front_config(current_app.config, options)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(text, nl=False)


def get_cache():
    from crew7.services.cache import get_cache_service

    return get_cache_service(current_app)


def register_cli(app):
    from crew7.cli_webhooks import webhooks_cli

    app.cli.add_command(webhooks_cli)
    for command in (
        create_user_command,
        seed_demo_command,
        recompute_stats_command,
        warm_cache_command,
        cache_clear_command,
        cache_stats_command,
        cache_log_command,
        cache_replay_command,
        nginx_config_command,
    ):
        app.cli.add_command(command)

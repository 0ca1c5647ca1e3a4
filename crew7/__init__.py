"""crew7: NFT metadata for crews of AI agents, served through a Redis read-through cache."""

import os

from flask import Flask

from crew7.config import ConfigError, DefaultConfig, validate_config

__all__ = ["ConfigError", "create_app"]

_MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")


def create_app(test_config=None):
    """Build the application: configuration, extensions, blueprints, hooks, commands."""
    app = Flask(
        __name__,
        instance_relative_config=True,
        instance_path=os.environ.get("CREW7_INSTANCE_PATH") or None,
    )
    load_config(app, test_config)
    configure_logging(app)
    configure_routing(app)
    register_sessions(app)
    register_extensions(app)
    register_errorhandlers(app)
    register_blueprints(app)
    register_hooks(app)
    register_commands(app)
    register_fast_path(app)
    register_proxy_fix(app)
    return app


def load_config(app, test_config):
    app.config.from_object(DefaultConfig)
    # Each app its own copy of a mapping default: from_prefixed_env writes a nested name
    # (CREW7_CONTRACT_CREWS__name) into the mapping it finds, which would be the class's.
    app.config.update({k: dict(v) for k, v in app.config.items() if isinstance(v, dict)})
    app.config.from_pyfile("config.py", silent=True)
    # The conventional variables, then CREW7_<NAME> for every setting, then the test dict.
    for name in ("DATABASE_URL", "REDIS_URL"):
        if os.environ.get(name):
            app.config[name] = os.environ[name]
    app.config.from_prefixed_env("CREW7")
    if test_config:
        app.config.update(test_config)
    if app.config.get("DATABASE_URL"):
        app.config["SQLALCHEMY_DATABASE_URI"] = app.config["DATABASE_URL"]
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        os.makedirs(app.instance_path, exist_ok=True)
        path = os.path.join(app.instance_path, "crew7.sqlite3")
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{path}"
    app.config["SQLALCHEMY_DATABASE_URI"] = normalise_database_url(
        app.config["SQLALCHEMY_DATABASE_URI"]
    )
    validate_config(app.config)
    from crew7.services.contract import check_contract_settings

    check_contract_settings(app.config)
    from crew7.services.cache import document_type_problems

    problems = document_type_problems(app.config)
    if problems:
        raise ConfigError("invalid cache document types: " + "; ".join(problems))


def configure_logging(app):
    import logging

    if app.logger.level == logging.NOTSET:
        app.logger.setLevel(logging.INFO)


def configure_routing(app):
    """No routing redirects: werkzeug builds them from the request's Host header, so a
    doubled slash (``/metadata//crew/1``) would redirect to any host a client names. Set
    before the first rule is added; every rule reads it when it is bound. (Strict slashes
    stay: a trailing slash is a 404, not an alias; no rule ends with one, so none
    redirects.)"""
    app.url_map.merge_slashes = False


def normalise_database_url(url):
    """Map the conventional ``postgres://`` / ``postgresql://`` URLs onto psycopg 3."""
    if not isinstance(url, str):
        return url
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def register_sessions(app):
    """No cookie sessions: the API authenticates every request by its bearer token, and
    opening a signed cookie session costs every request, the cache hits included."""
    from flask.sessions import SessionInterface

    class NoSessions(SessionInterface):
        def open_session(self, app, request):
            return None

        def save_session(self, app, session, response):
            return None

    app.session_interface = NoSessions()


def register_extensions(app):
    from crew7.extensions import (
        MAX_ID,
        TOKEN_ID_PATTERN,
        CrewApi,
        IdConverter,
        TokenIdConverter,
        cache,
        db,
        migrate,
    )

    app.url_map.converters["id"] = IdConverter
    app.url_map.converters["token_id"] = TokenIdConverter
    db.init_app(app)
    replace_session_teardown(app, db)
    migrate.init_app(app, db, directory=_MIGRATIONS)
    register_cache(app, cache)
    # The Api holds this app's OpenAPI document, so each app has its own.
    api = app.extensions["crew7.api"] = CrewApi(app)
    api.register_converter(
        IdConverter, lambda _: {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    )
    api.register_converter(
        TokenIdConverter, lambda _: {"type": "string", "pattern": f"^({TOKEN_ID_PATTERN})$"}
    )
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "description": "API token"}
    )


def register_cache(app, cache):
    """One Redis client for Flask-Caching and the metadata cache, which gets from the app
    what it must not import: the Prometheus counters, and a way to run work after the
    response. Fails here, naming the problem, when there is no client."""
    from crew7.services import metrics
    from crew7.services.cache import CacheService, connect, flask_caching_config

    app.config.update(flask_caching_config(app.config, connect(app.config)))
    cache.init_app(app)
    app.extensions["crew7.cache"] = CacheService.from_app(
        app, metrics=metrics, defer=run_after_response
    )


def run_after_response(fn):
    """Run ``fn`` once the response is sent, in an app context whose database session is
    ended afterwards; outside a request, run it now."""
    from flask import after_this_request, current_app, has_request_context

    if not has_request_context():
        fn()
        return
    app = current_app._get_current_object()

    def run():
        with app.app_context():
            try:
                fn()
            finally:
                from crew7.extensions import db

                db.session.remove()

    @after_this_request
    def register(response):
        response.call_on_close(run)
        return response


def replace_session_teardown(app, db):
    """End each request's session without letting a dead database connection fail it.

    Flask-SQLAlchemy's teardown rolls back on the session's connection; if the database
    went away meanwhile that raises after the response was built, and the WSGI server
    answers with its own HTML 500 instead. The connection is dropped either way.
    """
    import logging

    app.teardown_appcontext_funcs[:] = [
        f for f in app.teardown_appcontext_funcs if f != db._teardown_session
    ]

    @app.teardown_appcontext
    def remove_session(exc):
        try:
            db.session.remove()
        except Exception as error:  # the driver's error type varies; the outcome doesn't
            logging.getLogger("crew7").warning(
                "database connection lost at the end of a request: %s",
                str(error).splitlines()[0][:200],
            )
            db.session.registry.clear()


def register_errorhandlers(app):
    from crew7.errors import register_error_handlers

    register_error_handlers(app)


def register_blueprints(app):
    from crew7.crews.views import blp as crews_blp
    from crew7.docs.views import bp as docs_bp
    from crew7.health.views import bp as health_bp
    from crew7.images.views import blp as images_blp
    from crew7.metadata.contract import blp as contract_blp
    from crew7.metadata.views import blp as metadata_blp
    from crew7.ops.views import bp as ops_bp
    from crew7.ops.views import register_request_metrics
    from crew7.ops.webhooks import bp as webhooks_bp
    from crew7.rankings.views import blp as rankings_blp

    api = app.extensions["crew7.api"]
    api.register_blueprint(crews_blp)
    api.register_blueprint(metadata_blp)
    api.register_blueprint(images_blp)
    api.register_blueprint(contract_blp)
    api.register_blueprint(rankings_blp)
    app.register_blueprint(health_bp)
    app.register_blueprint(docs_bp)
    app.register_blueprint(ops_bp)
    app.register_blueprint(webhooks_bp)
    register_request_metrics(app)
    if app.config["BENCH_ROUTES"]:
        from crew7.health.views import bench_bp

        app.register_blueprint(bench_bp)


def register_hooks(app):
    """Session events (run aggregates, then cache invalidation), the change log's relay
    and engine setup."""
    from flask_sqlalchemy.session import Session

    from crew7 import invalidation
    from crew7.database import configure_engines
    from crew7.extensions import db
    from crew7.services import aggregates, changelog

    configure_engines(app, db)
    aggregates.register(Session)
    invalidation.register(Session)
    changelog.init_app(app)


def register_commands(app):
    from crew7.cli import register_cli

    register_cli(app)


def register_fast_path(app):
    """Cached metadata documents answered before Flask (inside ProxyFix, like the app)."""
    from crew7.metadata.fast_path import install

    install(app)


def register_proxy_fix(app):
    if app.config["BEHIND_PROXY"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = app.config["PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

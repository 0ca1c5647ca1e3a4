"""Cached metadata documents answered before Flask, the way whitenoise serves static files.

A hit is most of this service's traffic, and Flask's own per-request work (request and
app contexts, routing, the response object, hooks) costs more than the hit itself. A
plain ``GET /metadata/crew/<id>`` (or ``/agent/<id>``, ``/crew/<id>/agents``) without a
query string whose document is cached is answered here from the same read script, with
the same bytes and headers as the view's, the same cache counters, view count and early
refresh, and the same request metrics the app's hooks record. Anything else goes to Flask
untouched: other methods and paths, query strings, the front's early-refresh header,
malformed ids, misses, negative entries, a disabled cache, an untrusted Redis, an open
breaker, pending invalidations, a Redis error.
"""

import time

from crew7.extensions import db
from crew7.metadata.views import REFRESH_HEADER, document_headers, etag_of, not_modified
from crew7.services import metadata as service
from crew7.services import metrics
from crew7.services.cache import AGENT, CREW, CREW_AGENTS, get_cache_service

_CREW = "/metadata/crew/"
_AGENT = "/metadata/agent/"
_AGENTS = "/agents"
_REFRESH = "HTTP_" + REFRESH_HEADER.upper().replace("-", "_")


class MetadataFastPath:
    """WSGI middleware in front of ``app``'s Flask WSGI callable (``flask_app``)."""

    def __init__(self, app, flask_app):
        self.app = app
        self.flask_app = flask_app
        self.cache = get_cache_service(app)
        self.cache_control = app.extensions["crew7.cache_control"]
        # Rules as Flask names them in the request metrics.
        self.rules = {
            CREW: "/metadata/crew/<token_id:token_id>",
            AGENT: "/metadata/agent/<token_id:token_id>",
            CREW_AGENTS: "/metadata/crew/<token_id:token_id>/agents",
        }

    def __call__(self, environ, start_response):
        if (
            environ["REQUEST_METHOD"] != "GET"
            or environ.get("QUERY_STRING")
            or _REFRESH in environ  # the front asks for an early refresh: the views do it
        ):
            return self.flask_app(environ, start_response)
        started = time.perf_counter()
        try:
            answer = self._hit(environ.get("PATH_INFO", ""))
        except Exception:  # whatever failed before a hit was counted: Flask decides
            answer = None
        if answer is None:
            return self.flask_app(environ, start_response)
        family, body, deferred = answer
        etag = etag_of(body)
        headers = document_headers(self.cache_control, etag)
        if not_modified(environ.get("HTTP_IF_NONE_MATCH"), etag):
            status, body = 304, b""  # werkzeug drops a 304's entity headers
            start_response("304 NOT MODIFIED", headers)
        else:
            status = 200
            headers.append(("Content-Type", "application/json"))
            headers.append(("Content-Length", str(len(body))))
            start_response("200 OK", headers)
        metrics.observe_request(self.rules[family], "GET", status, started)
        if deferred:
            return _AfterResponse([body] if body else [], self.app, deferred)
        return [body] if body else []

    def _hit(self, path):
        """``(family, bytes, deferred work)`` for a cached public document, else None."""
        if path.startswith(_CREW):
            raw = path[len(_CREW) :]
            family = CREW
            if raw.endswith(_AGENTS):
                raw, family = raw[: -len(_AGENTS)], CREW_AGENTS
        elif path.startswith(_AGENT):
            raw, family = path[len(_AGENT) :], AGENT
        else:
            return None
        token_id = service.parse_token_id(raw)
        if token_id is None:
            return None
        cache = self.cache
        deferred = []
        if family == CREW:
            body = cache.try_hit(
                CREW,
                cache.crew_key(token_id),
                lambda: service.render_crew(token_id),
                count_view=str(token_id),
                defer=deferred.append,
            )
        elif family == AGENT:
            body = cache.try_hit(
                AGENT,
                cache.agent_key(token_id),
                lambda: service.render_agent(token_id),
                defer=deferred.append,
            )
        else:
            body = cache.try_hit(
                CREW_AGENTS,
                cache.crew_agents_key(token_id),
                lambda: service.render_crew_agents(token_id),
                defer=deferred.append,
            )
        return None if body is None else (family, body, deferred)


class _AfterResponse:
    """The response body, running ``deferred`` once the server has sent it (its close()),
    in an app context whose database session is ended afterwards, as
    ``crew7.run_after_response`` does for a Flask response."""

    def __init__(self, chunks, app, deferred):
        self.chunks = chunks
        self.app = app
        self.deferred = deferred

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        with self.app.app_context():
            try:
                for fn in self.deferred:
                    fn()
            finally:
                db.session.remove()


def install(app):
    """Put the fast path in front of the app's WSGI callable (METADATA_FAST_PATH)."""
    if app.config["METADATA_FAST_PATH"]:
        app.wsgi_app = MetadataFastPath(app, app.wsgi_app)

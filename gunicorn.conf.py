"""Gunicorn settings for crew7 (``gunicorn -c gunicorn.conf.py wsgi:app``).

Every value can be tuned from the environment, so the same file serves the
container image, docker-compose and a bare host.
"""

import os


def _env_int(name, default, minimum=1):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RuntimeError(f"{name}={raw!r}: expected an integer") from None
    return max(value, minimum)


def _cpu_count():
    # The CPUs this process may actually run on (a container's cpuset), not the host's.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# $GUNICORN_BIND wins; else $PORT (the platform convention); else all interfaces on 8000.
bind = os.environ.get("GUNICORN_BIND") or f"0.0.0.0:{os.environ.get('PORT') or 8000}"

# Sync workers: one request per process, simple and safe for the SQLAlchemy/Redis clients.
# The classic 2 * cores + 1, capped so a big host doesn't open dozens of DB connection pools.
workers = _env_int("WEB_CONCURRENCY", min(2 * _cpu_count() + 1, 12))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
# More than one thread turns a sync worker into gthread (gunicorn does this itself).
threads = _env_int("GUNICORN_THREADS", 1)

# Kill a worker stuck for 30 s (nginx's proxy_read_timeout is longer, so this fires first);
# on SIGTERM let in-flight requests finish within graceful_timeout, which must stay below the
# container's stop grace period (30 s in docker-compose.yml; `docker stop` defaults to 10 s).
timeout = 30
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 25)
# Idle keep-alive with nginx; only gthread/async workers keep connections open.
keepalive = 5
# The request line must hold the metadata batch at its documented maximum: 100 ids of
# 64 hex digits with their commas (about 6,600 bytes; 6,800 with the commas percent-encoded).
# The default, 4,094, stops at 62. 8,190 is gunicorn's largest, and nginx's default 8 KiB
# header buffers pass it.
limit_request_line = 8190

# Heartbeat files on tmpfs: a container's overlay /tmp can stall workers into timeouts.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Logs to stdout/stderr for the container runtime to collect.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# Client IP as nginx forwarded it, then the peer address, and the duration in ms.
access_log_format = '%({x-forwarded-for}i)s %(h)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'

# Peers whose X-Forwarded-Proto etc. gunicorn trusts; set to the proxy's address (or "*"
# when only the proxy can reach the port).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# Load the app in each worker after fork: no database or Redis connection is
# inherited across processes.
preload_app = False

# No gunicornc control socket (gunicorn >= 25.1; older versions ignore the name): its default
# path under $HOME is not writable for the image's user and is shared by every instance.
control_socket_disable = True

# Prometheus multiprocess mode: each worker writes its counters to files in one directory
# that /metrics and /cache/stats merge. A fresh directory per master, set before any worker
# imports the app (prometheus_client reads the variable at import).
_own_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    _own_metrics_dir = tempfile.mkdtemp(prefix="crew7-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir


def on_starting(server):
    # Counters from an earlier master with the same directory must not be counted again.
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))


def post_worker_init(worker):
    # Serving processes warm the cache at start-up: the first worker of a deployment to
    # claim it does (crew7.services.warming); the `flask` commands never do.
    app = worker.wsgi
    if "crew7.cache" in getattr(app, "extensions", {}):  # crew7's app, not another WSGI app
        from crew7.services.changelog import start_relay
        from crew7.services.warming import start_warming

        # Every serving process relays the cache change log (crew7.services.changelog);
        # its first poll (a replay, when Redis lost the watermark) lands before warming.
        start_relay(app)
        start_warming(app)

        from crew7.services.webhooks.delivery import start_delivery

        # Every serving process delivers webhooks; a lease per subscription in the
        # database keeps one process at a time on each.
        start_delivery(app)


def child_exit(server, worker):
    from crew7.services.metrics import worker_exit

    worker_exit(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        import shutil

        shutil.rmtree(_own_metrics_dir, ignore_errors=True)

"""Test support shared by tests/, bench/ and the Makefile.

- ``processes``: free ports, ``wait_until``, ``start_listening``, ``stop_process``, /proc
  readers (standard library only)
- ``ci``: a missing tool skips on a laptop and fails when ``CI=true``
- ``servers``: redis-server (standalone, Sentinel, Cluster) and PostgreSQL runners, and
  ``running()`` for the fixtures that start one
- ``gunicorn`` / ``nginx``: the app under gunicorn (its environment: ``served_env``), nginx
  with the front's config (``flask nginx-config``); ``running_front`` for bench
- ``raw_http``: one request on a new connection (status, headers, body bytes)
- ``app``: ``make_app``, ``reset_schema``, ``make_user``, ``fresh_users``, ``db_scalar``
- ``helpers``: API seeding and Redis command counts; ``stale_checker``: stale-read check

Modules are imported by name (``from tests.support.servers import RedisServer``), so
importing one never imports pytest, Flask or the app unless it needs them.
"""

"""The change feed on a fresh SQLite app: create a crew with agents, rename it, record a
run, make it private; print GET /metadata/updates after each step.

    PYTHONPATH=$PWD .venv/bin/python scripts/feed-demo.py

Starts a redis-server of its own on 127.0.0.1 (tests/support), stopped on exit.
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.app import make_app, make_user, reset_schema  # noqa: E402
from tests.support.servers import RedisServer  # noqa: E402


def main():
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer.start()
        try:
            app = make_app(f"sqlite:///{tmp}/demo.sqlite3", redis.url)
            reset_schema(app)
            client = app.test_client()
            auth = make_user(app, "demo")["headers"]
            cursor = None

            def feed(step):
                nonlocal cursor
                url = "/metadata/updates" + (f"?after={cursor}" if cursor else "")
                page = client.get(url).get_json()
                print(f"# {step}\n$ GET {url}")
                print('{"events": [')
                for event in page["events"]:
                    print("  " + json.dumps(event, sort_keys=True))
                rest = {k: page[k] for k in ("next_cursor", "has_more")}
                print("], " + json.dumps(rest)[1:] + "\n")
                cursor = page["next_cursor"] or cursor

            crew = client.post("/crews", json={"name": "Research"}, headers=auth).get_json()
            for name in ("Ada", "Bob", "Cy"):
                client.post(
                    f"/crews/{crew['id']}/agents",
                    json={"name": name, "role": "analyst"},
                    headers=auth,
                )
            feed("a public crew and its three agents")
            client.patch(f"/crews/{crew['id']}", json={"name": "Research II"}, headers=auth)
            feed("renamed: the crew and every agent document (they show the crew's name)")
            client.post(f"/crews/{crew['id']}/runs", json={"status": "queued"}, headers=auth)
            feed("a run recorded: the crew's document (its run counts)")
            client.patch(f"/crews/{crew['id']}", json={"is_public": False}, headers=auth)
            feed("made private: the crew and its agents disappear")
            client.patch(f"/crews/{crew['id']}", json={"name": "Secret"}, headers=auth)
            feed("renamed while private: nothing shown")
        finally:
            redis.stop()


if __name__ == "__main__":
    main()

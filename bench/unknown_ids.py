"""What anonymous requests for unknown crew ids cost Redis.

Starts its own Redis on 127.0.0.1, builds the app on a temporary SQLite database with a
few demo crews, sends N requests for random unknown ids (half single, half in batches of
50) through the app, and prints Redis's used memory and the popularity set's size before,
right after, and once the negative entries have expired.

    .venv/bin/python bench/unknown_ids.py [N]
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.support.app import make_app, reset_schema  # noqa: E402
from tests.support.servers import RedisServer  # noqa: E402


def main(n: int = 5000) -> dict:
    from crew7.services.seed import seed_demo

    server = RedisServer.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            app = make_app(f"sqlite:///{tmp}/unknown.sqlite3", server.url, NEGATIVE_TTL=2)
            reset_schema(app)
            with app.app_context():
                seed_demo(3, 20, 1, 2, 5, 7)
            client = app.test_client()
            r = redis.Redis.from_url(server.url)

            def snapshot():
                return {
                    "used_memory": r.info("memory")["used_memory"],
                    "keys": r.dbsize(),
                    "popularity_members": r.zcard("stats:crew_views"),
                }

            before = snapshot()
            rng = random.Random(5)
            ids = [rng.randint(1000, 2**31 - 1) for _ in range(n)]
            half = n // 2
            for crew_id in ids[:half]:
                client.get(f"/metadata/crew/{crew_id}")
            for start in range(half, n, 50):
                client.get("/metadata/crews?ids=" + ",".join(map(str, ids[start : start + 50])))
            after = snapshot()
            time.sleep(2.5)
            r.randomkey()  # let expiry run
            for _ in range(20):
                if r.dbsize() <= before["keys"]:
                    break
                time.sleep(0.2)
            expired = snapshot()
            r.close()
    finally:
        server.close()
    result = {
        "requests": n,
        "before": before,
        "after": after,
        "after_negative_ttl": expired,
        "added_bytes": after["used_memory"] - before["used_memory"],
        "left_bytes": expired["used_memory"] - before["used_memory"],
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)

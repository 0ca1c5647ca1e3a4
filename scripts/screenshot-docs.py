#!/usr/bin/env python3
"""Renders docs/api-docs.png: the API docs page (/docs) as headless Chromium shows it.

Starts the app under gunicorn (gunicorn.conf.py) on a free 127.0.0.1 port, on an empty
SQLite file in a temporary folder (the page and /openapi.json read no data), takes the
screenshot and stops gunicorn by its pid. Needs chromium (make test installs it).

    PYTHONPATH=$PWD .venv/bin/python scripts/screenshot-docs.py [OUT.png]
"""

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.browser import screenshot  # noqa: E402
from tests.support.gunicorn import GunicornServer, served_env  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

WIDTH, HEIGHT = 1280, 2000


def main(out):
    with tempfile.TemporaryDirectory(prefix="crew7-docs-") as folder:
        # No Redis is needed: a closed port, and no relay polling the empty database.
        env = served_env(
            f"sqlite:///{folder}/crew7.sqlite3",
            f"redis://127.0.0.1:{free_port()}/0",
            CACHE_CHANGELOG_INTERVAL=0,
        )
        with GunicornServer(env, workers=1) as server:
            screenshot(server.url + "/docs", out, WIDTH, HEIGHT, budget_ms=10_000)
    print(f"wrote {out} ({WIDTH}x{HEIGHT})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "api-docs.png")

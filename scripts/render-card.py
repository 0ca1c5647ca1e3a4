#!/usr/bin/env python3
"""Render a demo crew's token image to a PNG (docs/crew-card.png by default).

The card is what GET /images/crew/<id>.svg serves for that crew: its document is built by
crew7.services.metadata from a demo crew (no database needed), drawn by
crew7.services.cards, and rendered to PNG by headless Chromium at 600 x 600.

    .venv/bin/python scripts/render-card.py [--id 21] [--out docs/crew-card.png]
"""

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flask import Flask  # noqa: E402

from crew7.services.cards import crew_card  # noqa: E402
from crew7.services.metadata import build_crew_document  # noqa: E402


def demo_document(crew_id):
    """The document of a demo crew: 3 agents, 128 runs, 7 of 8 succeeded."""
    crew = SimpleNamespace(
        id=crew_id,
        name="Deep Research Crew",
        description="Finds and summarises papers.",
        process="sequential",
        created_at=datetime.datetime(2026, 1, 5, 9, 30),
    )
    stats = SimpleNamespace(
        total_runs=128,
        success_rate=87.5,
        average_duration=42.0,
        last_run_at=datetime.datetime(2026, 11, 30, 10, 53),
    )
    app = Flask("crew7-render-card")
    app.config.update(BASE_URL="http://127.0.0.1:8000", CDN_URL="")
    with app.app_context():
        return build_crew_document(crew, stats, agent_count=3)


def render(svg, out):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("render-card: chromium is needed (make test installs it)")
    with tempfile.TemporaryDirectory(prefix="crew7-card-") as folder:
        source = Path(folder) / "card.svg"
        source.write_text(svg)
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--default-background-color=00000000",
                f"--user-data-dir={folder}/profile",
                f"--screenshot={out}",
                "--window-size=600,600",
                "--force-device-scale-factor=1",
                source.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--id", type=int, default=21, help="the crew id (it seeds the art)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "crew-card.png")
    args = parser.parse_args()
    render(crew_card(demo_document(args.id), args.id), args.out.resolve())
    print(args.out)


if __name__ == "__main__":
    main()

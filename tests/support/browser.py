"""Headless Chromium (Debian's ``chromium``, installed by ``make test``) for tests that
must see a page or an image the way a browser does: a screenshot, or the DOM after the
page's scripts ran.

Each call is one short-lived browser process with its own temporary profile, bounded by a
timeout; nothing outlives the call."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.ci import missing

TIMEOUT = 60  # seconds one browser run may take


def chromium_binary() -> str:
    """Path of chromium; skips the test without it (fails it when CI=true)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        missing("chromium")
    return found


def _run(url: str, *flags: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="crew7-chromium-") as profile:
        return subprocess.run(
            [
                chromium_binary(),
                "--headless",
                "--no-sandbox",  # tests run as root in CI containers
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                *flags,
                url,
            ],
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )


def dump_dom(url: str, budget_ms: int = 5000) -> str:
    """The page's DOM as HTML after its scripts ran for ``budget_ms`` of virtual time."""
    done = _run(url, "--dump-dom", f"--virtual-time-budget={budget_ms}")
    if done.returncode != 0:
        raise AssertionError(f"chromium failed on {url}: {done.stderr.decode()[-2000:]}")
    return done.stdout.decode()


def screenshot(url: str, path: Path, width: int, height: int, budget_ms: int = 2000) -> Path:
    """A PNG of the page at ``width`` x ``height`` CSS pixels, written to ``path``."""
    path = Path(path)
    done = _run(
        url,
        f"--screenshot={path}",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
        f"--virtual-time-budget={budget_ms}",
    )
    if done.returncode != 0 or not path.exists():
        raise AssertionError(f"chromium failed on {url}: {done.stderr.decode()[-2000:]}")
    return path


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = Path(path).read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise AssertionError(f"{path} is not a PNG")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def distinct_colours(path: Path, limit: int = 64) -> int:
    """How many distinct RGB colours the PNG has (up to ``limit``): 1 means blank."""
    from PIL import Image  # noqa: PLC0415 (only the picture tests need Pillow)

    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24) or []
    return min(len(colours), limit)

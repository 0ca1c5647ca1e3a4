"""The one rule for a missing tool: skip on a laptop, fail when ``CI=true``."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def missing(what: str, hint: str = "make test installs it") -> None:
    """Skip the test because ``what`` is not installed; under CI=true fail it instead."""
    message = f"{what} is not installed ({hint})"
    if in_ci():
        pytest.fail(message + "; required when CI=true", pytrace=False)
    pytest.skip(message)


def require(found, what: str, hint: str = "make test installs it"):
    """``found`` when it is truthy, else :func:`missing`."""
    if not found:
        missing(what, hint)
    return found

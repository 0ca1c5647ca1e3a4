"""The unit layer: pure logic, no Redis, no database server, no subprocess.

conftest.py one level up marks every test here ``unit`` and refuses a unit test that asks
for a server fixture; the fixture below checks that none starts a process either.
"""

import logging
import os
import time

import pytest
from flask import Flask

from tests.support.processes import children


@pytest.fixture(autouse=True)
def starts_no_process():
    before = set(children(os.getpid()))
    yield
    started = set(children(os.getpid())) - before
    assert not started, f"a unit test started processes {sorted(started)}"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    """Replaces time.monotonic for the test: the breaker and the window read it."""
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)
    return fake


@pytest.fixture
def config_app():
    """A bare Flask app with the URL settings the document builders read."""
    app = Flask("crew7-unit")
    app.config.update(BASE_URL="https://app.example", CDN_URL="https://cdn.example")
    with app.app_context():
        yield app


@pytest.fixture
def crew7_logs(caplog, monkeypatch):
    """caplog at WARNING, with crew7's loggers enabled: an in-process ``flask db upgrade``
    earlier in the run (alembic's fileConfig in migrations/env.py) disables every logger
    that existed then."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("crew7") and isinstance(logger, logging.Logger):
            monkeypatch.setattr(logger, "disabled", False)
    caplog.set_level(logging.WARNING)
    return caplog

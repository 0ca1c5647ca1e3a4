"""Configuration order, environment settings, validation, migrations."""

import subprocess
import sys
import threading

import pytest

from crew7 import ConfigError, create_app

BASE = {"TESTING": True, "DATABASE_URL": "sqlite://", "CACHE_WARM_ON_START": False}


def test_defaults(monkeypatch, tmp_path):
    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CREW7_INSTANCE_PATH", str(tmp_path))
    app = create_app({"TESTING": True})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/crew7.sqlite3"
    assert app.config["METADATA_TTL"] == 300 and app.config["POPULAR_CREWS_TTL"] == 600
    assert app.config["STATS_TTL"] == 180 and app.config["CACHE_WARM_COUNT"] == 10
    assert app.config["BASE_URL"] == "https://app.crew7.ai"
    assert app.config["CDN_URL"] == ""  # images served by this service
    assert app.config["CACHE_NAMESPACE"] == ""


def test_precedence_instance_env_test_dict(monkeypatch, tmp_path):
    (tmp_path / "config.py").write_text("METADATA_TTL = 100\nSTATS_TTL = 100\nNEGATIVE_TTL = 7\n")
    monkeypatch.setenv("CREW7_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("CREW7_METADATA_TTL", "200")
    monkeypatch.setenv("CREW7_STATS_TTL", "200")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db.example:5432/crew7")
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6380/2")
    app = create_app({"TESTING": True, "STATS_TTL": 300, "CACHE_WARM_ON_START": False})
    assert app.config["NEGATIVE_TTL"] == 7  # instance file
    assert app.config["METADATA_TTL"] == 200  # environment over instance file
    assert app.config["STATS_TTL"] == 300  # test dict over environment
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u:p@db.example:5432/crew7"
    assert app.config["CACHE_REDIS_URL"] == "redis://cache.example:6380/2"


@pytest.mark.parametrize(
    "setting, value",
    [
        ("METADATA_TTL", 0),
        ("METADATA_TTL", "five"),
        ("BREAKER_COOLDOWN", -1),
        ("BASE_URL", "not a url"),
        ("REDIS_URL", "http://localhost"),
        ("DATABASE_URL", "nowhere"),
        ("BEHIND_PROXY", "maybe"),
        ("CACHE_NAMESPACE", "has space"),
    ],
)
def test_invalid_setting_stops_startup_naming_it(setting, value):
    with pytest.raises(ConfigError, match=setting):
        create_app({**BASE, setting: value})


def test_invalid_env_setting_exits_with_message(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "CREW7_METADATA_TTL": "-5",
        "DATABASE_URL": "sqlite://",
        "CREW7_INSTANCE_PATH": str(tmp_path),
    }
    r = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(__import__("pathlib").Path(__file__).parents[1]),
    )
    assert r.returncode != 0 and "METADATA_TTL" in r.stderr


def test_proxy_fix_when_behind_proxy():
    app = create_app({**BASE, "BEHIND_PROXY": True})

    @app.get("/ip")
    def ip():
        from flask import request

        return {"ip": request.remote_addr, "scheme": request.scheme}

    r = app.test_client().get(
        "/ip", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    )
    assert r.get_json() == {"ip": "203.0.113.9", "scheme": "https"}
    plain = create_app(BASE)
    plain.add_url_rule("/ip", "ip", ip)
    r = plain.test_client().get("/ip", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.get_json()["ip"] == "127.0.0.1"


def test_migrations_create_the_schema_and_match_the_models(database_url, redis_server, db_kind):
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(database_url.replace("postgresql+psycopg", "postgresql+psycopg"))
    if db_kind == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server.url,
        "CREW7_CACHE_WARM_ON_START": "false",
        "FLASK_APP": "wsgi",
    }
    root = str(__import__("pathlib").Path(__file__).parents[1])
    flask = [sys.executable, "-m", "flask"]
    r = subprocess.run([*flask, "db", "upgrade"], capture_output=True, text=True, env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    tables = set(inspect(engine).get_table_names())
    assert {"users", "crews", "agents", "runs", "crew_stats", "alembic_version"} <= tables
    indexes = {i["name"] for i in inspect(engine).get_indexes("runs")}
    assert {"ix_runs_crew_status", "ix_runs_crew_id_id"} <= indexes
    # The models and the migrations agree (autogenerate finds nothing to add).
    r = subprocess.run([*flask, "db", "check"], capture_output=True, text=True, env=env, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    engine.dispose()


def test_concurrent_run_writers_lose_no_increment(app_factory, db_kind):
    """Aggregates are relative updates: parallel writers on one crew never lose a count."""
    app = app_factory()
    from crew7.extensions import db
    from crew7.models import Crew, CrewStats, Run
    from crew7.services.aggregates import aggregate_from_runs
    from crew7.services.users import create_user

    with app.app_context():
        user, _ = create_user("writer")
        crew = Crew(owner_id=user.id, name="busy")
        db.session.add(crew)
        db.session.commit()
        cid = crew.id
    errors = []

    def writer(n):
        try:
            with app.app_context():
                for i in range(15):
                    run = Run(crew_id=cid, status="running", tokens_used=1)
                    db.session.add(run)
                    db.session.commit()
                    run.status = "succeeded" if (n + i) % 2 else "failed"
                    run.duration = 1.0
                    db.session.commit()
                db.session.remove()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with app.app_context():
        stats = db.session.get(CrewStats, cid)
        truth = aggregate_from_runs(db.session.connection(), [cid])[cid]
        assert stats.total_runs == truth["total_runs"] == 60
        assert stats.succeeded_runs + stats.failed_runs == 60 and stats.running_runs == 0
        assert stats.succeeded_runs == truth["succeeded_runs"]
        assert stats.duration_count == 60 and stats.tokens_sum == 60


def test_environment_database_url_beats_instance_file(monkeypatch, tmp_path):
    (tmp_path / "config.py").write_text("DATABASE_URL = 'sqlite:////from/instance.db'\n")
    monkeypatch.setenv("CREW7_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "sqlite:////from/env.db")
    app = create_app({"TESTING": True, "CACHE_WARM_ON_START": False})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "sqlite:////from/env.db"


def test_cli_commands_do_not_warm(monkeypatch, tmp_path, redis_server, redis_client):
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "REDIS_URL": redis_server.url,
        "FLASK_APP": "wsgi",
        "CREW7_INSTANCE_PATH": str(tmp_path),
    }
    root = str(__import__("pathlib").Path(__file__).parents[1])
    r = subprocess.run(
        [sys.executable, "-m", "flask", "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    assert "Cache warming" not in r.stderr + r.stdout
    assert not list(redis_client.scan_iter("warming:*"))

"""Per-engine database setup."""

from sqlalchemy import event


def _sqlite_pragmas(dbapi_connection, connection_record):
    # Foreign keys (cascading deletes), concurrent readers while one writes, and a wait
    # instead of "database is locked" between gunicorn workers.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def configure_engines(app, db):
    """Set up the app's engines as their first connection opens (SQLite: pragmas)."""
    with app.app_context():
        for engine in db.engines.values():
            if engine.dialect.name == "sqlite" and not event.contains(
                engine, "connect", _sqlite_pragmas
            ):
                event.listen(engine, "connect", _sqlite_pragmas)

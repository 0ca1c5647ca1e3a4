"""Rendering database triggers for SQLite and PostgreSQL from plain data.

A trigger set is ``sqlite``: ``{name: (event, when or None, [body statements])}``,
``pg_functions``: ``{name: plpgsql body}`` and ``pg_triggers``:
``{name: (table, events, function)}``. ``crew7.changelog_triggers`` and
``crew7.aggregate_triggers`` are two such sets.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class TriggerSet:
    what: str
    sqlite: dict
    pg_functions: dict
    pg_triggers: dict

    def create_statements(self, dialect):
        """The statements that (re)create the triggers on ``dialect``."""
        if dialect == "sqlite":
            out = []
            for name, (event, when, body) in self.sqlite.items():
                out.append(f"DROP TRIGGER IF EXISTS {name}")
                when_sql = f" WHEN {when}" if when else ""
                out.append(
                    f"CREATE TRIGGER {name} {event} FOR EACH ROW{when_sql}\nBEGIN\n  "
                    + "\n  ".join(body)
                    + "\nEND"
                )
            return out
        if dialect != "postgresql":
            raise ValueError(f"no {self.what} triggers for the {dialect} dialect")
        out = [
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $${body}\n$$"
            for name, body in self.pg_functions.items()
        ]
        for name, (table, events, function) in self.pg_triggers.items():
            out.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            out.append(
                f"CREATE TRIGGER {name} {events} ON {table}"
                f" FOR EACH ROW EXECUTE FUNCTION {function}()"
            )
        return out

    def drop_statements(self, dialect):
        """The statements that remove the triggers (and PostgreSQL's functions)."""
        if dialect == "sqlite":
            return [f"DROP TRIGGER IF EXISTS {name}" for name in self.sqlite]
        out = [f"DROP TRIGGER IF EXISTS {n} ON {t}" for n, (t, _, _) in self.pg_triggers.items()]
        return out + [f"DROP FUNCTION IF EXISTS {name}()" for name in self.pg_functions]

    def install(self, connection):
        """Create the triggers on ``connection`` (a SQLAlchemy connection)."""
        for statement in self.create_statements(connection.dialect.name):
            connection.exec_driver_sql(statement)

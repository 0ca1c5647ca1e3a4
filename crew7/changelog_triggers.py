"""The triggers that write ``cache_changes``: what a committed change affects, recorded
by the database itself in the writing transaction, whoever writes (the app, psql,
sqlite3, a Core ``update()``, a data migration).

They mirror ``crew7.invalidation.RULES``, one entry per document group a changed row
affects (the relay, ``crew7.services.changelog``, expands entries into keys):

    kind           ref_id   written when                          the relay invalidates
    crew           crew     a crew is inserted, deleted, or its   its document, its agents
                            name/description/process/is_public    list and each of its
                            changes                               agents' documents
    stats          NULL     a crew's name or is_public changes,   the stats documents
                            or it is deleted
    views          crew     a crew is deleted                     its popularity entry
    agent          agent    an agent is inserted, deleted or one  its document
                            of its fields changes
    crew_agents    crew     same (the agent's crew; old and new   the crew's agents list
                            crew if it moved)
    crew_document  crew     an agent is inserted or deleted (the  the crew's document
                            agent count); a run is inserted,
                            deleted or its status/duration/
                            tokens/dates change (the aggregates)

Each crew's and agent's token image goes with its document (the relay's expansion,
``crew7.services.changelog_entries``): the triggers name documents, not keys.

Entries carry the ids the relay needs rather than the changed row alone: a deleted
agent's crew could not be looked up once it is gone.

The change feed (``crew7.services.feed``) reads three more columns, filled at write time:
``visibility`` of the document an entry names (``crew``, ``agent`` and ``crew_document``
entries: 'public', 'private', or 'gone' when a public document stops being public: a
public crew turned private or deleted, an agent moved out of a public crew), ``agents``
(``crew`` entries: the crew's agent ids then, comma-separated, so a deleted crew's agents
are still known), and ``xid`` (PostgreSQL: the writing transaction's id, by which the
feed serves entries in commit order). A crew's deletion is recorded before the row goes
(its agents are still there), its stats and views entries after.

A crew's deletion cascades to its agents and runs: agents still write their own entry
(their documents must go), but neither writes a crew-level entry for a crew that is gone
(the crew's own entry covers it), so deleting a long history writes a few rows, not one
per run.

Used by ``crew7.models`` (``create_all``) and by migration 0003; a later change here
needs a new migration that calls ``create_statements`` again (each statement replaces
what it defines).
"""

from crew7.triggers import TriggerSet

CREW_FIELDS = ("name", "description", "process", "is_public")
AGENT_FIELDS = ("name", "role", "goal", "backstory", "llm", "tools", "crew_id")
RUN_FIELDS = ("status", "duration", "tokens_used", "started_at", "created_at", "crew_id")

# -- SQLite ---------------------------------------------------------------------------

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def _sqlite_changed(fields):
    return " OR ".join(f"OLD.{f} IS NOT NEW.{f}" for f in fields)


def _sqlite_log(kind, ref, where="", visibility="NULL", agents="NULL"):
    return (
        f"INSERT INTO cache_changes (kind, ref_id, created_at, visibility, agents)"
        f" SELECT '{kind}', {ref}, {_SQLITE_NOW}, {visibility}, {agents}{where};"
    )


def _sqlite_crew_visibility(ref):
    """'public' or 'private' for crew ``ref`` ('private' once it is gone)."""
    return (
        f"COALESCE((SELECT CASE WHEN is_public THEN 'public' ELSE 'private' END"
        f" FROM crews WHERE id = {ref}), 'private')"
    )


def _sqlite_agents(ref):
    return (
        f"(SELECT group_concat(id) FROM (SELECT id FROM agents WHERE crew_id = {ref} ORDER BY id))"
    )


# An agent's document: public in its (new) crew, gone when it left a public crew.
_SQLITE_AGENT_MOVE = (
    f"CASE WHEN {_sqlite_crew_visibility('NEW.crew_id')} = 'public' THEN 'public'"
    f" WHEN {_sqlite_crew_visibility('OLD.crew_id')} = 'public' THEN 'gone' ELSE 'private' END"
)


def _crew_exists(ref):
    return f" WHERE EXISTS (SELECT 1 FROM crews WHERE id = {ref})"


_MOVED = " WHERE OLD.crew_id IS NOT NEW.crew_id"
_SQLITE_RUN_NEW = _sqlite_crew_visibility("NEW.crew_id")

_SQLITE_TRIGGERS = {
    "crew7_crews_insert": (
        "AFTER INSERT ON crews",
        "",
        [
            _sqlite_log(
                "crew",
                "NEW.id",
                visibility="CASE WHEN NEW.is_public THEN 'public' ELSE 'private' END",
                agents=_sqlite_agents("NEW.id"),
            )
        ],
    ),
    "crew7_crews_update": (
        "AFTER UPDATE ON crews",
        _sqlite_changed(CREW_FIELDS),
        [
            _sqlite_log(
                "crew",
                "NEW.id",
                visibility="CASE WHEN NEW.is_public THEN 'public'"
                " WHEN OLD.is_public THEN 'gone' ELSE 'private' END",
                agents=_sqlite_agents("NEW.id"),
            )
        ],
    ),
    "crew7_crews_update_stats": (
        "AFTER UPDATE ON crews",
        _sqlite_changed(("name", "is_public")),
        [_sqlite_log("stats", "NULL")],
    ),
    "crew7_crews_remove": (
        "BEFORE DELETE ON crews",
        "",
        [
            _sqlite_log(
                "crew",
                "OLD.id",
                visibility="CASE WHEN OLD.is_public THEN 'gone' ELSE 'private' END",
                agents=_sqlite_agents("OLD.id"),
            )
        ],
    ),
    "crew7_crews_delete": (
        "AFTER DELETE ON crews",
        "",
        [
            _sqlite_log("stats", "NULL"),
            _sqlite_log("views", "OLD.id"),
        ],
    ),
    "crew7_agents_insert": (
        "AFTER INSERT ON agents",
        "",
        [
            _sqlite_log("agent", "NEW.id", visibility=_sqlite_crew_visibility("NEW.crew_id")),
            _sqlite_log("crew_agents", "NEW.crew_id"),
            _sqlite_log(
                "crew_document", "NEW.crew_id", visibility=_sqlite_crew_visibility("NEW.crew_id")
            ),
        ],
    ),
    "crew7_agents_update": (
        "AFTER UPDATE ON agents",
        _sqlite_changed(AGENT_FIELDS),
        [
            _sqlite_log("agent", "NEW.id", visibility=_SQLITE_AGENT_MOVE),
            _sqlite_log("crew_agents", "NEW.crew_id"),
            _sqlite_log("crew_agents", "OLD.crew_id", _MOVED),
            _sqlite_log(
                "crew_document",
                "OLD.crew_id",
                _MOVED,
                visibility=_sqlite_crew_visibility("OLD.crew_id"),
            ),
            _sqlite_log(
                "crew_document",
                "NEW.crew_id",
                _MOVED,
                visibility=_sqlite_crew_visibility("NEW.crew_id"),
            ),
        ],
    ),
    "crew7_agents_delete": (
        "AFTER DELETE ON agents",
        "",
        [
            _sqlite_log("agent", "OLD.id", visibility=_sqlite_crew_visibility("OLD.crew_id")),
            _sqlite_log("crew_agents", "OLD.crew_id", _crew_exists("OLD.crew_id")),
            _sqlite_log(
                "crew_document",
                "OLD.crew_id",
                _crew_exists("OLD.crew_id"),
                visibility=_sqlite_crew_visibility("OLD.crew_id"),
            ),
        ],
    ),
    "crew7_runs_insert": (
        "AFTER INSERT ON runs",
        "",
        [_sqlite_log("crew_document", "NEW.crew_id", visibility=_SQLITE_RUN_NEW)],
    ),
    "crew7_runs_update": (
        "AFTER UPDATE ON runs",
        _sqlite_changed(RUN_FIELDS),
        [
            _sqlite_log("crew_document", "NEW.crew_id", visibility=_SQLITE_RUN_NEW),
            _sqlite_log(
                "crew_document",
                "OLD.crew_id",
                _MOVED,
                visibility=_sqlite_crew_visibility("OLD.crew_id"),
            ),
        ],
    ),
    "crew7_runs_delete": (
        "AFTER DELETE ON runs",
        "",
        [
            _sqlite_log(
                "crew_document",
                "OLD.crew_id",
                _crew_exists("OLD.crew_id"),
                visibility=_sqlite_crew_visibility("OLD.crew_id"),
            )
        ],
    ),
}


# -- PostgreSQL -----------------------------------------------------------------------

_PG_NOW = "(now() AT TIME ZONE 'utc')"


_PG_XID = "pg_current_xact_id()::text::bigint"


def _pg_log(kind, ref, visibility="NULL", agents="NULL"):
    return (
        f"INSERT INTO cache_changes (kind, ref_id, created_at, visibility, agents, xid)"
        f" VALUES ('{kind}', {ref}, {_PG_NOW}, {visibility}, {agents}, {_PG_XID});"
    )


def _pg_crew_visibility(ref):
    """'public' or 'private' for crew ``ref`` ('private' once it is gone)."""
    return (
        f"COALESCE((SELECT CASE WHEN is_public THEN 'public' ELSE 'private' END"
        f" FROM crews WHERE id = {ref}), 'private')"
    )


def _pg_agents(ref):
    return f"(SELECT string_agg(id::text, ',' ORDER BY id) FROM agents WHERE crew_id = {ref})"


_PG_AGENT_MOVE = (
    f"CASE WHEN {_pg_crew_visibility('NEW.crew_id')} = 'public' THEN 'public'"
    f" WHEN {_pg_crew_visibility('OLD.crew_id')} = 'public' THEN 'gone' ELSE 'private' END"
)
_PG_NEW_CREW = _pg_crew_visibility("NEW.crew_id")
_PG_OLD_CREW = _pg_crew_visibility("OLD.crew_id")
_PG_CREW_INSERTED = "CASE WHEN NEW.is_public THEN 'public' ELSE 'private' END"
_PG_CREW_UPDATED = (
    "CASE WHEN NEW.is_public THEN 'public' WHEN OLD.is_public THEN 'gone' ELSE 'private' END"
)
_PG_CREW_DELETED = "CASE WHEN OLD.is_public THEN 'gone' ELSE 'private' END"


def _pg_changed(fields, casts=()):
    def col(row, f):
        return f"{row}.{f}::text" if f in casts else f"{row}.{f}"

    old = ", ".join(col("OLD", f) for f in fields)
    new = ", ".join(col("NEW", f) for f in fields)
    return f"ROW({old}) IS DISTINCT FROM ROW({new})"


_PG_FUNCTIONS = {
    "crew7_log_crew_change": f"""
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_pg_log("crew", "NEW.id", _PG_CREW_INSERTED, _pg_agents("NEW.id"))}
  ELSIF TG_OP = 'UPDATE' THEN
    IF {_pg_changed(CREW_FIELDS)} THEN
      {_pg_log("crew", "NEW.id", _PG_CREW_UPDATED, _pg_agents("NEW.id"))}
    END IF;
    IF {_pg_changed(("name", "is_public"))} THEN
      {_pg_log("stats", "NULL")}
    END IF;
  ELSE
    {_pg_log("stats", "NULL")}
    {_pg_log("views", "OLD.id")}
  END IF;
  RETURN NULL;
END""",
    # Before the row goes: its agents are still there (the cascade deletes them after).
    "crew7_log_crew_removal": f"""
BEGIN
  {_pg_log("crew", "OLD.id", _PG_CREW_DELETED, _pg_agents("OLD.id"))}
  RETURN OLD;
END""",
    # json has no equality operator: tools are compared as text.
    "crew7_log_agent_change": f"""
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_pg_log("agent", "NEW.id", _PG_NEW_CREW)}
    {_pg_log("crew_agents", "NEW.crew_id")}
    {_pg_log("crew_document", "NEW.crew_id", _PG_NEW_CREW)}
  ELSIF TG_OP = 'UPDATE' THEN
    IF {_pg_changed(AGENT_FIELDS, casts=("tools",))} THEN
      {_pg_log("agent", "NEW.id", _PG_AGENT_MOVE)}
      {_pg_log("crew_agents", "NEW.crew_id")}
      IF OLD.crew_id IS DISTINCT FROM NEW.crew_id THEN
        {_pg_log("crew_agents", "OLD.crew_id")}
        {_pg_log("crew_document", "OLD.crew_id", _PG_OLD_CREW)}
        {_pg_log("crew_document", "NEW.crew_id", _PG_NEW_CREW)}
      END IF;
    END IF;
  ELSE
    {_pg_log("agent", "OLD.id", _PG_OLD_CREW)}
    IF EXISTS (SELECT 1 FROM crews WHERE id = OLD.crew_id) THEN
      {_pg_log("crew_agents", "OLD.crew_id")}
      {_pg_log("crew_document", "OLD.crew_id", _PG_OLD_CREW)}
    END IF;
  END IF;
  RETURN NULL;
END""",
    "crew7_log_run_change": f"""
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_pg_log("crew_document", "NEW.crew_id", _PG_NEW_CREW)}
  ELSIF TG_OP = 'UPDATE' THEN
    IF {_pg_changed(RUN_FIELDS)} THEN
      {_pg_log("crew_document", "NEW.crew_id", _PG_NEW_CREW)}
      IF OLD.crew_id IS DISTINCT FROM NEW.crew_id THEN
        {_pg_log("crew_document", "OLD.crew_id", _PG_OLD_CREW)}
      END IF;
    END IF;
  ELSIF EXISTS (SELECT 1 FROM crews WHERE id = OLD.crew_id) THEN
    {_pg_log("crew_document", "OLD.crew_id", _PG_OLD_CREW)}
  END IF;
  RETURN NULL;
END""",
}

_PG_EVENTS = "AFTER INSERT OR UPDATE OR DELETE"
_PG_TRIGGERS = {
    "crew7_crews_changes": ("crews", _PG_EVENTS, "crew7_log_crew_change"),
    "crew7_crews_removal": ("crews", "BEFORE DELETE", "crew7_log_crew_removal"),
    "crew7_agents_changes": ("agents", _PG_EVENTS, "crew7_log_agent_change"),
    "crew7_runs_changes": ("runs", _PG_EVENTS, "crew7_log_run_change"),
}


TRIGGERS = TriggerSet("change-log", _SQLITE_TRIGGERS, _PG_FUNCTIONS, _PG_TRIGGERS)
create_statements = TRIGGERS.create_statements
drop_statements = TRIGGERS.drop_statements
install = TRIGGERS.install

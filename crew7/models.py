"""Domain models: users own crews; a crew has agents and a run history.

``CrewStats`` keeps each crew's run aggregates up to date as runs are recorded and
finished (database triggers: ``crew7.aggregate_triggers``), so building a crew's
document reads a constant number of rows however long its history is.
"""

import hashlib
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    event,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crew7.extensions import db

RUN_STATUSES = ("queued", "running", "succeeded", "failed")
FINISHED_STATUSES = ("succeeded", "failed")
PROCESSES = ("sequential", "hierarchical")


def utcnow():
    return datetime.now(UTC).replace(tzinfo=None)


def hash_token(token):
    """API tokens are stored only as their SHA-256: they are random, so no salt is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


# Ids are never reused (a crew's or an agent's id is its NFT token id): AUTOINCREMENT
# on SQLite, whose plain INTEGER PRIMARY KEY hands a deleted last row's id to the next.
_NO_ID_REUSE = {"sqlite_autoincrement": True}


class User(db.Model):
    __tablename__ = "users"
    __table_args__ = (_NO_ID_REUSE,)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    crews: Mapped[list["Crew"]] = relationship(back_populates="owner")


class Crew(db.Model):
    __tablename__ = "crews"
    __table_args__ = (
        CheckConstraint("process IN ('sequential', 'hierarchical')", name="ck_crews_process"),
        Index("ix_crews_public_id", "is_public", "id"),
        _NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(Text, default="")
    is_public: Mapped[bool] = mapped_column(Boolean, default=True)
    process: Mapped[str] = mapped_column(String(20), default="sequential")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    owner: Mapped[User] = relationship(back_populates="crews")
    agents: Mapped[list["Agent"]] = relationship(
        back_populates="crew",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Agent.id",
    )
    # No ``runs`` collection: a history can be long; the database cascades deletes.
    stats: Mapped["CrewStats"] = relationship(
        back_populates="crew",
        cascade="all, delete-orphan",
        passive_deletes=True,
        uselist=False,
    )


class Agent(db.Model):
    __tablename__ = "agents"
    __table_args__ = (_NO_ID_REUSE,)

    id: Mapped[int] = mapped_column(primary_key=True)
    crew_id: Mapped[int] = mapped_column(ForeignKey("crews.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    role: Mapped[str] = mapped_column(String(120))
    goal: Mapped[str] = mapped_column(Text, default="")
    backstory: Mapped[str] = mapped_column(Text, default="")
    llm: Mapped[str] = mapped_column(String(80), default="gpt-4o")
    tools: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    crew: Mapped[Crew] = relationship(back_populates="agents")


class Run(db.Model):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')", name="ck_runs_status"
        ),
        # Per-crew aggregation and per-crew pagination walk this index only.
        Index("ix_runs_crew_status", "crew_id", "status"),
        Index("ix_runs_crew_id_id", "crew_id", "id"),
        _NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    crew_id: Mapped[int] = mapped_column(ForeignKey("crews.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    duration: Mapped[float | None] = mapped_column(Float)  # seconds
    tokens_used: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    crew: Mapped[Crew] = relationship()


class CrewStats(db.Model):
    """Run aggregates of one crew, maintained by triggers in the transaction that changes
    its runs (``crew7.aggregate_triggers``); the row is created with the crew."""

    __tablename__ = "crew_stats"

    crew_id: Mapped[int] = mapped_column(
        ForeignKey("crews.id", ondelete="CASCADE"), primary_key=True
    )
    total_runs: Mapped[int] = mapped_column(Integer, default=0)
    queued_runs: Mapped[int] = mapped_column(Integer, default=0)
    running_runs: Mapped[int] = mapped_column(Integer, default=0)
    succeeded_runs: Mapped[int] = mapped_column(Integer, default=0)
    failed_runs: Mapped[int] = mapped_column(Integer, default=0)
    duration_sum: Mapped[float] = mapped_column(Float, default=0.0)
    duration_count: Mapped[int] = mapped_column(Integer, default=0)
    tokens_sum: Mapped[int] = mapped_column(BigInteger, default=0)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime)

    crew: Mapped[Crew] = relationship(back_populates="stats")

    @property
    def finished_runs(self):
        return self.succeeded_runs + self.failed_runs

    @property
    def success_rate(self):
        """Percentage of finished runs that succeeded, or None before any finished."""
        if not self.finished_runs:
            return None
        return round(100.0 * self.succeeded_runs / self.finished_runs, 1)

    @property
    def average_duration(self):
        if not self.duration_count:
            return None
        return round(self.duration_sum / self.duration_count, 2)


class CacheChange(db.Model):
    """One entry of the cache change log: a committed change affected the documents that
    ``kind`` and ``ref_id`` name. Written only by the database's triggers
    (``crew7.changelog_triggers``), read and pruned by the relay
    (``crew7.services.changelog``), read by the change feed (``crew7.services.feed``)
    too: ``visibility``, ``agents`` and ``xid`` are its (NULL in entries older than
    migration 0005)."""

    __tablename__ = "cache_changes"
    # Ids are the relay's watermark: never reused, even after every row was pruned.
    __table_args__ = (
        Index("ix_cache_changes_created_at", "created_at"),
        # The feed's order on PostgreSQL (commit order, see crew7.services.feed).
        Index("ix_cache_changes_xid_id", "xid", "id"),
        _NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    kind: Mapped[str] = mapped_column(Text)
    ref_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=text("CURRENT_TIMESTAMP"))
    visibility: Mapped[str | None] = mapped_column(Text)  # 'public', 'private' or 'gone'
    agents: Mapped[str | None] = mapped_column(Text)  # a crew entry's agent ids, "3,4,7"
    xid: Mapped[int | None] = mapped_column(BigInteger)  # PostgreSQL: the writer's xid8


@event.listens_for(db.metadata, "after_create")
def _install_change_log_triggers(target, connection, **kw):
    # create_all (tests, `flask init-db`) gets the triggers migrations 0003 and 0004 create.
    from crew7 import aggregate_triggers, changelog_triggers

    if {"crews", "agents", "runs", "cache_changes"} <= set(target.tables):
        changelog_triggers.install(connection)
    if {"crews", "runs", "crew_stats"} <= set(target.tables):
        aggregate_triggers.install(connection)

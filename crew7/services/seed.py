"""Deterministic demo data, inserted in bulk (fast enough to seed benchmarks)."""

import random
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select

from crew7.auth import new_token
from crew7.extensions import db
from crew7.models import Agent, Crew, Run, User, hash_token
from crew7.services.aggregates import recompute_crew_stats
from crew7.services.errors import ServiceError

EPOCH = datetime(2026, 1, 1)
ROLES = ("Researcher", "Writer", "Analyst", "Reviewer", "Planner", "Coder", "Critic")
LLMS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet", "llama-3-70b", "mistral-large")
TOOLS = ("web_search", "scraper", "python", "sql", "browser", "pdf_reader", "calculator")
TOPICS = ("market research", "content", "code review", "support", "finance", "travel", "data")
BATCH = 20_000


def seed_demo(users=3, crews=20, agents_per_crew=3, runs_per_crew=25, private_every=5, seed=7):
    """Insert demo users, crews (every ``private_every``-th private), agents and runs."""
    if db.session.scalar(select(func.count()).select_from(User).where(User.name.like("demo-%"))):
        raise ServiceError("demo data is already present")
    rng = random.Random(seed)
    conn = db.session.connection()
    user_ids = _insert_returning_ids(
        conn,
        User,
        [
            {
                "name": f"demo-{i + 1}",
                "token_hash": hash_token(new_token()),
                "is_admin": False,
                "created_at": EPOCH,
            }
            for i in range(max(users, 1))
        ],
    )
    crew_rows = []
    for n in range(crews):
        topic = TOPICS[n % len(TOPICS)]
        created = EPOCH + timedelta(hours=n)
        crew_rows.append(
            {
                "owner_id": user_ids[n % len(user_ids)],
                "name": f"{topic.title()} Crew {n + 1}",
                "description": f"A crew of AI agents for {topic}.",
                "is_public": not (private_every and (n + 1) % private_every == 0),
                "process": "hierarchical" if n % 3 == 0 else "sequential",
                "created_at": created,
                "updated_at": created,
            }
        )
    crew_ids = _insert_returning_ids(conn, Crew, crew_rows)
    agent_rows = []
    for n, crew_id in enumerate(crew_ids):
        topic = TOPICS[n % len(TOPICS)]
        created = EPOCH + timedelta(hours=n)
        for a in range(agents_per_crew):
            role = ROLES[(n + a) % len(ROLES)]
            agent_rows.append(
                {
                    "crew_id": crew_id,
                    "name": f"{role} {a + 1}",
                    "role": role,
                    "goal": f"Do the {role.lower()}'s part of {topic}.",
                    "backstory": f"A seasoned {role.lower()}.",
                    "llm": LLMS[(n * 7 + a) % len(LLMS)],
                    "tools": sorted(rng.sample(TOOLS, rng.randint(0, 3))),
                    "created_at": created,
                    "updated_at": created,
                }
            )
    insert_in_batches(conn, Agent, agent_rows)
    runs = insert_in_batches(conn, Run, _demo_runs(rng, crew_ids, runs_per_crew))
    recompute_crew_stats(conn, crew_ids)
    db.session.commit()
    return {"users": len(user_ids), "crews": crews, "agents": len(agent_rows), "runs": runs}


def _demo_runs(rng, crew_ids, runs_per_crew):
    """Each crew's runs: a success rate of its own, durations, and sometimes a last run
    still running."""
    for n, crew_id in enumerate(crew_ids):
        success_bias = 0.5 + 0.45 * rng.random()
        for r in range(runs_per_crew):
            started = EPOCH + timedelta(hours=n, minutes=10 * r)
            roll = rng.random()
            if r == runs_per_crew - 1 and roll < 0.2:
                status, duration, finished = "running", None, None
            else:
                status = "succeeded" if roll < success_bias else "failed"
                duration = round(rng.uniform(5, 600), 2)
                finished = started + timedelta(seconds=duration)
            yield {
                "crew_id": crew_id,
                "status": status,
                "started_at": started,
                "finished_at": finished,
                "duration": duration,
                "tokens_used": rng.randint(500, 50_000),
                "created_at": started,
            }


def insert_in_batches(conn, model, rows):
    """Bulk-insert ``rows`` (any iterable of dicts) BATCH at a time; returns the count."""
    count = 0
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            conn.execute(insert(model), batch)
            count += len(batch)
            batch = []
    if batch:
        conn.execute(insert(model), batch)
        count += len(batch)
    return count


def _insert_returning_ids(conn, model, rows):
    ids = []
    for start in range(0, len(rows), BATCH):
        stmt = insert(model).returning(model.id, sort_by_parameter_order=True)
        ids.extend(conn.execute(stmt, rows[start : start + BATCH]).scalars())
    return ids

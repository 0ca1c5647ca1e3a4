"""Bulk seeding for the bench, beyond ``flask seed-demo`` (which refuses a second run).

Adds crews with a chosen run history each, in the spirit of ``crew7.services.seed``:
bulk INSERTs of users, crews, agents and runs, then ``recompute_crew_stats`` so every
crew's aggregates (``crew_stats``) match its runs, all in one transaction.

Run it with the app's environment (``DATABASE_URL``, ``REDIS_URL``)::

    python bench/seeding.py --owner bench-history --runs 10 1000 10000 100000
    python bench/seeding.py --owner bench-filler --crews 9000 --runs-each 5

It prints a JSON summary with the new crew ids.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Older than seed-demo's crews (2026-01-01 on), so start-up warming (newest crews first)
# never picks the bench's own crews.
EPOCH = datetime(2024, 1, 1)


def seed_crews(owner, run_counts, agents_per_crew=3, seed=11, label="bench"):
    """Insert one public crew per entry of ``run_counts`` with that many runs; return ids."""

    from crew7.auth import new_token
    from crew7.extensions import db
    from crew7.models import Agent, Crew, Run, User, hash_token
    from crew7.services.aggregates import recompute_crew_stats
    from crew7.services.seed import LLMS, ROLES, _insert_returning_ids, insert_in_batches

    rng = random.Random(seed)
    conn = db.session.connection()
    (owner_id,) = _insert_returning_ids(
        conn,
        User,
        [
            {
                "name": owner,
                "token_hash": hash_token(new_token()),
                "is_admin": False,
                "created_at": EPOCH,
            }
        ],
    )
    crew_rows = []
    for n, runs in enumerate(run_counts):
        created = EPOCH + timedelta(minutes=n)
        crew_rows.append(
            {
                "owner_id": owner_id,
                "name": f"{label.title()} Crew {n + 1} ({runs} runs)",
                "description": f"A {label} crew with a history of {runs} runs.",
                "is_public": True,
                "process": "hierarchical" if n % 3 == 0 else "sequential",
                "created_at": created,
                "updated_at": created,
            }
        )
    crew_ids = _insert_returning_ids(conn, Crew, crew_rows)
    agent_rows = []
    for n, crew_id in enumerate(crew_ids):
        for a in range(agents_per_crew):
            role = ROLES[(n + a) % len(ROLES)]
            agent_rows.append(
                {
                    "crew_id": crew_id,
                    "name": f"{role} {a + 1}",
                    "role": role,
                    "goal": f"Do the {role.lower()}'s part.",
                    "backstory": f"A seasoned {role.lower()}.",
                    "llm": LLMS[(n + a) % len(LLMS)],
                    "tools": [],
                    "created_at": EPOCH,
                    "updated_at": EPOCH,
                }
            )
    insert_in_batches(conn, Agent, agent_rows)
    total = insert_in_batches(conn, Run, _bench_runs(rng, crew_ids, run_counts))
    recompute_crew_stats(conn, crew_ids)
    db.session.commit()
    return crew_ids, total


def _bench_runs(rng, crew_ids, run_counts):
    """Finished runs, 80% of them successful, ``run_counts[i]`` for crew ``crew_ids[i]``."""
    for n, (crew_id, runs) in enumerate(zip(crew_ids, run_counts, strict=True)):
        for r in range(runs):
            started = EPOCH + timedelta(minutes=n, seconds=r)
            succeeded = rng.random() < 0.8
            duration = round(rng.uniform(5, 600), 2)
            yield {
                "crew_id": crew_id,
                "status": "succeeded" if succeeded else "failed",
                "started_at": started,
                "finished_at": started + timedelta(seconds=duration),
                "duration": duration,
                "tokens_used": rng.randint(500, 50_000),
                "created_at": started,
            }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner", required=True, help="name of the user owning the crews")
    parser.add_argument("--runs", type=int, nargs="*", default=[], help="one crew per count")
    parser.add_argument("--crews", type=int, default=0, help="this many crews with --runs-each")
    parser.add_argument("--runs-each", type=int, default=5)
    parser.add_argument("--label", default="bench")
    args = parser.parse_args(argv)
    counts = list(args.runs) + [args.runs_each] * args.crews
    if not counts:
        parser.error("nothing to seed: give --runs or --crews")

    from crew7 import create_app

    app = create_app({"CACHE_WARM_ON_START": False})
    started = time.perf_counter()
    with app.app_context():
        ids, runs = seed_crews(args.owner, counts, label=args.label)
    print(
        json.dumps(
            {
                "owner": args.owner,
                "crew_ids": ids,
                "run_counts": counts if len(counts) <= 20 else None,
                "runs": runs,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    )


if __name__ == "__main__":
    main()

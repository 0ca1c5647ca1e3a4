"""The cached document families and the names of what is cached."""

CREW = "crew"
AGENT = "agent"
CREW_AGENTS = "crew_agents"
STATS = "stats"
NULL = b"null"

LEADERBOARD_TYPES = ("runs", "success-rate")

"""The one-line summary of a warming run."""

from crew7.services.warming import describe


def test_describe_counts_each_outcome_per_family():
    summary = {
        "stored": {"crew": 5, "agent": 10, "crew_agents": 5},
        "present": {"crew": 2},
        "refused": {},
    }
    assert describe(summary) == (
        "stored 20 (agent 10, crew 5, crew_agents 5); present 2 (crew 2); refused 0"
    )


def test_describe_nothing():
    assert describe({"stored": {}, "present": {}, "refused": {}}) == (
        "stored 0; present 0; refused 0"
    )

"""Linearizability check for reads of versioned documents."""


def stale_reads(writes, reads):
    """Reads that return a version older than one acknowledged before the read began.

    ``writes``: {key: [(ack_time, version), ...]}; ``reads``: [(key, start, end, version)].
    A read concurrent with a write may return either version; a read that starts after
    a write's response was received must return that version or a newer one.
    """
    stale = []
    for key, start, end, version in reads:
        acked = [v for t, v in writes.get(key, ()) if t < start]
        if acked and version < max(acked):
            stale.append((key, start, end, version, max(acked)))
    return stale

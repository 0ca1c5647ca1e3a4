"""The change feed: public documents' changes in commit order, as ERC-4906 events
(``GET /metadata/updates``).

Read from the durable change log (``cache_changes``, written by the triggers in
``crew7.changelog_triggers``), never from current state: each entry records whether the
document it names was public when written (``visibility``) and, for a crew, its agents
then (``agents``). Shown: ``crew``, ``crew_document`` and ``agent`` entries whose
document was public, or stopped being public ('gone': a public crew turned private or
deleted, an agent moved out of a public crew), so that consumers drop it. Entries of
private crews, and entries older than migration 0005 (visibility NULL), are not shown.

One entry may give several events: a ``crew`` entry is the crew's ``MetadataUpdate``
then its agents' documents (which show the crew), as ``BatchMetadataUpdate`` over each
contiguous range of agent ids (``MetadataUpdate`` for a range of one).

Order and cursors. SQLite serialises writers, so id order is commit order. PostgreSQL
allocates ids in one order and commits in another: a reader that moved past id N while
N-1 was still uncommitted would skip N-1 for ever. Each entry there records its
transaction's id (``xid``), and the feed serves only entries whose xid is below the
reading snapshot's xmin (every transaction below it has ended, so that set never grows),
in (xid, id) order. A cursor is ``xid.id.n.stamp``: after the first ``n`` events of entry
(xid, id) (xid 0 on SQLite), valid while ``stamp`` (unix seconds: when the entry was
written, or when the reader had read everything) is within the log's retention
(``retention``: at least ``FEED_RETENTION``, the relay prunes no sooner). Cursors are
opaque to clients.
"""

import re
from dataclasses import dataclass
from datetime import UTC, timedelta

from flask import current_app
from sqlalchemy import and_, select, text, true, tuple_

from crew7.extensions import db
from crew7.models import CacheChange, utcnow

MAX_LIMIT = 1000
SHOWN_KINDS = ("crew", "crew_document", "agent")
SHOWN_VISIBILITY = ("public", "gone")
# Four decimal numbers below 10**18 (PostgreSQL's bigint holds them all).
_NUMBER = r"(0|[1-9][0-9]{0,17})"
CURSOR_PATTERN = rf"^{_NUMBER}\.{_NUMBER}\.{_NUMBER}\.{_NUMBER}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_XMIN = text("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")


class BadCursor(ValueError):
    """A cursor the feed did not hand out."""


class CursorExpired(Exception):
    """A cursor older than ``FEED_RETENTION``: the entries after it may be pruned."""

    def __init__(self, oldest):
        super().__init__("cursor older than the feed's retention")
        self.oldest = oldest  # the oldest valid cursor, None when the log is empty


@dataclass
class FeedPage:
    events: list[dict]
    next_cursor: str | None
    has_more: bool


@dataclass(frozen=True)
class Position:
    """After the first ``n`` events of entry (xid, id)."""

    xid: int
    id: int
    n: int
    stamp: int

    def cursor(self):
        return f"{self.xid}.{self.id}.{self.n}.{self.stamp}"


def parse_cursor(raw):
    """The Position a cursor names; BadCursor when it is not spelled as the feed spells
    them. (A stamp ahead of the clock only keeps its forger's cursor from expiring.)"""
    match = _CURSOR.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        raise BadCursor("malformed cursor")
    return Position(*(int(g) for g in match.groups()))


def _unix(dt):
    return int(dt.replace(tzinfo=UTC).timestamp())


def _iso(dt):
    return dt.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def ranges(ids):
    """Sorted distinct ids grouped into contiguous ``(first, last)`` ranges."""
    out = []
    for i in sorted(set(ids)):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return [tuple(r) for r in out]


def _token_event(token_type, first, last):
    if first == last:
        return {"event": "MetadataUpdate", "token_type": token_type, "token_id": first}
    return {
        "event": "BatchMetadataUpdate",
        "token_type": token_type,
        "from_token_id": first,
        "to_token_id": last,
    }


def entry_events(kind, ref_id, agents):
    """The events of one shown entry, in a fixed order (cursors count them). Pure."""
    if kind == "agent":
        return [_token_event("agent", ref_id, ref_id)]
    if kind == "crew_document":
        return [_token_event("crew", ref_id, ref_id)]
    if kind != "crew":
        return []
    ids = [int(a) for a in (agents or "").split(",") if a]
    return [_token_event("crew", ref_id, ref_id)] + [
        _token_event("agent", first, last) for first, last in ranges(ids)
    ]


def _shown():
    return and_(
        CacheChange.kind.in_(SHOWN_KINDS),
        CacheChange.visibility.in_(SHOWN_VISIBILITY),
    )


def _order(pg):
    return (CacheChange.xid, CacheChange.id) if pg else (CacheChange.id,)


def _committed(pg):
    """PostgreSQL: entries of transactions that have all ended (below the snapshot's
    xmin, evaluated in the same statement as the read, so with the same snapshot)."""
    return CacheChange.xid < _XMIN if pg else true()


def _entries_from(conn, pg, position, count):
    query = select(
        CacheChange.id,
        CacheChange.xid,
        CacheChange.kind,
        CacheChange.ref_id,
        CacheChange.agents,
        CacheChange.created_at,
    ).where(_shown(), _committed(pg))
    if position is not None:
        if pg:
            query = query.where(
                tuple_(CacheChange.xid, CacheChange.id) >= tuple_(position.xid, position.id)
            )
        else:
            query = query.where(CacheChange.id >= position.id)
    return conn.execute(query.order_by(*_order(pg)).limit(count)).all()


def oldest_cursor(conn, pg, now):
    """The cursor before the oldest shown entry kept, or None (start without one). Only
    entries the feed would serve: one of a transaction above xmin may have an older
    transaction, still open, before it."""
    query = select(CacheChange.xid, CacheChange.id).where(_shown(), _committed(pg))
    row = conn.execute(query.order_by(*_order(pg)).limit(1)).first()
    if row is None:
        return None
    return Position(row.xid if pg else 0, row.id, 0, _unix(now)).cursor()


def retention(config):
    """Seconds a cursor stays valid: as long as the change log keeps entries (the relay
    prunes at the longer of its own retention and ``FEED_RETENTION``)."""
    return max(config["CACHE_CHANGELOG_RETENTION"], config["FEED_RETENTION"])


def read_feed(after, limit):
    """One page of the feed after cursor ``after`` (None: from the oldest entry kept).

    Raises BadCursor for a malformed cursor, CursorExpired for one older than
    ``FEED_RETENTION``. Uses its own connection of the app's engine (app context)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be from 1 to {MAX_LIMIT}")
    now = utcnow()
    position = parse_cursor(after) if after is not None else None
    engine = db.engine
    pg = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        if position is not None:
            horizon = now - timedelta(seconds=retention(current_app.config))
            if position.stamp < _unix(horizon):
                raise CursorExpired(oldest_cursor(conn, pg, now))
        # Every shown entry gives at least one event: limit + 2 entries (the cursor's own
        # may be spent) hold one event more than the page, or the end of the log.
        rows = _entries_from(conn, pg, position, limit + 2)
    events, last, has_more = [], position, False
    for row in rows:
        xid = row.xid if pg else 0
        skip = position.n if position and (xid, row.id) == (position.xid, position.id) else 0
        stamp = _unix(row.created_at)
        for n, event in enumerate(entry_events(row.kind, row.ref_id, row.agents)):
            if n < skip:
                continue
            if len(events) == limit:
                has_more = True
                break
            last = Position(xid, row.id, n + 1, stamp)
            events.append({"cursor": last.cursor(), **event, "at": _iso(row.created_at)})
        if has_more:
            break
    if last is None:
        return FeedPage([], None, False)
    if not has_more:
        # Everything committed so far was read: valid from now for FEED_RETENTION.
        last = Position(last.xid, last.id, last.n, max(last.stamp, _unix(now)))
    return FeedPage(events, last.cursor(), has_more)

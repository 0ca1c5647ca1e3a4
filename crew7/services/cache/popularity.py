"""Popularity: views counted per crew, bounded by Space-Saving."""

import threading

from crew7.services.cache.client import CacheUnavailable
from crew7.services.cache.documents import NOT_FOUND

# Popularity: a view is counted only for a document that exists and is public (never for
# the negative entry of an unknown or private id, which anyone can ask for). The set holds
# at most `keep` crews, kept by Space-Saving (Metwally, Agrawal, El Abbadi, ICDT 2005): a
# crew not in a full set takes the place of the least viewed one and inherits its count
# plus its own views, so the set stays bounded, a newcomer can still rise, and every
# crew viewed more than total/keep times is in it.
COUNT_VIEW = """
local function count_view(views, member, n, keep)
  if redis.call('ZSCORE', views, member) or redis.call('ZCARD', views) < keep then
    redis.call('ZINCRBY', views, n, member)
    return
  end
  local least = redis.call('ZRANGE', views, 0, 0, 'WITHSCORES')
  redis.call('ZREM', views, least[1])
  redis.call('ZADD', views, tonumber(least[2]) + n, member)
end
"""


class ViewBuffer:
    """Views counted in memory and flushed to Redis about once a second (Cluster only)."""

    INTERVAL = 1.0

    def __init__(self, service):
        self.service = service
        self.counts = {}
        self.lock = threading.Lock()
        self.timer = None

    def add(self, member):
        with self.lock:
            self.counts[member] = self.counts.get(member, 0) + 1
            if self.timer is None:
                self.timer = threading.Timer(self.INTERVAL, self.flush)
                self.timer.daemon = True
                self.timer.start()

    def flush(self):
        with self.lock:
            counts, self.counts, self.timer = self.counts, {}, None
        if not counts:
            return

        def run():
            service = self.service
            for member, n in counts.items():
                service.scripts.run(
                    "view", [service.views_key()], [member, service.popularity_size, n]
                )

        try:
            self.service._call(run)
        except CacheUnavailable:
            pass  # popularity is best effort: a lost second of views changes little


class Popularity:
    """The service's popularity methods: views counted on hits, misses and batches."""

    def get_many_counting_views(self, keys, members):
        """One round trip: MGET ``keys`` and count a view of each member whose document is
        found (public); ``members`` name distinct documents. None when Redis is unavailable
        or not trusted (``regain_trust``)."""
        if not keys:
            return []
        if not (self.trusted or self.regain_trust()):
            return None
        if self.cluster:
            try:
                values = self._call(self.client.mget_nonatomic, keys)
            except CacheUnavailable:
                return None
            for member, value in zip(members, values, strict=True):
                if value is not None and value != NOT_FOUND:
                    self.views.add(member)
            return values

        try:
            return self._run(
                "batch_read", [*keys, self.views_key()], [self.popularity_size, *members]
            )
        except CacheUnavailable:
            return None

    def count_view(self, member):
        """A view of a public document computed on a miss (a hit counts in its script)."""
        if self.views is not None:
            self.views.add(member)
            return
        try:
            self._run("view", [self.views_key()], [member, self.popularity_size, 1])
        except CacheUnavailable:
            pass  # popularity is best effort

    def forget_views(self, members):
        """Drop deleted crews from the popularity set."""
        if not members:
            return
        try:
            self._call(self.client.zrem, self.views_key(), *members)
        except CacheUnavailable:
            pass

    def count_views(self, members):
        """A view of each of ``members`` (public documents computed by a batch's misses)."""
        if not members:
            return
        if self.views is not None:
            for member in members:
                self.views.add(member)
            return
        try:
            self._run("views", [self.views_key()], [self.popularity_size, *members])
        except CacheUnavailable:
            pass  # popularity is best effort

    def popular_crew_ids(self, limit):
        """Crew ids by metadata views, most viewed first."""
        try:
            ids = self._call(self.client.zrevrange, self.views_key(), 0, max(limit - 1, 0))
        except CacheUnavailable:
            return []
        return [int(i) for i in ids]

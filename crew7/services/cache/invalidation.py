"""Invalidation: documents deleted and fenced, retried while Redis fails."""

import threading

from crew7.services.cache.client import REDIS_ERRORS, CacheUnavailable
from crew7.services.cache.documents import DOCUMENT_TYPES
from crew7.services.cache.scripts import _fence_token, _text


class Invalidation:
    """The service's invalidation methods."""

    def invalidate_keys(self, keys):
        """Delete documents and replace their fences so no older fill can land."""
        keys = set(keys)
        if not keys:
            return True
        with self._pending_lock:
            keys |= self._pending
            self._pending.clear()
        if self._apply_invalidations(keys):
            return True
        with self._pending_lock:
            self._pending |= keys
        self._schedule_retry()
        return False

    def _apply_invalidations(self, keys):
        try:
            if self.breaker.opened_at is not None:
                raise CacheUnavailable("breaker open")
            self._call(self._send_invalidations, keys)
            return True
        except CacheUnavailable:
            return False

    def _send_invalidations(self, keys):
        """Replace each key's fence and delete it: one pipeline (per key on a Cluster)."""
        ordered = sorted(keys)
        if self.cluster:
            for key in ordered:
                self.scripts.run(
                    "invalidate", [key, self.fence_key(key)], [_fence_token(), self.FENCE_TTL]
                )
            return
        pipe = self.client.pipeline(transaction=False)
        for key in ordered:
            self.scripts.run(
                "invalidate",
                [key, self.fence_key(key)],
                [_fence_token(), self.FENCE_TTL],
                pipeline=pipe,
            )
        pipe.execute()

    def _flush_pending(self):
        """Called when the breaker closes: apply what was missed before reading again."""
        with self._pending_lock:
            keys = set(self._pending)
            self._pending.clear()
        if not keys:
            return True
        try:
            self._send_invalidations(keys)
            return True
        except REDIS_ERRORS:
            with self._pending_lock:
                self._pending |= keys
            return False

    def _schedule_retry(self):
        if self._retry_timer is not None and self._retry_timer.is_alive():
            return
        interval = min(1.0, max(0.1, self.breaker.cooldown / 4))

        def retry():
            if not self._flush_pending():
                self._retry_timer = None
                self._schedule_retry()

        self._retry_timer = threading.Timer(interval, retry)
        self._retry_timer.daemon = True
        self._retry_timer.start()

    # -- the change log's delivery ------------------------------------------------
    def changelog_watermark(self):
        """The id of the last change-log entry whose invalidations are applied, or None
        when Redis has none (restarted, flushed, a lagging replica promoted); raises
        CacheUnavailable when Redis does not answer."""
        value = self._call(self.client.get, self.watermark_key())
        return None if value is None else int(value)

    def apply_changes(self, keys, deleted_crews, watermark):
        """Invalidate ``keys``, drop ``deleted_crews`` from the popularity set, then raise
        the watermark to ``watermark`` (never lowered): True once all of it is applied.
        The watermark is only written after every invalidation was acknowledged, so a
        failure leaves it where it was and the entries are applied again."""
        if self.breaker.opened_at is not None:
            return False
        try:
            if keys:
                self._call(self._send_invalidations, set(keys))
            if deleted_crews:
                self._call(self.client.zrem, self.views_key(), *deleted_crews)
            self._run("raise_watermark", [self.watermark_key()], [int(watermark)])
            return True
        except CacheUnavailable:
            return False

    def release(self, key):
        """Delete a claim (``claim``) this process holds; failures are left to its TTL."""
        try:
            self._call(self.client.delete, key)
        except CacheUnavailable:
            pass

    @property
    def pending_invalidations(self):
        return len(self._pending)

    def keys_affected_by_crew(self, crew_id, agent_ids=()):
        """Every document a change to the crew affects: the crew, its agents list, its
        image, and each of ``agent_ids`` (its agents) and their images."""
        keys = [self.crew_key(crew_id), self.crew_agents_key(crew_id), self.crew_image_key(crew_id)]
        for a in agent_ids:
            keys += [self.agent_key(a), self.agent_image_key(a)]
        return keys

    def invalidate_all_crew_metadata(self, crew_id, agent_ids):
        """The crew, its agents list and each of its agents (``agent_ids``)."""
        return self.invalidate_keys(self.keys_affected_by_crew(crew_id, agent_ids))

    def scan_keys(self, pattern, batch=500):
        """Yield lists of keys matching ``pattern`` (SCAN, on every primary of a Cluster)."""
        if not self.breaker.allow():
            raise CacheUnavailable("breaker open")
        chunk = []
        try:
            for key in self.client.scan_iter(match=pattern, count=batch):
                chunk.append(_text(key))
                if len(chunk) >= batch:
                    yield chunk
                    chunk = []
        except REDIS_ERRORS as exc:
            self.counters.redis_error()
            self.breaker.failure(exc)
            raise CacheUnavailable(str(exc)) from exc
        if chunk:
            yield chunk

    def invalidate_all_metadata(self, batch=500):
        """Delete every metadata and stats document, SCAN in batches (never KEYS or FLUSHDB)."""
        deleted = 0
        # One pattern per key family (a crew's pattern covers its agents list).
        patterns = list(dict.fromkeys(t.pattern(self.prefix) for t in DOCUMENT_TYPES.values()))
        patterns = [p for p in patterns if not any(p != q and _covers(q, p) for q in patterns)]
        try:
            for pattern in patterns:
                for keys in self.scan_keys(pattern, batch):
                    self.invalidate_keys(keys)
                    deleted += len(keys)
        except CacheUnavailable:
            pass
        return deleted


def _covers(pattern, other):
    """Whether every key ``other`` matches is matched by ``pattern`` (``head*`` only)."""
    return pattern.endswith("*") and other.startswith(pattern[:-1])

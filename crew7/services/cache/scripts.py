"""The Lua scripts of the read-through, the fences, the single-flight lock and
invalidation, and the one way they are called (``Scripts.run``)."""

import os
import time
import uuid

import redis

from crew7.services.cache.popularity import COUNT_VIEW

# KEYS: doc[, views]  ARGV: [member, keep]
# -> {1, value, pttl} on a hit, {0} on a miss (the lock holder reads the fence: _ACQUIRE)
_READ = (
    COUNT_VIEW
    + """
local v = redis.call('GET', KEYS[1])
if v then
  if #KEYS > 1 and v ~= 'null' then count_view(KEYS[2], ARGV[1], 1, tonumber(ARGV[2])) end
  return {1, v, redis.call('PTTL', KEYS[1])}
end
return {0}
"""
)

# KEYS: views  ARGV: member, keep, n: n views of a public document (a miss's, or a
# Cluster's buffered ones).
_VIEW = (
    COUNT_VIEW
    + """
count_view(KEYS[1], ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[2]))
return 1
"""
)

# Fences that cannot be lost. The lock holder reads the document's fence before it reads
# the database, creating one (a fresh random token) when there is none, and its fill
# lands only if the same token is still there. Whatever removes a fence (an invalidation
# replacing it, a restart or failover that comes back empty, FLUSHALL, eviction under any
# maxmemory-policy, expiry) leaves either another token or none, and both refuse the
# fill: losing a fence costs a refused fill, never a stale document.
_FENCE = """
local function fence_of(fence, new_token, ttl)
  local f = redis.call('GET', fence)
  if f then return f end
  redis.call('SET', fence, new_token, 'EX', ttl)
  return new_token
end
"""

# KEYS: doc, lock, fence  ARGV: lock_token, lease_ms, new_fence, fence_ttl
# -> {1, value} if the value is there by now, {2, fence} when the lock is ours, {0} if
# held. Checking the value and taking the lock in one step closes the window in which a
# holder fills and releases between our miss and our lock attempt.
_ACQUIRE = (
    _FENCE
    + """
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, fence_of(KEYS[3], ARGV[3], ARGV[4])}
end
return {0}
"""
)

# KEYS: lock, fence  ARGV: lock_token, lease_ms, new_fence, fence_ttl
# -> the fence when the lock is ours (an early refresh of a key still cached), else nil.
_LEASE = (
    _FENCE
    + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return fence_of(KEYS[2], ARGV[3], ARGV[4])
"""
)

# KEYS: doc, fence, lock  ARGV: value, ttl_ms, fence_seen, lock_token
# Stores the value only if the fence is still the one read before the database: a
# missing fence refuses the fill like a replaced one.
_FILL = """
local stored = 0
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  stored = 1
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
end
return stored
"""

# KEYS: doc, fence  ARGV: new fence token, fence ttl
_INVALIDATE = """
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return redis.call('DEL', KEYS[1])
"""

# KEYS: doc keys..., views  ARGV: keep, crew ids -> the documents (MGET) after counting a
# view of each one found: a batch of 100 in one command, rather than an MGET and 100
# ZINCRBYs. The caller passes each id once.
_BATCH_READ = (
    COUNT_VIEW
    + """
local docs = redis.call('MGET', unpack(KEYS, 1, #KEYS - 1))
local keep = tonumber(ARGV[1])
for i = 1, #docs do
  if docs[i] and docs[i] ~= 'null' then count_view(KEYS[#KEYS], ARGV[i + 1], 1, keep) end
end
return docs
"""
)

# Many misses at once (a batch, warming): _ACQUIRE and _FILL over (doc, lock, fence)
# triples, one round trip each for the whole set. Not on a Cluster: the triples of
# different documents live in different slots.
# KEYS: doc1, lock1, fence1, doc2, ...  ARGV: lock_token, lease_ms, fence_ttl, new fences...
# -> per document, as _ACQUIRE: {1, value}, {2, fence} or {0}
_ACQUIRE_MANY = (
    _FENCE
    + """
local out = {}
for i = 1, #KEYS, 3 do
  local v = redis.call('GET', KEYS[i])
  if v then
    out[#out + 1] = {1, v}
  elseif redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[#out + 1] = {2, fence_of(KEYS[i + 2], ARGV[3 + (i + 2) / 3], ARGV[3])}
  else
    out[#out + 1] = {0}
  end
end
return out
"""
)

# KEYS: doc1, lock1, fence1, ...  ARGV: lock_token, then value, ttl_ms, fence_seen per doc
# -> per document 1 if stored (its fence unchanged), else 0; our locks are released.
_FILL_MANY = """
local out = {}
for i = 1, #KEYS, 3 do
  local a = 2 + (i - 1) / 3 * 3
  if redis.call('GET', KEYS[i + 2]) == ARGV[a + 2] then
    redis.call('SET', KEYS[i], ARGV[a], 'PX', ARGV[a + 1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  if redis.call('GET', KEYS[i + 1]) == ARGV[1] then redis.call('DEL', KEYS[i + 1]) end
end
return out
"""

# KEYS: views  ARGV: keep, members...: a view of each (the misses of a batch).
_VIEWS = (
    COUNT_VIEW
    + """
for i = 2, #ARGV do count_view(KEYS[1], ARGV[i], 1, tonumber(ARGV[1])) end
return #ARGV - 1
"""
)

# KEYS: views  ARGV: keep, then member, n pairs: the views a front's worker counted on
# its hits since its last flush (crew7/front/front.lua), n of each member.
_VIEW_COUNTS = (
    COUNT_VIEW
    + """
local keep = tonumber(ARGV[1])
for i = 2, #ARGV - 1, 2 do count_view(KEYS[1], ARGV[i], tonumber(ARGV[i + 1]), keep) end
return (#ARGV - 1) / 2
"""
)

# KEYS: lock, doc -> {lock exists, value}: one atomic look at a key being computed.
_PEEK = """
return {redis.call('EXISTS', KEYS[1]), redis.call('GET', KEYS[2])}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# KEYS: watermark  ARGV: id -> the watermark after: it only ever moves up.
_RAISE_WATERMARK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
local new = tonumber(ARGV[1])
if new > current then
  redis.call('SET', KEYS[1], ARGV[1])
  return new
end
return current
"""


SOURCES = {
    "read": _READ,
    "view": _VIEW,
    "fill": _FILL,
    "acquire": _ACQUIRE,
    "lease": _LEASE,
    "invalidate": _INVALIDATE,
    "release": _RELEASE,
    "peek": _PEEK,
    "batch_read": _BATCH_READ,
    "acquire_many": _ACQUIRE_MANY,
    "fill_many": _FILL_MANY,
    "views": _VIEWS,
    "view_counts": _VIEW_COUNTS,
    "raise_watermark": _RAISE_WATERMARK,
}


class Scripts:
    """The scripts registered on a client, called by name."""

    def __init__(self, client):
        self.client = client
        self._scripts = {name: client.register_script(src) for name, src in SOURCES.items()}

    def run(self, name, keys, args=(), pipeline=None):
        """EVALSHA straight through the client (the hot path): redis-py's Script wrapper
        costs more than the round trip's own parsing. A Redis that lost its scripts
        (restart, SCRIPT FLUSH) gets the script loaded again. In a ``pipeline`` the
        wrapper is used: it loads the script before the pipeline runs."""
        script = self._scripts[name]
        if pipeline is not None:
            return script(keys=keys, args=args, client=pipeline)
        try:
            return self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return script(keys=keys, args=args)

    def wrapper(self, name):
        """redis-py's Script object of ``name`` (for comparisons in benchmarks)."""
        return self._scripts[name]


def _fence_token():
    return f"{time.time_ns():x}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _lock_token():
    # The holder's pid makes a stuck lease traceable to its process.
    return f"{os.getpid()}:{uuid.uuid4().hex}"


def _text(value):
    return value.decode() if isinstance(value, bytes) else (value or "")

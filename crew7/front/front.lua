-- The front's hit path, run by nginx (lua-nginx-module) before any request for a metadata
-- document reaches the app. crew7/front/__init__.py renders `S` (the settings) above this
-- text. A hit is served here, byte for byte as the app serves it; everything else is
-- handed to the app unchanged (ngx.exec to @crew7_app): a miss, the negative entry
-- `null` (the app's 404), a malformed id, a Redis error or timeout, a script Redis has
-- lost (NOSCRIPT: the app loads it again), anything unexpected.

local redis = require "nginx.redis"

local M = {}
local APP = "@crew7_app"
local MAX_ID = 2147483647
local ZEROS = string.rep("0", 56)
local null = ngx.null

-- The decimal id a token id names, or nil (the app answers): decimal without sign or
-- leading zero, or 64 lowercase hex digits, in 1..2^31-1 (crew7/extensions.py).
local function id_of(raw)
  local n = #raw
  if n <= 10 and raw:find("^[1-9][0-9]*$") then
    if tonumber(raw) <= MAX_ID then return raw end
    return nil
  end
  if n == 64 and raw:find("^[0-9a-f]+$") and raw:sub(1, 56) == ZEROS then
    local v = tonumber(raw:sub(57), 16)
    if v >= 1 and v <= MAX_ID then return string.format("%d", v) end
  end
  return nil
end
M.id_of = id_of

-- XFetch, as crew7/services/cache/read_through.py should_refresh_early (kept equal by a
-- test that runs this function in Redis's Lua). delta: a family's first estimate.
local function should_refresh_early(pttl, delta, beta, window, u)
  if pttl == nil or pttl < 0 then return false end
  local scale = math.max(delta * beta, window)
  if scale <= 0 then return false end
  return -scale * math.log(1.0 - u) * 1000 >= pttl
end
M.should_refresh_early = should_refresh_early

local function handoff(red)
  if red then red:close() end
  return ngx.exec(APP)
end

local function connect()
  local red = redis:new()
  -- lua-resty-redis 0.27 (Debian bookworm) has one set_timeout for all three; its
  -- cosocket takes them apart. (An unknown method would be sent to Redis as a command.)
  rawget(red, "_sock"):settimeouts(S.connect_ms, S.send_ms, S.read_ms)
  local ok = red:connect(S.redis_host, S.redis_port)
  if not ok then return nil end
  if red:get_reused_times() == 0 then
    if S.redis_password ~= "" and not red:auth(S.redis_password) then
      red:close()
      return nil
    end
    if S.redis_db ~= 0 and not red:select(S.redis_db) then
      red:close()
      return nil
    end
  end
  return red
end

local function release(red)
  red:set_keepalive(S.idle_ms, S.pool_size)
end

local function count_hits(family, n)
  ngx.shared.crew7_front:incr(family, n, 0)
end

-- If-None-Match as the app reads it: `*`, or a comma-separated list holding the ETag.
local function not_modified(etag)
  local inm = ngx.req.get_headers()["if-none-match"]
  if inm == nil then return false end
  if type(inm) ~= "string" then return nil end
  if inm:match("^%s*(.-)%s*$") == "*" then return true end
  for tag in (inm .. ","):gmatch("([^,]*),") do
    if tag:match("^%s*(.-)%s*$") == etag then return true end
  end
  return false
end

-- The app's answer for a document (crew7/metadata/views.py _document_response); counts
-- the hit first (ngx.exit ends the handler). False: the app must answer instead.
local function respond(body, family, hits)
  local etag = '"' .. ngx.md5(body) .. '"'
  local fresh = not_modified(etag)
  if fresh == nil then return false end -- several If-None-Match headers: the app decides
  count_hits(family, hits)
  ngx.header["Access-Control-Allow-Origin"] = "*"
  ngx.header["Cache-Control"] = S.cache_control
  ngx.header["ETag"] = etag
  if fresh then
    -- Sent as a normal response (ngx.exit(304) would make nginx's own, without ETag).
    ngx.status = 304
    ngx.header["Content-Type"] = nil
    ngx.send_headers()
    return ngx.exit(ngx.HTTP_OK)
  end
  ngx.header["Content-Type"] = S.content_type[family] or "application/json"
  ngx.header["Content-Length"] = #body
  ngx.print(body)
  return ngx.exit(200)
end

local function serve_one(family, key, id)
  local red = connect()
  if not red then return handoff() end
  local res
  if family == "crew" then
    res = red:evalsha(S.read_sha, 2, key, S.views_key, id, S.keep)
  else
    res = red:evalsha(S.read_sha, 1, key)
  end
  if type(res) ~= "table" then return handoff(red) end
  release(red)
  if res[1] ~= 1 or type(res[2]) ~= "string" or res[2] == "null" then
    return ngx.exec(APP)
  end
  local delta = S.compute_estimate[family]
  if should_refresh_early(res[3], delta, S.beta, S.window, math.random()) then
    -- Crew views are counted already: the app must not count this one again.
    ngx.var.crew7_refresh = family == "crew" and "counted" or "1"
    return ngx.exec(APP)
  end
  if respond(res[2], family, 1) == false then return ngx.exec(APP) end
end

-- /metadata/crews?ids=...: served only when every document is there and public (the
-- app's body: its documents in request order, joined by commas, in brackets). The
-- plain MGET first counts nothing, so a batch handed to the app is not counted twice.
local function serve_batch(query)
  local raw = query:match("^ids=([0-9a-f,]+)$")
  if not raw then return ngx.exec(APP) end
  local order, distinct, keys, seen = {}, {}, {}, {}
  for part in (raw .. ","):gmatch("([^,]*),") do
    local id = id_of(part)
    if not id or #order >= S.max_batch then return ngx.exec(APP) end
    order[#order + 1] = id
    if not seen[id] then
      seen[id] = true
      distinct[#distinct + 1] = id
      keys[#keys + 1] = S.key_prefix .. "metadata:crew:" .. id
    end
  end
  local red = connect()
  if not red then return handoff() end
  local docs = red:mget(unpack(keys))
  if type(docs) ~= "table" then return handoff(red) end
  for i = 1, #keys do
    if docs[i] == null or docs[i] == "null" then
      release(red)
      return ngx.exec(APP)
    end
  end
  local args = { S.batch_read_sha, #keys + 1 }
  for i = 1, #keys do args[#args + 1] = keys[i] end
  args[#args + 1] = S.views_key
  args[#args + 1] = S.keep
  for i = 1, #distinct do args[#args + 1] = distinct[i] end
  docs = red:evalsha(unpack(args))
  if type(docs) ~= "table" then return handoff(red) end
  release(red)
  local by_id = {}
  for i = 1, #distinct do
    local doc = docs[i]
    if doc == null or doc == "null" then return ngx.exec(APP) end
    by_id[distinct[i]] = doc
  end
  local parts = {}
  for i = 1, #order do parts[i] = by_id[order[i]] end
  local body = "[" .. table.concat(parts, ",") .. "]"
  if respond(body, "crew", #distinct) == false then return ngx.exec(APP) end
end

-- Every request of `location /metadata/`.
function M.serve()
  if not S.enabled or ngx.req.get_method() ~= "GET" then return ngx.exec(APP) end
  local path, query = ngx.var.request_uri:match("^([^?]*)%??(.*)$")
  if path == "/metadata/crews" then return serve_batch(query) end
  local raw = path:match("^/metadata/crew/([0-9a-f]+)$")
  local family, template = "crew", "metadata:crew:"
  if not raw then
    raw = path:match("^/metadata/agent/([0-9a-f]+)$")
    family, template = "agent", "metadata:agent:"
  end
  local suffix = ""
  if not raw then
    raw = path:match("^/metadata/crew/([0-9a-f]+)/agents$")
    family, template, suffix = "crew_agents", "metadata:crew:", ":agents"
  end
  local id = raw and id_of(raw)
  if not id then return ngx.exec(APP) end
  return serve_one(family, S.key_prefix .. template .. id .. suffix, id)
end

-- Every request of `location /images/`: a crew's or an agent's card (crew7/images),
-- served like a document from its own key (S.images: kind -> family and key head).
function M.serve_image()
  if not S.enabled or ngx.req.get_method() ~= "GET" then return ngx.exec(APP) end
  local path = ngx.var.request_uri:match("^([^?]*)")
  local kind, raw = path:match("^/images/([a-z]+)/([0-9a-f]+)%.svg$")
  local image = kind and S.images[kind]
  local id = image and id_of(raw)
  if not id then return ngx.exec(APP) end
  return serve_one(image.family, image.key .. id, id)
end

-- Hits counted in this worker's shared dict go to Redis (HINCRBY on the hits hash)
-- every few hundred milliseconds, where the app's /metrics reads them. A failed flush
-- puts the counts back for the next one.
local function flush(premature)
  local dict = ngx.shared.crew7_front
  local counts, any = {}, false
  for _, family in ipairs(S.families) do
    local n = dict:get(family)
    if n and n > 0 then
      dict:incr(family, -n)
      counts[family], any = n, true
    end
  end
  if not any then return end
  local red = connect()
  local ok = red ~= nil
  if ok then
    red:init_pipeline()
    for family, n in pairs(counts) do red:hincrby(S.hits_key, family, n) end
    ok = red:commit_pipeline() ~= nil
    if ok then release(red) else red:close() end
  end
  if not ok then
    for family, n in pairs(counts) do dict:incr(family, n, 0) end
  end
end

function M.init_worker()
  math.randomseed(ngx.now() * 1000 + ngx.worker.pid())
  ngx.timer.every(S.flush_interval, flush)
end

return M

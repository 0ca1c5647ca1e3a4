-- The front's hit path, run by nginx (lua-nginx-module) before any request for a metadata
-- document reaches the app. crew7/front/__init__.py renders `S` (the settings) above this
-- text. A hit is served here, byte for byte as the app serves it; everything else is
-- handed to the app unchanged (ngx.exec to @crew7_app): a miss, the negative entry
-- `null` (the app's 404), a malformed id, a Redis error or timeout, an early refresh,
-- anything unexpected. A hit runs no script: one round trip (GET and PTTL, or MGET).

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

-- Crew views counted by this worker since its last flush, {crew id = views}: sent to
-- the popularity set with the hits (flush), as the app's ViewBuffer does on a Cluster.
-- A view is counted only for a document served (public), never for `null`.
local views = {}
local function count_view(id, n)
  views[id] = (views[id] or 0) + n
end

-- If-None-Match as the app reads it: `*`, or a comma-separated list holding the ETag.
local function not_modified(etag)
  -- $http_if_none_match costs no header table: most requests have none.
  if ngx.var.http_if_none_match == nil then return false end
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
-- the hits and the views of `viewed` (a crew id, or a list of them for a batch) first
-- (ngx.exit ends the handler).
-- False: the app must answer instead.
local function respond(body, family, hits, viewed)
  local etag = '"' .. ngx.md5(body) .. '"'
  local fresh = not_modified(etag)
  if fresh == nil then return false end -- several If-None-Match headers: the app decides
  count_hits(family, hits)
  if type(viewed) == "table" then
    for i = 1, #viewed do count_view(viewed[i], 1) end
  elseif viewed then
    count_view(viewed, 1)
  end
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
  -- One round trip, no script: the document and its remaining TTL (for XFetch). A key
  -- that expires between the two has no TTL left (-2): no early refresh, as for a hit.
  red:init_pipeline(2)
  red:get(key)
  red:pttl(key)
  local res = red:commit_pipeline()
  if type(res) ~= "table" then return handoff(red) end
  local body, pttl = res[1], res[2]
  if type(pttl) ~= "number" then return handoff(red) end -- an error reply ({false, err})
  release(red)
  if type(body) ~= "string" or body == "null" then return ngx.exec(APP) end
  local delta = S.compute_estimate[family]
  if should_refresh_early(pttl, delta, S.beta, S.window, math.random()) then
    -- The view is counted here: the app must not count it again.
    if family == "crew" then
      count_view(id, 1)
      ngx.var.crew7_refresh = "counted"
    else
      ngx.var.crew7_refresh = "1"
    end
    return ngx.exec(APP)
  end
  local viewed = family == "crew" and id or nil -- no table per hit
  if respond(body, family, 1, viewed) == false then return ngx.exec(APP) end
end

-- /metadata/crews?ids=...: served only when every document is there and public (the
-- app's body: its documents in request order, joined by commas, in brackets), with one
-- MGET. Views are counted only for a batch served here: one handed to the app is
-- counted there, once.
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
  release(red)
  local by_id = {}
  for i = 1, #distinct do
    local doc = docs[i]
    if type(doc) ~= "string" or doc == "null" then return ngx.exec(APP) end
    by_id[distinct[i]] = doc
  end
  local parts = {}
  for i = 1, #order do parts[i] = by_id[order[i]] end
  local body = "[" .. table.concat(parts, ",") .. "]"
  if respond(body, "crew", #distinct, distinct) == false then return ngx.exec(APP) end
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

-- At most this many crews' views per EVAL of the flush.
local VIEWS_PER_CALL = 500

local function views_calls(counted)
  local calls, args = {}, nil
  for id, n in pairs(counted) do
    if not args or #args >= 2 * VIEWS_PER_CALL + 1 then
      args = { S.keep }
      calls[#calls + 1] = args
    end
    args[#args + 1] = id
    args[#args + 1] = n
  end
  return calls
end

-- Every flush_interval: the hits counted in crew7_front (all workers) go to the hits
-- hash (HINCRBY), where the app's /metrics reads them, and this worker's views to the
-- popularity set, in one pipeline. What a failed flush took is put back for the next.
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
  local counted = views
  if next(counted) ~= nil then
    views, any = {}, true
  end
  if not any then return end
  -- What each command of the pipeline carries, to put back if it fails.
  local undo = {}
  local red = connect()
  if red then
    red:init_pipeline()
    for family, n in pairs(counts) do
      red:hincrby(S.hits_key, family, n)
      undo[#undo + 1] = function() dict:incr(family, n, 0) end
    end
    for _, args in ipairs(views_calls(counted)) do
      red:eval(S.view_counts_script, 1, S.views_key, unpack(args))
      undo[#undo + 1] = function()
        for i = 2, #args, 2 do count_view(args[i], args[i + 1]) end
      end
    end
    local results = red:commit_pipeline()
    if type(results) == "table" then
      release(red)
      for i = 1, #undo do
        if type(results[i]) == "table" and results[i][1] == false then undo[i]() end
      end
      return
    end
    red:close()
  end
  for family, n in pairs(counts) do dict:incr(family, n, 0) end
  for id, n in pairs(counted) do count_view(id, n) end
end

function M.init_worker()
  math.randomseed(ngx.now() * 1000 + ngx.worker.pid())
  ngx.timer.every(S.flush_interval, flush)
end

return M

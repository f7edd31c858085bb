-- wrk script for bench/signup.py: `wrk -s signup.lua URL -- MODE PREFIX [RATE]`.
--
-- MODE "signup" posts the form with a unique address per request; "health" gets /healthz.
-- RATE (requests a second on each connection) paces the load instead of sending the
-- next request as soon as the last is answered.
-- Run with as many threads as connections: each thread then has exactly one
-- connection, so request() and response() alternate and the one request still in
-- flight when wrk stops is known by its address (the bench checks whether it was stored).
-- done() prints one JSON line the bench reads.

local ffi = require("ffi")
ffi.cdef([[
  typedef struct { long tv_sec; long tv_usec; } drip_timeval;
  int gettimeofday(drip_timeval *tv, void *tz);
]])
local tv = ffi.new("drip_timeval")

local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  mode = args[1] or "signup"
  prefix = args[2] or "bench"
  seq = 0
  ok = 0
  other = 0
  last_other = 0
  inflight = ""
  local rate = tonumber(args[3] or "0")
  interval = rate > 0 and (1000 / rate) or 0
  next_at = nil
  math.randomseed(id * 7919 + os.time())
  if interval == 0 then
    delay = nil -- unpaced: wrk then sends the next request without a timer
  end
  headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
end

function request()
  if mode == "health" then
    inflight = "health"
    return wrk.format("GET", "/healthz")
  end
  seq = seq + 1
  local local_part = string.format("%s-%d-%d", prefix, id, seq)
  inflight = local_part .. "@bench.example.com"
  local body = "email=" .. local_part .. "%40bench.example.com"
    .. "&name=Bench+Reader&consent=yes&website=&timezone=Europe%2FLondon"
  return wrk.format("POST", "/subscribe", headers, body)
end

-- Paced: each connection sends on a fixed schedule, starting at a random offset; a
-- request that falls behind goes at once (the schedule is kept, not pushed back).
function delay()
  if interval == 0 then
    return 0
  end
  local now = now_ms()
  if next_at == nil then
    next_at = now + math.random() * interval
  end
  local wait = next_at - now
  next_at = next_at + interval
  return wait > 0 and wait or 0
end

function response(status, _headers, _body)
  local wanted = (mode == "health") and 200 or 303
  if status == wanted then
    ok = ok + 1
  else
    other = other + 1
    last_other = status
  end
  inflight = ""
end

function done(summary, latency, _requests)
  local total_ok, total_other, last_status = 0, 0, 0
  local pending = {}
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_other = total_other + thread:get("other")
    if thread:get("last_other") ~= 0 then
      last_status = thread:get("last_other")
    end
    local address = thread:get("inflight")
    if address ~= "" and address ~= "health" then
      table.insert(pending, '"' .. address .. '"')
    end
  end
  local errors = summary.errors
  io.write(string.format(
    '\nBENCH {"ok": %d, "other": %d, "other_status": %d, "requests": %d, "duration_us": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, '
      .. '"errors": %d, "inflight": [%s]}\n',
    total_ok, total_other, last_status, summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, errors.connect + errors.read + errors.write + errors.timeout,
    table.concat(pending, ", ")
  ))
end

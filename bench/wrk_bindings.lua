-- wrk script: every request is a new, valid binding event, so the server
-- does the full durable path (no duplicates, no 4xx). Tubes fill 10 at a time.
-- Each wrk thread (and each run, via RUN_ID) uses its own id space.
--   wrk -s bench/wrk_bindings.lua http://127.0.0.1:8080/v1/bindings
-- Env: BATCH=N sends POST /v1/bindings/batch with N events per request.
--      TOKEN=T sends Authorization: Bearer T (a server with access control).
--      COUNT=N requests are built per thread in init(), before wrk starts its
--      clock, so that Lua string building does not cap the measured rate;
--      after N requests a thread starts over (the server then answers
--      200 duplicate). bench_ingest.py sizes COUNT from the expected rate,
--      and fails the run if fewer events were bound than answered.

local ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
local threads = {}
local counter = 0
thread_no = 0  -- global: thread:set() assigns it in each thread's state
local run_id = os.getenv("RUN_ID") or tostring(os.time() % 100000)
local batch = tonumber(os.getenv("BATCH") or "0")

local function luhn_digit(body)
  -- check digit that makes body..d Luhn-valid
  local sum, double = 0, true
  for i = #body, 1, -1 do
    local d = body:byte(i) - 48
    if double then d = d * 2; if d > 9 then d = d - 9 end end
    sum = sum + d
    double = not double
  end
  return tostring((10 - sum % 10) % 10)
end

local function mod37_36_char(body)
  local p = 36
  for i = 1, #body do
    local v = ALNUM:find(body:sub(i, i), 1, true) - 1
    p = (p + v) % 36
    if p == 0 then p = 36 end
    p = (p * 2) % 37
  end
  local c = (37 - p) % 36
  return ALNUM:sub(c + 1, c + 1)
end

local function base36(n, width)
  local s = ""
  repeat
    local r = n % 36
    s = ALNUM:sub(r + 1, r + 1) .. s
    n = math.floor(n / 36)
  until n == 0
  return string.rep("0", width - #s) .. s
end

function setup(thread)
  thread_no = thread_no + 1
  thread:set("thread_no", thread_no)
  table.insert(threads, thread)
end

local requests = {}
local next_request = 0
local count = tonumber(os.getenv("COUNT") or "200000")

local function event()
  counter = counter + 1
  local n = thread_no * 100000000 + counter
  local tube_no = math.floor(n / 10)
  local tube_body = string.format("10%09d", (tonumber(run_id) * 7919 + tube_no) % 1000000000)
  local tube = tube_body .. luhn_digit(tube_body)
  local person_body = "HC" .. base36(tonumber(run_id), 4) .. base36(n, 10)
  local person = person_body .. mod37_36_char(person_body)
  local now = os.time() * 1000
  return string.format(
    '{"event_id":"w%s-%d","site_id":"S%d","device_id":"D%d","tube":"%s","person":"%s","pool_size":10,"scanned_at":%d}',
    run_id, n, thread_no, thread_no, tube, person, now)
end

local headers = {["Content-Type"] = "application/json"}
if os.getenv("TOKEN") and os.getenv("TOKEN") ~= "" then
  headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

local function build()
  if batch > 0 then
    local items = {}
    for i = 1, batch do items[i] = event() end
    local body = '{"events":[' .. table.concat(items, ",") .. ']}'
    return wrk.format("POST", "/v1/bindings/batch", headers, body)
  end
  return wrk.format("POST", "/v1/bindings", headers, event())
end

function init(args)
  counter = 0
  for i = 1, count do requests[i] = build() end
end

function request()
  next_request = next_request % count + 1
  return requests[next_request]
end

-- No response() callback on purpose: defining one makes wrk copy every
-- response's headers and body into Lua, which halves what one wrk thread can
-- drive. wrk counts non-2xx answers itself; bench_ingest.py reports them.

-- At the end only (no per-response cost): percentiles wrk's --latency table
-- does not print, for bench/capacity.py.
function done(summary, latency, requests)
  io.write(string.format("LATENCY_US p50=%d p95=%d p99=%d p999=%d\n", latency:percentile(50),
    latency:percentile(95), latency:percentile(99), latency:percentile(99.9)))
end

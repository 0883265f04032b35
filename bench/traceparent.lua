-- wrk script: a fresh W3C traceparent on every request, the sampled flag set on
-- one request in EVERY (the first script argument; 1 = all, 10 = 10 %), counted
-- per connection-thread so the share is exact, not drawn.
--   wrk -s bench/traceparent.lua URL -- 10
-- Two more arguments pace the load: RATE requests per second per wrk thread,
-- over CONNS connections per thread (with -t1: the whole run's -c), held by a
-- delay before each request.
--   wrk -t1 -c200 -s bench/traceparent.lua URL -- 1 35000 200
local every = 1
local n = 0

-- Pacing. wrk delays each connection's next request by delay() ms (whole ms, a
-- timer per connection), and gives Lua no clock finer than os.time()'s second.
-- So the delay is a per-connection period, spread over whole ms by carrying
-- the fraction, and corrected once a second by the rate the last second got:
-- a whole second's, never the run's first (it began mid-second: its count,
-- short, would shrink the period and overshoot the rate for seconds after),
-- and by at most a factor of 2 either way.
local rate = nil
local period = 0 -- ms, fractional
local carry = 0
local second = 0
local started = 0
local whole = false -- the current second was seen from its start

local function paced_delay()
  local now = os.time()
  if now ~= second then
    if whole and now == second + 1 and started > 0 then
      local f = started / rate
      if f < 0.5 then f = 0.5 elseif f > 2 then f = 2 end
      period = period * f
      if period > 1000 then period = 1000 end
    end
    whole = second ~= 0
    second = now
    started = 0
  end
  started = started + 1
  carry = carry + period
  local d = math.floor(carry)
  carry = carry - d
  return d
end

function init(args)
  every = tonumber(args[1]) or 1
  rate = tonumber(args[2])
  if rate and rate > 0 then
    period = 1000 * (tonumber(args[3]) or 1) / rate
    delay = paced_delay
  end
  math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1e6))
end

local function hex16()
  return string.format("%04x", math.random(0, 65535))
end

function request()
  n = n + 1
  local flags = (n % every == 0) and "01" or "00"
  local trace = hex16() .. hex16() .. hex16() .. hex16() .. hex16() .. hex16() .. hex16() .. string.format("%04x", math.random(1, 65535))
  local parent = hex16() .. hex16() .. hex16() .. string.format("%04x", math.random(1, 65535))
  return wrk.format(nil, nil, { ["traceparent"] = "00-" .. trace .. "-" .. parent .. "-" .. flags })
end

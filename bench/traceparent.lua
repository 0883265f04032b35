-- wrk script: a fresh W3C traceparent on every request, the sampled flag set on
-- one request in EVERY (the first script argument; 1 = all, 10 = 10 %), counted
-- per connection-thread so the share is exact, not drawn.
--   wrk -s bench/traceparent.lua URL -- 10
local every = 1
local n = 0

function init(args)
  every = tonumber(args[1]) or 1
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

-- bench/loadgen.py's closed loop in wrk (4.1.0, LuaJIT): run with -t 1, so one Lua state sends every request.
-- Arguments after "--": the folder bench/loadgen.py wrote the bodies to, and a tag unique to this wrk run.
-- The folder holds requests.txt (line 1: the path; line 2: the item-id marker, or "-" for fixed bodies; then one
-- content type per body) and body-000, body-001, ...: request n sends body n mod count. With a marker, each
-- body holds it once and every request puts "<tag>-<n>" in its place, so every request has a unique item id.
-- done() writes result.json in the folder: the counts, the latencies in microseconds, the errors by kind and
-- the answers by status code (a response() callback: one table increment per answer; wrk then also copies
-- each answer's headers and body into Lua, which is the cost of counting by code).

-- folder and statuses are globals: done() runs in wrk's main Lua state and reads them through thread:get.
folder, statuses = nil, {}
local tag, path
local fixed, heads, tails, types = {}, {}, {}, {}
local count, n = 0, 0 -- n: requests made so far (wrk makes one more to check the script before it starts)

local function read(name)
  local f = assert(io.open(name, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  folder, tag = args[1], args[2]
  local lines = {}
  for line in io.lines(folder .. "/requests.txt") do
    lines[#lines + 1] = line
  end
  path = lines[1]
  local marker = lines[2] ~= "-" and lines[2] or nil
  for i = 3, #lines do
    local body = read(string.format("%s/body-%03d", folder, count))
    count = count + 1
    if marker then
      local first, last = body:find(marker, 1, true)
      heads[count], tails[count], types[count] = body:sub(1, first - 1), body:sub(last + 1), lines[i]
    else
      fixed[count] = wrk.format("POST", path, { ["Content-Type"] = lines[i], ["Accept-Encoding"] = "identity" }, body)
    end
  end
end

function request()
  local i = n % count + 1
  n = n + 1
  if heads[i] == nil then
    return fixed[i]
  end
  local headers = { ["Content-Type"] = types[i], ["Accept-Encoding"] = "identity" }
  return wrk.format("POST", path, headers, heads[i] .. tag .. "-" .. (n - 1) .. tails[i])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local codes = {}
  for _, thread in ipairs(threads) do
    for code, k in pairs(thread:get("statuses")) do
      codes[#codes + 1] = string.format('"%d": %d', code, k)
    end
  end
  local e = summary.errors
  local out = assert(io.open(threads[1]:get("folder") .. "/result.json", "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "latency_us": {"p50": %.1f, "p99": %.1f, "mean": %.1f, "max": %.1f}, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.timeout, e.status, table.concat(codes, ", ")
  ))
  out:close()
end

-- wrk script for bench/ingest.py: each wrk thread posts batches of BATCH points round-robin to
-- the runs it was given, with steps that never repeat, so every point is new (the durable
-- insert path, not the idempotent no-op). Arguments: token, batch size, wrk threads, run ids.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  token = args[1]
  batch = tonumber(args[2])
  local all = {}
  local n = tonumber(args[3])
  for i = 4, #args do table.insert(all, args[i]) end
  -- Runs split between the threads so two threads never write the same (run, step).
  runs = {}
  for i = 1, #all do
    if (i - 1) % n == index then table.insert(runs, all[i]) end
  end
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Content-Type"] = "application/json"
  wrk.method = "POST"
end

function request()
  local run = runs[(counter % #runs) + 1]
  local first = math.floor(counter / #runs) * batch
  counter = counter + 1
  local points = {}
  for i = 0, batch - 1 do
    local step = first + i
    points[#points + 1] = string.format(
      '{"name":"train/loss","step":%d,"value":%.17g}', step, 1.0 / (1 + step))
  end
  local body = '{"points":[' .. table.concat(points, ",") .. ']}'
  return wrk.format(nil, "/api/v1/runs/" .. run .. "/metrics", nil, body)
end

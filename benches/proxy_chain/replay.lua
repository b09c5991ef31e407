-- wrk script of benches/proxy_chain.sh: replays the recorded API requests in corpus order.
--
--   wrk -s replay.lua URL -- REQUESTS_LUA NTHREADS
--
-- REQUESTS_LUA (written by chain.py prepare) returns a list of raw HTTP/1.1 requests: the recorded
-- method, target, headers and body. Each wrk thread walks the list round-robin from its own
-- offset (thread k of n starts at k/n of the way), so the threads do not send the same request at
-- the same time. wrk keeps no per-connection state for Lua, so the connections of one thread share
-- that thread's position. done() prints one WRK_RESULT line of JSON for chain.py.

local next_id = 0

function setup(thread)
   -- runs in the main Lua state, once per thread, before the thread's init()
   thread:set("thread_id", next_id)
   next_id = next_id + 1
end

local requests, n, pos

function init(args)
   requests = dofile(args[1])
   n = #requests
   local nthreads = tonumber(args[2]) or 1
   pos = math.floor(thread_id * n / nthreads)
end

function request()
   pos = pos % n + 1
   return requests[pos]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
      '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
      '"lat_p50_us": %d, "lat_p99_us": %d, "lat_mean_us": %.1f, "lat_max_us": %d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
      e.timeout, latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end

-- wrk script for bench/run.sh: bench/webhook.lua with a QUOTA, each thread
-- stopping once it has built its quota of deliveries (the memory phase).
dofile("bench/webhook.lua")

function response(status, headers, body)
  if quota_reached() then
    wrk.thread:stop()
  end
end

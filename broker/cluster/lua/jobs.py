"""The job log's scripts: the epoch (and its failover fence), the append, the load
(see :mod:`broker.cluster.lua` for the keys; :mod:`broker.cluster.redis_jobs` runs them).
"""

# The load script starts here: the epoch (KEYS[1]), made from ARGV[1] when Redis has
# none (it restarted empty), so seqs restart in a new epoch.
_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
"""

# The append script starts here: the epoch (KEYS[1]), made from ARGV[1] when Redis has
# none, or when the master the last append went to (KEYS[5], a replication ID) is not
# this one and this one was promoted from a replica: a failover. This master's ID is
# remembered for the next append.
_FENCED_EPOCH = """
local replication = redis.call('INFO', 'replication')
local replid = string.match(replication, 'master_replid:(%x+)') or ''
local replid2 = string.match(replication, 'master_replid2:(%x+)')
local promoted = replid2 ~= nil and replid2 ~= string.rep('0', #replid2)
local epoch = redis.call('GET', KEYS[1])
local master = redis.call('GET', KEYS[5])
if not epoch or (master and master ~= replid and promoted) then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
if master ~= replid then
  redis.call('SET', KEYS[5], replid)
end
"""

# KEYS: epoch, seq, log, status, master. ARGV: new epoch, keep, channel ('' = no
# PUBLISH: the caller publishes once replicas have the events), job id, idempotency key
# prefix (``P:idem:J|``), key TTL in ms (0: keys neither looked up nor remembered), then
# (type, head, tail, idempotency key or '') per event. An event whose key is remembered
# (or came earlier in this call) is not stored: it gets the key's seq. The others are
# sequenced, stored and (with a channel) published as one run, their keys set with the
# TTL. INCRBY runs even for 0 new events: it is a write Redis replicates, so a WAIT
# after this script covers the repeated keys' first events too (written earlier, maybe
# by another node). Returns {epoch, first seq of the new events}, plus, if some were
# repeats, one entry per event: the repeat's seq, or 0 for a new event; and, without a
# channel, {seq, type, payload} of each repeat's first event still in the stream in this
# epoch (for the caller to publish once its WAIT succeeds: see :mod:`broker.cluster.redis_jobs`).
APPEND = _FENCED_EPOCH + """
local count = (#ARGV - 6) / 4
local ttl = tonumber(ARGV[6])
local repeats = {}
local repeated = false
local again = {}
local fresh = {}
local position = {}
for i = 0, count - 1 do
  local key = ARGV[10 + 4 * i]
  local seen = nil
  if key ~= '' and ttl > 0 then
    local earlier = position[key]
    if earlier ~= nil then
      seen = -(earlier + 1)  -- the new event at that place in `fresh`: first + earlier
    else
      local stored = redis.call('GET', ARGV[5] .. key)
      if stored then
        seen = tonumber(stored)
        if ARGV[3] == '' then
          -- publishing is the caller's, after its WAIT: the first attempt may have been
          -- stored, answered 503 and never published; hand its event back (this epoch's
          -- only) so the caller publishes it once replicated (rooms drop a seq they had)
          local entry = redis.call('XRANGE', KEYS[3], stored .. '-0', stored .. '-0')
          if #entry == 1 and string.find(entry[1][2][4], '"epoch":"' .. epoch .. '"', 1, true) then
            again[#again + 1] = {stored, entry[1][2][2], entry[1][2][4]}
          end
        end
      else
        position[key] = #fresh
      end
    end
  end
  if seen == nil then
    repeats[i + 1] = 0
    fresh[#fresh + 1] = i
  else
    repeats[i + 1] = seen
    repeated = true
  end
end
local n = #fresh
local last = redis.call('INCRBY', KEYS[2], n)
local first = last - n + 1
if n > 0 then
  local message = {ARGV[4], epoch, tostring(first)}
  local status_seq, status_payload
  for j = 0, n - 1 do
    local i = fresh[j + 1]
    local seq = string.format('%d', first + j)
    local kind = ARGV[7 + 4 * i]
    local payload = ARGV[8 + 4 * i] .. seq .. ',"epoch":"' .. epoch .. '"' .. ARGV[9 + 4 * i]
    redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[2], seq .. '-0', 't', kind, 'p', payload)
    if kind == 'job_status' then
      status_seq = seq
      status_payload = payload
    end
    local key = ARGV[10 + 4 * i]
    if key ~= '' and ttl > 0 then
      redis.call('SET', ARGV[5] .. key, seq, 'PX', ttl)
    end
    message[#message + 1] = kind
    message[#message + 1] = payload
  end
  if status_seq then
    redis.call('HSET', KEYS[4], 's', status_seq, 'p', status_payload)
  end
  if ARGV[3] ~= '' then
    redis.call('PUBLISH', ARGV[3], table.concat(message, '\\n'))
  end
end
if not repeated then
  return {epoch, first}
end
for i = 1, count do
  if repeats[i] < 0 then
    repeats[i] = first - repeats[i] - 1
  end
end
return {epoch, first, repeats, again}
"""

# KEYS: epoch, seq, log, status. ARGV: new epoch, limit, after seq ('' = the newest
# `limit`). Returns {epoch, last seq, entries, {status seq, status payload}}.
LOAD = _EPOCH + """
local last = redis.call('GET', KEYS[2]) or '0'
local entries
if ARGV[3] == '' then
  entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[2])
else
  entries = redis.call('XRANGE', KEYS[3], '(' .. ARGV[3] .. '-0', '+', 'COUNT', ARGV[2])
end
return {epoch, last, entries, redis.call('HMGET', KEYS[4], 's', 'p')}
"""

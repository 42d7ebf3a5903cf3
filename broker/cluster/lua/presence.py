"""The presence scripts (see :mod:`broker.cluster.lua` for the keys;
:mod:`broker.cluster.redis_presence` runs them).
"""

# KEYS: presence hashes. ARGV: instance, channel, then (user, count) per key; a count
# of 0 removes the entry. Publishes the changed job ids (ARGV after the pairs).
PRESENCE_SET = """
for i = 1, #KEYS do
  local field = ARGV[1] .. '|' .. ARGV[2 * i + 1]
  local count = tonumber(ARGV[2 * i + 2])
  if count > 0 then
    redis.call('HSET', KEYS[i], field, count)
  else
    redis.call('HDEL', KEYS[i], field)
  end
end
local jobs = {}
for i = 2 * #KEYS + 3, #ARGV do
  jobs[#jobs + 1] = ARGV[i]
end
redis.call('PUBLISH', ARGV[2], table.concat(jobs, '\\n'))
return 1
"""

# KEYS: a presence hash. ARGV: node key prefix, this instance (its entries are left
# out: the caller adds its own, fresher counts). Entries of dead instances are dropped.
# Returns the users present on live instances (may repeat).
PRESENCE_READ = """
local entries = redis.call('HGETALL', KEYS[1])
local alive = {}
local users = {}
for i = 1, #entries, 2 do
  local instance, user = string.match(entries[i], '^(.-)|(.*)$')
  if instance ~= ARGV[2] then
    if alive[instance] == nil then
      alive[instance] = redis.call('EXISTS', ARGV[1] .. instance) == 1
    end
    if alive[instance] then
      users[#users + 1] = user
    else
      redis.call('HDEL', KEYS[1], entries[i])
    end
  end
end
return users
"""

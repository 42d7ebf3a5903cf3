"""``job.occupied`` / ``job.vacated`` across the cluster: which nodes' rooms of a job have
members (:mod:`broker.cluster.redis_occupancy` runs them).
"""

# -- job.occupied / job.vacated across the cluster (:mod:`broker.cluster.redis_occupancy`) ------------
#
# Keys (prefix ``P``, job ``J``, instance ``I``):
#
# * ``P:watchers:J``: hash instance -> '1' for each instance whose room of job J has
#   members (written when a room's member count crosses 0, not per member). The job
#   is occupied, as last announced, exactly while this hash has a field: each script
#   below that empties it or fills it answers so, and only that caller records the event.
# * ``P:watching:I``: the jobs with a field of instance I (so a sweep finds them).
# * ``P:watch-instances``: instances that may hold fields (sweepable once they die).
# * ``P:watch-swept:I``: exists (for a day) once instance I was swept as dead: its
#   fields are gone and their ``job.vacated`` recorded, so a missing field of I means
#   "swept", not "Redis lost it".

# KEYS: watchers hash, this instance's jobs set, instances set, this instance's swept
# marker. ARGV: this instance, '1' (the room got its first member) or '0' (it lost its
# last), job id. Returns 1 if that made the job occupied (the hash was empty) or
# vacated (the hash is empty now and held this instance's field), else 0. A leaving
# room whose field is missing counts as having had one unless the instance was swept
# (Redis restarted empty: the job was occupied and is vacated now).
OCCUPANCY_CHANGE = """
local mine = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
local others = redis.call('HLEN', KEYS[1]) - (mine and 1 or 0)
local swept = redis.call('EXISTS', KEYS[4]) == 1
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], '1')
  redis.call('SADD', KEYS[2], ARGV[3])
  if not swept then
    redis.call('SADD', KEYS[3], ARGV[1])
  end
  if others == 0 and not mine then
    return 1
  end
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[3])
if others == 0 and (mine or not swept) then
  return 1
end
return 0
"""

# KEYS: this instance's jobs set, instances set, this instance's swept marker.
# ARGV: this instance, watchers hash prefix, then the jobs whose room here has members.
# Writes this instance's fields again (after Redis restarted empty, or after this
# instance was swept while it was alive but could not renew its liveness key). A job
# whose hash was empty is announced occupied again only if the instance was swept
# (its vacated was recorded); after a loss of Redis's data it was never vacated.
# The marker stays: a field of this instance missing later can only have been swept
# (a loss of Redis's data takes the marker too). Returns the jobs that became occupied.
OCCUPANCY_RESTORE = """
local swept = redis.call('EXISTS', KEYS[3]) == 1
local occupied = {}
for i = 3, #ARGV do
  local hash = ARGV[2] .. ARGV[i]
  if redis.call('HLEN', hash) == 0 and swept then
    occupied[#occupied + 1] = ARGV[i]
  end
  redis.call('HSET', hash, ARGV[1], '1')
  redis.call('SADD', KEYS[1], ARGV[i])
end
redis.call('SADD', KEYS[2], ARGV[1])
return occupied
"""

# KEYS: instances set. ARGV: node key prefix, jobs set prefix, watchers hash prefix,
# swept marker prefix, marker TTL in ms. Each instance whose liveness key is gone is
# taken off the set (so exactly one caller sweeps it) and marked swept; its fields
# are removed, and the jobs whose hash that emptied are returned: their last watchers
# died with it (vacated).
OCCUPANCY_SWEEP = """
local vacated = {}
for _, instance in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. instance) == 0 then
    redis.call('SREM', KEYS[1], instance)
    redis.call('SET', ARGV[4] .. instance, '1', 'PX', ARGV[5])
    local set = ARGV[2] .. instance
    for _, job in ipairs(redis.call('SMEMBERS', set)) do
      local hash = ARGV[3] .. job
      if redis.call('HDEL', hash, instance) == 1 and redis.call('HLEN', hash) == 0 then
        vacated[#vacated + 1] = job
      end
    end
    redis.call('DEL', set)
  end
end
return vacated
"""

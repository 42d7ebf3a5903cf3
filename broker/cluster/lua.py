"""The Redis scripts of the cluster backplane.

Redis runs one script at a time, so each script is atomic: a job's seq, its history
stream, its latest status and the live PUBLISH change together, and publish order is
seq order on every subscriber. With ``appendfsync always`` a script's writes are on
disk before its reply is sent. With ``[cluster] min_replicas`` > 0 the append script
does not PUBLISH: the node WAITs for the replicas, then publishes the same message
itself (:mod:`.redis_jobs`), so nothing is delivered live before a replica has it.

Keys (prefix ``P``, job ``J``, user ``U``):

* ``P:epoch``: random id of this coordination state; made by whichever script finds it
  missing (Redis restarted empty), or by the append script that finds a new master:
  seqs of different epochs are unrelated.
* ``P:master``: the replication ID (``INFO replication`` ``master_replid``) of the
  master the last append was written to, read by the append script itself. A replica
  promoted to master (by Sentinel or by hand) takes a new replication ID and keeps the
  one it followed as ``master_replid2``; a master restarted on its AOF takes a new one
  too, with no ``master_replid2``. The append script starts a new epoch, before it gives
  any seq, when ``P:master`` is set, differs from its master's and that master was
  promoted: a failover (seqs continue from what the replica has). Events the old master
  stored but never replicated may have been seen through a stream read, the latest
  status or an idempotency repeat, and the new master gives their seqs to other events:
  ``(epoch, seq)`` still names one event, and a client resuming in the old epoch gets
  ``HISTORY_GAP``. A restart keeps the epoch. The ID, not the master's address: a
  failover back to the first master's address (its replica promoted, then the old
  master promoted again once it had become the new one's replica, with no append in
  between) is a change too, nodes that name one Redis by different addresses agree,
  and no node's view of where the master is can be stale. The load script only reads
  the epoch: a promoted master's stream holds only what was replicated.
* ``P:job:J:seq``: last seq; ``P:job:J:log``: stream of the newest events, entry id
  ``<seq>-0``, fields ``t`` (type) and ``p`` (the exact frame payload);
  ``P:job:J:status``: hash ``s`` (seq), ``p`` (payload) of the newest ``job_status``.
* ``P:idem:J|K``: seq of the event first published to job J with idempotency key K
  (expires after ``[jobs] idempotency_ttl``; ``|`` is in neither a job id nor a key).
* ``P:login:L``: hash session id -> node instance (``node_id/random``) of login L's live
  connections (L: ``user:<id>`` or ``token:<name>``).
* ``P:presence:J``: hash ``I|U`` -> connections of user U in job J on instance I.
* ``P:node:I``: exists while node instance I is alive (TTL, renewed by its heartbeat).
* ``P:instances``: every instance that has heartbeated and not been swept (webhooks);
  ``P:instance-logins:I``: the logins with an entry of instance I (added at claim,
  removed at the login's last release there), so a sweep finds a dead node's users.
* ``P:online:U`` (webhooks ``user.online``/``user.offline``): hash ``o`` ('1' while the
  last transition recorded for U was online), ``s`` (that transition's number: +1 per
  transition, so they alternate), ``b`` (the number the state began at, no transition
  itself: gap filling stops there). Begun at Redis ``TIME`` in microseconds, so a state
  begun after Redis lost its data (or after it expired, 24 h after going offline)
  numbers above every earlier one. ``P:user-transitions``: sorted set of transitions
  not yet acknowledged as written to the outbox, ``seq|on/off|b|U``, scored by the ms
  their lease ends (then a sweep hands them out again).

Live messages on channel ``P:jobs``: ``J \\n epoch \\n first_seq (\\n type \\n payload)*``
(compact JSON never contains a raw newline, job ids cannot); on ``P:evict``:
``instance \\n session (\\n instance \\n session)*``; on ``P:presence``: job ids
whose presence changed, one per line.
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
# repeats, one entry per event: the repeat's seq, or 0 for a new event.
APPEND = _FENCED_EPOCH + """
local count = (#ARGV - 6) / 4
local ttl = tonumber(ARGV[6])
local repeats = {}
local repeated = false
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
return {epoch, first, repeats}
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

# The user transitions the login scripts share: KEYS/ARGV are theirs, these take keys.
# `user_transition` makes the next transition of the user (state hash `state`): online
# or not, pending in `pending` until `due` (ms) and returned as its pending entry.
_USER_TRANSITIONS = """
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
local function begin_state(state, online)
  local now = redis.call('TIME')
  local base = string.format('%d', tonumber(now[1]) * 1000000 + tonumber(now[2]))
  redis.call('HSET', state, 's', base, 'b', base, 'o', online)
  return base
end
local function user_transition(state, pending, due, user, online)
  local base = redis.call('HGET', state, 'b')
  if not base then
    base = begin_state(state, '0')
  end
  local seq = redis.call('HINCRBY', state, 's', 1)
  local kind = 'off'
  if online then
    kind = 'on'
    redis.call('HSET', state, 'o', '1')
    redis.call('PERSIST', state)
  else
    redis.call('HSET', state, 'o', '0')
    redis.call('PEXPIRE', state, 86400000)
  end
  local member = string.format('%d', seq) .. '|' .. kind .. '|' .. base .. '|' .. user
  redis.call('ZADD', pending, due, member)
  return member
end
"""

# KEYS: login hash, evict channel, this instance's logins set, the user's state, the
# pending transitions. ARGV: node key prefix, this node, session, single ('1'/'0'),
# limit (-1: none), login name, lease ms (-1: no transitions: not a user, or webhooks
# without user events), user id. Drops entries of dead nodes; with single, takes over
# from every other session (they are announced on the evict channel); without, refuses
# beyond the limit. Returns {'ok'|'full', transitions, node, session, node, session...}
# (replaced ones): transitions (pending entries) are none, online (the user had no
# live entry and was offline), or offline then online (the state said online but every
# entry was on dead nodes).
CLAIM_LOGIN = _USER_TRANSITIONS + """
local limit = tonumber(ARGV[5])
local lease = tonumber(ARGV[7])
local was_online = lease >= 0 and redis.call('HGET', KEYS[4], 'o') == '1'
if ARGV[4] ~= '1' and not was_online and (limit < 0 or redis.call('HLEN', KEYS[1]) < limit) then
  -- the common case in O(1): no limit, or under it counting dead nodes' entries too
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[6])
  local transitions = {}
  if lease >= 0 then
    transitions[1] = user_transition(KEYS[4], KEYS[5], now_ms() + lease, ARGV[8], true)
  end
  return {'ok', transitions}
end
local entries = redis.call('HGETALL', KEYS[1])
local live = {}
local alive = {}
for i = 1, #entries, 2 do
  local session, node = entries[i], entries[i + 1]
  if alive[node] == nil then
    alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1
  end
  if alive[node] then
    live[#live + 1] = {session, node}
  else
    redis.call('HDEL', KEYS[1], session)
  end
end
local transitions = {}
local result = {'ok', transitions}
if ARGV[4] == '1' then
  local message = {}
  for _, entry in ipairs(live) do
    if entry[1] ~= ARGV[3] then
      redis.call('HDEL', KEYS[1], entry[1])
      result[#result + 1] = entry[2]
      result[#result + 1] = entry[1]
      message[#message + 1] = entry[2]
      message[#message + 1] = entry[1]
    end
  end
  if #message > 0 then
    redis.call('PUBLISH', KEYS[2], table.concat(message, '\\n'))
  end
elseif limit >= 0 and #live >= limit then
  return {'full', transitions}
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[6])
if lease >= 0 and (not was_online or #live == 0) then
  local due = now_ms() + lease
  if was_online then
    transitions[1] = user_transition(KEYS[4], KEYS[5], due, ARGV[8], false)
  end
  transitions[#transitions + 1] = user_transition(KEYS[4], KEYS[5], due, ARGV[8], true)
end
return result
"""

# KEYS: login hash, this instance's logins set, the user's state, the pending
# transitions. ARGV: this instance, login name, node key prefix, lease ms (-1: no
# transitions), user id, then session ids. Removes them (the hash goes when empty); the
# login leaves the instance's set when none of its entries is this instance's any more.
# Returns the transitions: offline when the state said online and no entry on a live
# instance is left.
RELEASE_LOGIN = _USER_TRANSITIONS + """
for i = 6, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
local instances = redis.call('HVALS', KEYS[1])
local mine = false
for _, instance in ipairs(instances) do
  if instance == ARGV[1] then
    mine = true
    break
  end
end
if not mine then
  redis.call('SREM', KEYS[2], ARGV[2])
end
local lease = tonumber(ARGV[4])
if lease < 0 or redis.call('HGET', KEYS[3], 'o') ~= '1' then
  return {}
end
for _, instance in ipairs(instances) do
  if redis.call('EXISTS', ARGV[3] .. instance) == 1 then
    return {}
  end
end
return {user_transition(KEYS[3], KEYS[4], now_ms() + lease, ARGV[5], false)}
"""

# KEYS: the instances set, the pending transitions. ARGV: node key prefix,
# instance-logins set prefix, login hash prefix, user state prefix, lease ms, how many
# expired transitions to hand out again at most. First the pending transitions whose
# lease ended (their recorder died or failed) are leased to this caller again. Then
# each instance whose liveness key is gone is taken off the set (so exactly one caller
# sweeps it); its logins lose every entry of a dead instance, and each user left with
# no entry on a live instance while its state said online goes offline. Returns the
# pending entries handed to this caller (it acknowledges each once written).
SWEEP_DEAD = _USER_TRANSITIONS + """
local now = now_ms()
local due = now + tonumber(ARGV[5])
local handed = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))) do
  redis.call('ZADD', KEYS[2], due, member)
  handed[#handed + 1] = member
end
local alive = {}
for _, instance in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. instance) == 0 then
    redis.call('SREM', KEYS[1], instance)
    local set = ARGV[2] .. instance
    for _, login in ipairs(redis.call('SMEMBERS', set)) do
      local hash = ARGV[3] .. login
      local entries = redis.call('HGETALL', hash)
      local live = 0
      for j = 1, #entries, 2 do
        local node = entries[j + 1]
        if alive[node] == nil then
          alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1
        end
        if alive[node] then
          live = live + 1
        else
          redis.call('HDEL', hash, entries[j])
        end
      end
      if live == 0 and string.sub(login, 1, 5) == 'user:' then
        local user = string.sub(login, 6)
        local state = ARGV[4] .. user
        if redis.call('HGET', state, 'o') == '1' then
          handed[#handed + 1] = user_transition(state, KEYS[2], due, user, false)
        end
      end
    end
    redis.call('DEL', set)
  end
end
return handed
"""

# KEYS: the instances set, this instance's logins set, the pending transitions, then
# login hashes. ARGV: this node, login hash prefix, user state prefix ('': no
# transitions), then (session, single '1'/'0') per login hash. After a pub/sub outage: a
# session whose entry is gone while another of its (single-login) user holds one was
# replaced meanwhile; any other missing entry is written back (Redis lost it, or a
# sweep took it while this node's liveness key had lapsed). This instance and its
# logins are added back to the sets a sweep reads. A user written back whose state is
# gone (Redis lost it) is online again without a transition (the receiver was told so
# already); one whose state says offline (swept) goes online, pending with its lease
# already ended, so the next sweep records it. Returns the sessions that were replaced.
RECONCILE_LOGINS = _USER_TRANSITIONS + """
redis.call('SADD', KEYS[1], ARGV[1])
local replaced = {}
local now = nil
for i = 4, #KEYS do
  local session, single = ARGV[2 * (i - 3) + 2], ARGV[2 * (i - 3) + 3]
  local login = string.sub(KEYS[i], #ARGV[2] + 1)
  if redis.call('HEXISTS', KEYS[i], session) == 1 then
    redis.call('SADD', KEYS[2], login)
  elseif single == '1' and redis.call('HLEN', KEYS[i]) > 0 then
    replaced[#replaced + 1] = session
  else
    redis.call('HSET', KEYS[i], session, ARGV[1])
    redis.call('SADD', KEYS[2], login)
    if ARGV[3] ~= '' and string.sub(login, 1, 5) == 'user:' then
      local user = string.sub(login, 6)
      local state = ARGV[3] .. user
      local online = redis.call('HGET', state, 'o')
      if not online then
        begin_state(state, '1')
      elseif online ~= '1' then
        now = now or now_ms()
        user_transition(state, KEYS[3], now, user, true)
      end
    end
  end
end
return replaced
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

# KEYS: login hashes of users (``P:login:user:U``). ARGV: node key prefix. Returns 1/0 per user: has a
# connection on a live instance.
USERS_ONLINE = """
local alive = {}
local result = {}
for i = 1, #KEYS do
  local entries = redis.call('HGETALL', KEYS[i])
  local online = 0
  for j = 2, #entries, 2 do
    local instance = entries[j]
    if alive[instance] == nil then
      alive[instance] = redis.call('EXISTS', ARGV[1] .. instance) == 1
    end
    if alive[instance] then
      online = 1
      break
    end
  end
  result[i] = online
end
return result
"""

# -- job.occupied / job.vacated across the cluster (:mod:`.redis_occupancy`) ------------
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

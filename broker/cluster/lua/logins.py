"""The login scripts: claims, releases, the reconcile, who is online, and the user
transitions they decide (see :mod:`broker.cluster.lua` for the keys;
:mod:`broker.cluster.redis_logins` runs them).
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

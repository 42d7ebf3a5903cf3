"""Operator control in a cluster (Redis): see :mod:`.control`.

Keys (prefix ``P``, user ``U``, node instance ``I``):

* ``P:ban:U``: exists while U is banned (TTL: the ban's length, kept by Redis, so no
  node's clock decides when it ends); ``P:bans``: set of users that may be banned.
* ``P:stats``: hash ``I`` -> the JSON stats node instance I wrote last (every
  STATS_INTERVAL); entries of instances whose liveness key ``P:node:I`` is gone are
  dropped when read.

The channel ``P:control`` carries disconnects and lifted bans as JSON. Each node
follows it on a pub/sub connection of its own, with its own reconnect loop: after
(re)subscribing it reads every ban in force and evicts its connections of banned
users, so a ban sent while a node was not listening still takes effect. A disconnect
*without* a ban reaches only the nodes listening at that moment (nothing is left to
resend): use ``banSeconds`` when it must hold.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..config.loader import ClusterConfig
from ..hub.connections import Hub
from ..protocols import CloseCode
from .control import Bans, StatsSampler, UserConnections, close_local, sample_forever
from .interface import BackplaneUnavailable
from .redis_master import MasterLocator
from .redis_node import FAILURES, describe, redis_client, replicated

log = logging.getLogger("broker.control")

STATS_INTERVAL = 2.0  # seconds between this node's stats written for the others

# KEYS: ban key, bans set. ARGV: user, ttl ms.
BAN = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS: ban key, bans set. ARGV: user. Returns 1 if a ban was in force.
UNBAN = """
local existed = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return existed
"""

# KEYS: bans set. ARGV: ban key prefix. Returns {user, ms left, ...}; forgets ended bans.
BANS_READ = """
local result = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local left = redis.call('PTTL', ARGV[1] .. user)
  if left > 0 then
    result[#result + 1] = user
    result[#result + 1] = left
  else
    redis.call('SREM', KEYS[1], user)
  end
end
return result
"""

# KEYS: a login hash (``P:login:user:U``). ARGV: node key prefix. Returns the live
# instance of each of U's sessions.
USER_INSTANCES = """
local alive = {}
local result = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 2, #entries, 2 do
  local instance = entries[i]
  if alive[instance] == nil then
    alive[instance] = redis.call('EXISTS', ARGV[1] .. instance) == 1
  end
  if alive[instance] then
    result[#result + 1] = instance
  end
end
return result
"""

# KEYS: stats hash. ARGV: node key prefix. Returns the stats of live instances; drops the others.
STATS_READ = """
local result = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if redis.call('EXISTS', ARGV[1] .. entries[i]) == 1 then
    result[#result + 1] = entries[i + 1]
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
return result
"""


class RedisControl:
    """``locator``: the node's, with Sentinel (this client's pool follows the same
    master); with Sentinel and none given, one of its own runs inside :meth:`open`."""

    def __init__(self, config: ClusterConfig, node_id: str, instance: str, hub: Hub,
                 locator: MasterLocator | None = None) -> None:
        self.config = config
        self._node_id = node_id
        self._instance = instance
        self._hub = hub
        prefix = config.key_prefix
        self._channel = f"{prefix}:control"
        self._bans_key = f"{prefix}:bans"
        self._ban_prefix = f"{prefix}:ban:"
        self._stats_key = f"{prefix}:stats"
        self._node_key_prefix = f"{prefix}:node:"  # the backplane's liveness keys
        self._login_prefix = f"{prefix}:login:user:"
        self._own_locator = MasterLocator(config) if config.uses_sentinel and locator is None else None
        self._locator = locator or self._own_locator
        self._client = redis_client(config, self._locator)
        self._follow_scope: trio.CancelScope | None = None
        self._moved = trio.Event()  # set when the master moves: the feed skips its backoff
        if self._locator is not None:
            self._locator.on_moved(self._master_moved)
        self._ban = self._client.register_script(BAN)
        self._unban = self._client.register_script(UNBAN)
        self._bans_read = self._client.register_script(BANS_READ)
        self._user_instances = self._client.register_script(USER_INSTANCES)
        self._stats_read = self._client.register_script(STATS_READ)
        self._bans = Bans()
        self._stats: StatsSampler | None = None
        self.following = False  # subscribed to the control channel (tests wait for it)

    @asynccontextmanager
    async def open(self, stats: StatsSampler) -> AsyncIterator[None]:
        self._stats = stats
        async with self._client, trio.open_nursery() as nursery:
            if self._own_locator is not None:
                nursery.start_soon(self._own_locator.run)
            nursery.start_soon(sample_forever, stats)
            nursery.start_soon(self._follow_loop)
            nursery.start_soon(self._stats_loop, stats)
            yield
            nursery.cancel_scope.cancel()

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except FAILURES as exc:
            self._failed()
            raise BackplaneUnavailable(f"redis: {describe(exc)}") from None
        except RuntimeError as exc:  # coredis: the client has closed (the broker is stopping)
            raise BackplaneUnavailable(f"redis client closed: {exc}") from None

    # -- the control feed ----------------------------------------------------

    async def _follow_loop(self) -> None:
        """Follow the control channel; reconnect with backoff and jitter when it fails."""
        delay = 0.05
        while True:
            try:
                await self._follow()
            except* (*FAILURES, BackplaneUnavailable) as group:
                self._failed()
                if self.following:
                    delay = 0.05
                    log.warning("node %s: control feed lost (%s); reconnecting", self._node_id, describe(group))
                else:
                    delay = min(delay * 2, self.config.reconnect_max_delay)
                self.following = False
            with trio.move_on_after(delay * (0.5 + secrets.randbelow(1000) / 1000)):
                await self._moved.wait()  # a new master: subscribe there now
            self._moved = trio.Event()

    def _failed(self) -> None:
        """A command or connection failed: with Sentinel, look for the master again."""
        if self._locator is not None:
            self._locator.suspect()

    def _master_moved(self) -> None:
        """Sentinel named another master: follow the channel there (sync)."""
        if self._follow_scope is not None:
            self._follow_scope.cancel()
        self._moved.set()

    async def _follow(self) -> None:
        with trio.CancelScope() as self._follow_scope:
            await self._subscribed()
        raise BackplaneUnavailable("the redis master moved")  # the scope was cancelled by a move

    async def _subscribed(self) -> None:
        async with self._client.pubsub(channels=[self._channel], retry_policy=None,
                                       ignore_subscribe_messages=True) as pubsub:
            # subscribed: nothing sent from now on is missed; read what is in force
            entries = await self._call(self._bans_read, [self._bans_key], [self._ban_prefix])
            self._bans.replace({entries[i].decode(): int(entries[i + 1]) / 1000 for i in range(0, len(entries), 2)})
            for user in self._bans.users():  # banned while this node was not listening
                close_local(self._hub, user, CloseCode.DISCONNECTED, "disconnected by the application (banned)")
            self.following = True
            while True:
                message = await pubsub.get_message()
                if message is not None and isinstance(message["data"], bytes):
                    self._apply(message["data"])

    def _apply(self, data: bytes) -> None:
        """A control message (sync: a ban and its evictions happen in one step)."""
        try:
            message = json.loads(data)
            user = message["user"]
            if message["op"] == "disconnect":
                if message.get("banMs"):
                    self._bans.ban(user, message["banMs"] / 1000)
                close_local(self._hub, user, int(message["code"]), str(message["reason"]))
            elif message["op"] == "unban":
                self._bans.lift(user)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("node %s: bad control message ignored: %s", self._node_id, exc)

    # -- stats ---------------------------------------------------------------

    async def _stats_loop(self, stats: StatsSampler) -> None:
        """Write this node's stats for the others every STATS_INTERVAL; a failure is
        retried at the next one (the stats are a view, not a record)."""
        while True:
            try:
                await self._client.hset(self._stats_key, {self._instance: json.dumps(stats.snapshot())})
            except (*FAILURES, RuntimeError) as exc:
                log.debug("node %s: stats not written: %s", self._node_id, describe(exc))
            await trio.sleep(STATS_INTERVAL)

    async def node_stats(self) -> list[dict[str, Any]]:
        mine = self._stats.snapshot() if self._stats is not None else None
        entries = await self._call(self._stats_read, [self._stats_key], [self._node_key_prefix])
        others = []
        for entry in entries:
            try:
                stats = json.loads(entry)
            except ValueError:
                continue
            if isinstance(stats, dict) and (mine is None or stats.get("node") != mine.get("node")):
                others.append(stats)
        others.sort(key=lambda s: str(s.get("node")))
        return ([mine] if mine is not None else []) + others

    # -- users -----------------------------------------------------------------

    def banned(self, user_id: str) -> bool:
        return self._bans.banned(user_id)

    async def user_connections(self, user_id: str) -> UserConnections:
        instances = await self._call(self._user_instances, [self._login_prefix + user_id], [self._node_key_prefix])
        nodes = sorted({instance.decode().rsplit("/", 1)[0] for instance in instances})
        return UserConnections(len(instances), nodes)

    async def disconnect_user(self, user_id: str, code: int, reason: str, ban_seconds: float | None) -> None:
        """This node acts at once; the others when the message reaches them (this one
        gets it too: applying it twice changes nothing)."""
        ban_ms = round(ban_seconds * 1000) if ban_seconds else 0
        if ban_ms:
            self._bans.ban(user_id, ban_seconds or 0)
        close_local(self._hub, user_id, code, reason)
        if ban_ms:  # with min_replicas, answered once the replicas have it: a failover keeps the ban
            with replicated(self._client, self.config):
                await self._call(self._ban, [self._ban_prefix + user_id, self._bans_key], [user_id, ban_ms])
        message = {"op": "disconnect", "user": user_id, "code": code, "reason": reason, "banMs": ban_ms}
        await self._publish(message)

    async def lift_ban(self, user_id: str) -> bool:
        with replicated(self._client, self.config):  # a lifted ban a failover brought back would hold again
            existed = await self._call(self._unban, [self._ban_prefix + user_id, self._bans_key], [user_id])
        lifted_here = self._bans.lift(user_id)
        await self._publish({"op": "unban", "user": user_id})
        return bool(existed) or lifted_here

    async def _publish(self, message: dict[str, Any]) -> None:
        try:
            await self._client.publish(self._channel, json.dumps(message))
        except FAILURES as exc:
            self._failed()
            raise BackplaneUnavailable(f"redis: {describe(exc)}") from None
        except RuntimeError as exc:
            raise BackplaneUnavailable(f"redis client closed: {exc}") from None

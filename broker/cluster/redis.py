"""The cluster backplane on Redis: the roles of a node over one shared connection.

:class:`RedisBackplane` wires the roles, each in a module of its own, onto one
:class:`~.redis_node.RedisNode` (the coredis client, the pub/sub feed that hands each
role its channels' messages, the liveness heartbeat):

* :class:`~.redis_jobs.RedisJobLog`: job events sequenced and stored by one script per
  publish batch, several in flight on a writer connection, live to every node;
* :class:`~.redis_presence.RedisPresence`: who is in each job, on every live node;
* :class:`~.redis_logins.RedisLogins`: cluster-wide single login, limits, who is online;
* :class:`~.redis_chat.RedisChatBus`: chat batches and group changes to every node;
* :class:`~.redis_occupancy.RedisOccupancy`: whether a job has watchers on any node
  (``job.occupied`` / ``job.vacated``, each change decided for one node).

The Lua scripts are in :mod:`.lua`. Commands that fail raise
:class:`~.interface.BackplaneUnavailable` (a publish is then answered 503, never 200).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..config.loader import ClusterConfig
from .interface import ChatFeed, Evictor, JobFeed, PresenceFeed
from .redis_chat import RedisChatBus
from .redis_jobs import RedisJobLog
from .redis_logins import RedisLogins
from .redis_node import RedisNode
from .redis_node import probe_redis as probe_redis
from .redis_occupancy import RedisOccupancy
from .redis_presence import RedisPresence


class RedisBackplane:
    clustered = True

    def __init__(self, config: ClusterConfig, idempotency_ttl: float = 300.0) -> None:
        self.node = RedisNode(config)
        self.node_id = self.node.node_id
        self.instance = self.node.instance
        self.job_log = RedisJobLog(self.node, idempotency_ttl)
        self.presence = RedisPresence(self.node)
        self.logins = RedisLogins(self.node)
        self.chat_bus = RedisChatBus(self.node)
        self.occupancy = RedisOccupancy(self.node)
        # after a reconnect the roles catch up in this order: job rooms read what they
        # missed, presence is written again, logins are reconciled
        for role in (self.job_log, self.presence, self.logins, self.chat_bus):
            self.node.add_role(role)
        self.node.add_role(self.occupancy)  # its fields written back after the others caught up

    @property
    def reconnects(self) -> int:
        """Times the feed was lost and subscribed again."""
        return self.node.reconnects

    @asynccontextmanager
    async def open(self, jobs: JobFeed, presence: PresenceFeed, evictor: Evictor,
                   chat: ChatFeed) -> AsyncIterator[None]:
        """The node's loops run inside (:meth:`RedisNode.open`), each role pushing what
        other nodes did into its feed."""
        self.job_log.feed, self.presence.feed, self.logins.evictor, self.chat_bus.feed = jobs, presence, evictor, chat
        async with self.node.open():
            yield

    def problem(self) -> str | None:
        return self.node.problem()

    def redis_location(self) -> dict[str, Any] | None:
        return self.node.location()

    @property
    def master_address(self) -> str | None:
        """``host:port`` of the Redis master this node writes to now (see
        :attr:`RedisNode.master_address`): a failover changes it."""
        return self.node.master_address

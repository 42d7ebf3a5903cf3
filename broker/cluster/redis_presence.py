"""Presence on Redis: who is in each job, on every live node.

Each node counts its own connections per job and user, and writes only arrivals and
departures (a user's first connection in a job on this node, its last) to a hash per
job, field per (instance, user), all pending changes in one script that also
announces the jobs on the presence channel; what fails stays pending and is retried.
Reading a job's list skips the entries of nodes whose liveness key expired, so after
each heartbeat (and after a reconnect, when this node writes its presence again in
case Redis lost it) rooms with watchers look again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from . import lua
from .interface import BackplaneUnavailable, PresenceFeed
from .redis_node import RedisNode, RedisRole

PRESENCE_BATCH = 500


class RedisPresence(RedisRole):
    clustered = True

    def __init__(self, node: RedisNode) -> None:
        self._node = node
        self._prefix = node.prefix
        self.channel = f"{self._prefix}:presence"
        self._set = node.register_script(lua.PRESENCE_SET)
        self._read = node.register_script(lua.PRESENCE_READ)
        self.feed: PresenceFeed | None = None  # set while the backplane is open
        self._presence: dict[str, Counter[str]] = {}  # job -> user -> connections here
        self._dirty: set[tuple[str, str]] = set()  # (job, user) not yet written to Redis
        self._wake = trio.Event()

    def presence_update_nowait(self, job_id: str, user_id: str, delta: int) -> None:
        users = self._presence.setdefault(job_id, Counter())
        before = users[user_id]
        users[user_id] += delta
        if users[user_id] <= 0:
            del users[user_id]
            if not users:
                del self._presence[job_id]
        if (before > 0) != (users.get(user_id, 0) > 0):  # only arrivals and departures travel
            self._dirty.add((job_id, user_id))
            self._wake.set()

    async def job_presence(self, job_id: str) -> set[str]:
        node = self._node
        others = await node.call(self._read, [f"{self._prefix}:presence:{job_id}"],
                                 [node.node_key_prefix, node.instance])
        return {user.decode() for user in others} | set(self._presence.get(job_id, ()))

    async def run(self) -> None:
        """Write this node's presence changes to Redis, all pending ones in one script,
        and announce them; what fails stays pending and is retried."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._dirty:
                batch = list(self._dirty)[:PRESENCE_BATCH]
                self._dirty.difference_update(batch)
                keys = [f"{self._prefix}:presence:{job}" for job, _ in batch]
                args: list[Any] = [self._node.instance, self.channel]
                for job, user in batch:
                    args += [user, self._presence.get(job, Counter()).get(user, 0)]
                args += sorted({job for job, _ in batch})
                try:
                    await self._node.call(self._set, keys, args)
                except BackplaneUnavailable:
                    self._dirty.update(batch)
                    await trio.sleep(0.2)

    # -- the node's loops ------------------------------------------------------

    def channels(self) -> dict[str, Callable[[bytes], None]]:
        return {self.channel: self._on_changed}

    def _on_changed(self, data: bytes) -> None:
        if self.feed is not None:
            self.feed.presence_changed([job.decode() for job in data.split(b"\n") if job])

    async def resubscribed(self) -> None:
        """Write this node's presence again (Redis may have lost it), and look again."""
        self._dirty.update((job, user) for job, users in self._presence.items() for user in users)
        self._wake.set()
        if self.feed is not None:
            self.feed.presence_changed_all()

    def after_heartbeat(self) -> None:
        """A node whose liveness key expired has left every list: rooms with watchers look
        again, so a killed node is gone from every list within ``node_ttl``."""
        if self.feed is not None:
            self.feed.presence_changed_all()

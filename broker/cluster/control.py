"""Operator control through the backplane: a user's connections, disconnect and ban
on every node, and every live node's stats (the server API, docs/PROTOCOL.md
section 8).

Kept apart from the job log, presence and login roles on purpose: two
implementations behind one small Protocol, chosen with the backplane
(:func:`open_control`): :class:`LocalControl` (one process: the hub) and
:class:`~broker.cluster.redis_control.RedisControl` (a cluster).

Bans are checked on every login without a round trip: each node keeps the bans in
force in memory (:meth:`Control.banned` is sync), filled from the backplane when it
(re)connects and kept current by the disconnect messages. A login checks the ban in
the same step (no ``await``) as it routes the user to its connection, and a
disconnect evicts every routed connection in one step too, so a connection is
either refused or evicted, never left open past a ban.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ..hub.connections import Hub

if TYPE_CHECKING:
    pass

DISCONNECT_METRIC = "disconnected"  # the evictions metric's label for a disconnect through the API
SAMPLE_INTERVAL = 1.0  # seconds between samples of a node's counters (its per-second rates)

NodeStats = Callable[[], dict[str, Any]]  # this node's stats now (a JSON object)


@attrs.frozen
class UserConnections:
    connections: int  # on every live node
    nodes: list[str]  # node ids holding them, sorted


class StatsSampler(Protocol):
    """What the control loop drives: a sample of the counters every SAMPLE_INTERVAL,
    and the node's stats on demand."""

    def sample(self) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


class Control(Protocol):
    def open(self, stats: StatsSampler) -> AbstractAsyncContextManager[None]:
        """Background work (sampling; in a cluster, the control feed and the stats
        written for the other nodes) for the duration of the block."""
        ...

    def banned(self, user_id: str) -> bool:
        """Whether ``user_id`` may not open a connection now (sync, no round trip)."""
        ...

    async def user_connections(self, user_id: str) -> UserConnections: ...

    async def disconnect_user(self, user_id: str, code: int, reason: str, ban_seconds: float | None) -> None:
        """Close every connection of ``user_id`` on every node with ``code``; with
        ``ban_seconds``, refuse its new connections that long, on every node. Raises
        BackplaneUnavailable if the cluster could not be told (then nothing was done
        on the other nodes; this node's connections are closed anyway)."""
        ...

    async def lift_ban(self, user_id: str) -> bool:
        """End ``user_id``'s ban everywhere; False if there was none."""
        ...

    async def node_stats(self) -> list[dict[str, Any]]:
        """The stats of every live node (this one first)."""
        ...


class Bans:
    """The bans in force on this node: user -> end (trio clock). Expired ones are
    forgotten when looked at."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def banned(self, user_id: str) -> bool:
        until = self._until.get(user_id)
        if until is None:
            return False
        if until <= trio.current_time():
            del self._until[user_id]
            return False
        return True

    def ban(self, user_id: str, seconds: float) -> None:
        self._until[user_id] = trio.current_time() + seconds

    def lift(self, user_id: str) -> bool:
        return self._until.pop(user_id, None) is not None

    def replace(self, bans: dict[str, float]) -> None:
        """The bans the cluster holds (user -> seconds left), replacing what was known."""
        now = trio.current_time()
        self._until = {user: now + seconds for user, seconds in bans.items()}

    def users(self) -> list[str]:
        return [user for user in list(self._until) if self.banned(user)]


def close_local(hub: Hub, user_id: str, code: int, reason: str) -> int:
    """Evict every connection of ``user_id`` on this node, proxy-route relays included
    (sync); how many."""
    sessions = hub.connections_of(user_id)
    for session in sessions:
        session.evict(code, reason, DISCONNECT_METRIC)
    return len(sessions)


async def sample_forever(stats: StatsSampler) -> None:
    """Sample the node's counters every SAMPLE_INTERVAL (its per-second rates)."""
    while True:
        stats.sample()
        await trio.sleep(SAMPLE_INTERVAL)


class LocalControl:
    """One process: the hub holds every connection, the bans live here."""

    def __init__(self, hub: Hub, node_id: str) -> None:
        self._hub = hub
        self._node_id = node_id
        self._bans = Bans()
        self._stats: StatsSampler | None = None

    @asynccontextmanager
    async def open(self, stats: StatsSampler) -> AsyncIterator[None]:
        self._stats = stats
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_forever, stats)
            yield
            nursery.cancel_scope.cancel()

    def banned(self, user_id: str) -> bool:
        return self._bans.banned(user_id)

    async def user_connections(self, user_id: str) -> UserConnections:
        count = len(self._hub.sessions_of(user_id))
        return UserConnections(count, [self._node_id] if count else [])

    async def disconnect_user(self, user_id: str, code: int, reason: str, ban_seconds: float | None) -> None:
        if ban_seconds:
            self._bans.ban(user_id, ban_seconds)  # first: nothing can log in between
        close_local(self._hub, user_id, code, reason)

    async def lift_ban(self, user_id: str) -> bool:
        return self._bans.lift(user_id)

    async def node_stats(self) -> list[dict[str, Any]]:
        return [self._stats.snapshot()] if self._stats is not None else []


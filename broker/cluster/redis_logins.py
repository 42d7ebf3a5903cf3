"""Logins on Redis: cluster-wide single login, per-user connection counts, who is online.

A login entry per (login, session), naming the node instance that holds it: entries
of a node whose liveness key expired (:mod:`.redis_node`) stop counting. A login that
takes over from the user's sessions on other nodes publishes their ids on the evict
channel; each node closes its own. Evict messages sent while a node was not listening
are lost, so after (re)subscribing it reconciles its sessions with Redis. A release
that fails (Redis unreachable) is retried with the heartbeat.

User transitions (webhooks ``user.online`` / ``user.offline``, when
:attr:`RedisLogins.track_users` is set): the claim script says whether this claim made
the user go from no live entry to one, the release script whether it removed the
user's last live entry, the sweep whether a dead node took the user's last one; each
script also numbers the transition (per user, +1 each: they alternate) and leaves it
pending in Redis with a lease (the node's ``node_ttl``). Redis runs one script at a
time, so exactly one caller is given each transition. The caller records it in the
outbox, then acknowledges it (:meth:`RedisLogins.transitions_recorded`); a transition
whose lease ends unacknowledged (its node died, its store write failed) is handed out
again by the next sweep, on any node.

For sweeps after a node dies (kill -9): each instance's heartbeat adds it to the
instances set, each claim adds the login to the instance's logins set (removed at its
last release there), and :meth:`RedisLogins.sweep_dead_nodes` hands each dead
instance's orphaned users to one caller in the cluster. After Redis lost its data, the
reconcile on resubscribe writes both sets back with the entries.
"""

from __future__ import annotations

from collections.abc import Callable

from . import lua
from .interface import BackplaneUnavailable, Evictor, LoginClaim, UserTransition
from .redis_node import RedisNode, RedisRole, replicated

MAX_PENDING_RELEASES = 100_000
RECONCILE_CHUNK = 500
REDO_MAX = 1000  # transitions whose lease ended, handed out again per sweep at most


class RedisLogins(RedisRole):
    clustered = True

    def __init__(self, node: RedisNode) -> None:
        self._node = node
        self._prefix = node.prefix
        self.channel = f"{self._prefix}:evict"
        self._claim = node.register_script(lua.CLAIM_LOGIN)
        self._release = node.register_script(lua.RELEASE_LOGIN)
        self._reconcile = node.register_script(lua.RECONCILE_LOGINS)
        self._users_online = node.register_script(lua.USERS_ONLINE)
        self._sweep = node.register_script(lua.SWEEP_DEAD)
        self._instances_key = f"{self._prefix}:instances"
        self._my_logins_key = f"{self._prefix}:instance-logins:{node.instance}"
        self._pending_key = f"{self._prefix}:user-transitions"
        self._state_prefix = f"{self._prefix}:online:"
        self._lease_ms = int(node.config.node_ttl * 1000)
        self.track_users = False  # user transitions numbered and handed out (webhooks want user events)
        self.evictor: Evictor | None = None  # set while the backplane is open
        self._logins: dict[str, tuple[str, bool]] = {}  # session -> (login, single): this node's claims
        self._pending_releases: set[tuple[str, str]] = set()  # (login, session) to remove once reachable

    def _key(self, login: str) -> str:
        return f"{self._prefix}:login:{login}"

    def _user_args(self, login: str) -> tuple[str, str, int]:
        """(state key, user id, lease ms: -1 when the login has no user transitions)."""
        user = login[5:] if login.startswith("user:") else ""
        tracked = self.track_users and login.startswith("user:")
        return self._state_prefix + user, user, self._lease_ms if tracked else -1

    async def claim_login(self, login: str, session_id: str, single: bool, limit: int | None) -> LoginClaim:
        """Record the session's login; with ``min_replicas``, only once that many replicas
        have the entry (a failover then keeps it, so a later login of a single-login
        user still finds and replaces it). BackplaneUnavailable if Redis (or its
        replicas) did not confirm: the caller closes the connection 1013; the entry the
        master may hold is released first."""
        node = self._node
        state, user, lease = self._user_args(login)
        try:
            with replicated(node.client, node.config):
                result = await node.call(
                    self._claim, [self._key(login), self.channel, self._my_logins_key, state, self._pending_key],
                    [node.node_key_prefix, node.instance, session_id, "1" if single else "0",
                     -1 if limit is None else limit, login, lease, user],
                )
        except BackplaneUnavailable:
            if node.config.min_replicas > 0:
                # the master may have the entry without the replicas: take it back (a
                # transition this makes is handed out by a sweep once its lease ends)
                await self.release_login(login, session_id)
            raise
        transitions = [UserTransition.from_pending(entry) for entry in result[1]]
        if result[0] == b"full":
            return LoginClaim(False)
        self._logins[session_id] = (login, single)
        local = [result[i + 1].decode() for i in range(2, len(result) - 1, 2) if result[i].decode() == node.instance]
        return LoginClaim(True, local, transitions)

    def _release_args(self, login: str, session_id: str) -> tuple[list[str], list[str | int]]:
        state, user, lease = self._user_args(login)
        return ([self._key(login), self._my_logins_key, state, self._pending_key],
                [self._node.instance, login, self._node.node_key_prefix, lease, user, session_id])

    async def release_login(self, login: str, session_id: str) -> list[UserTransition]:
        """Forget the session's entry; if Redis is unreachable, retried by the heartbeat
        (a transition that retry makes is recorded by a sweep once its lease ends)."""
        self._logins.pop(session_id, None)
        try:
            entries = await self._node.call(self._release, *self._release_args(login, session_id))
        except BackplaneUnavailable:
            if len(self._pending_releases) < MAX_PENDING_RELEASES:
                self._pending_releases.add((login, session_id))
            return []
        return [UserTransition.from_pending(entry) for entry in entries]

    async def users_online(self, user_ids: list[str]) -> list[str]:
        if not user_ids:
            return []
        flags = await self._node.call(self._users_online, [self._key(f"user:{u}") for u in user_ids],
                                      [self._node.node_key_prefix])
        return [user for user, online in zip(user_ids, flags, strict=True) if online]

    async def sweep_dead_nodes(self) -> list[UserTransition]:
        """Offline transitions of users whose last connection was on a node that died
        (its liveness key expired, so within ``node_ttl``), and transitions whose lease
        ended unacknowledged: each leased to this caller (one script: one caller in the
        whole cluster at a time). Raises BackplaneUnavailable."""
        entries = await self._node.call(
            self._sweep, [self._instances_key, self._pending_key],
            [self._node.node_key_prefix, f"{self._prefix}:instance-logins:", f"{self._prefix}:login:",
             self._state_prefix, self._lease_ms, REDO_MAX])
        return [UserTransition.from_pending(entry) for entry in entries]

    async def transitions_recorded(self, transitions: list[UserTransition]) -> None:
        """Acknowledge (best effort: Redis unreachable leaves them to a sweep after their
        lease, and the outbox records each at most once)."""
        tokens = [t.token for t in transitions if t.token]
        if tokens:
            try:
                await self._node.command(lambda: self._node.client.zrem(self._pending_key, tokens))
            except BackplaneUnavailable:
                pass

    # -- the node's loops ------------------------------------------------------

    def channels(self) -> dict[str, Callable[[bytes], None]]:
        return {self.channel: self._on_evict}

    def _on_evict(self, data: bytes) -> None:
        """(instance, session) pairs, one per line: close those of this instance."""
        parts = data.split(b"\n")
        instance = self._node.instance
        mine = [parts[i + 1].decode() for i in range(0, len(parts) - 1, 2) if parts[i].decode() == instance]
        if mine and self.evictor is not None:
            self.evictor.evict_replaced(mine)

    async def resubscribed(self) -> None:
        """Check this node's sessions against Redis (in chunks, one script each): the
        replaced ones are closed now, entries Redis lost are written back, with this
        instance's logins set and its place in the instances set (a sweep finds its
        users if it dies later)."""
        sessions = list(self._logins.items())
        head = [self._instances_key, self._my_logins_key, self._pending_key]
        for start in range(0, len(sessions), RECONCILE_CHUNK):
            chunk = sessions[start:start + RECONCILE_CHUNK]
            args: list[str] = [self._node.instance, f"{self._prefix}:login:",
                               self._state_prefix if self.track_users else ""]
            for session_id, (_, single) in chunk:
                args += [session_id, "1" if single else "0"]
            replaced = await self._node.call(self._reconcile, head + [self._key(login) for _, (login, _) in chunk],
                                             args)
            if replaced and self.evictor is not None:
                self.evictor.evict_replaced([s.decode() for s in replaced])

    async def heartbeat(self) -> None:
        """Keep this instance in the instances set (sweepable once it dies), then retry
        the releases that failed."""
        await self._node.client.sadd(self._instances_key, [self._node.instance])
        for login, session_id in list(self._pending_releases):
            keys, args = self._release_args(login, session_id)
            await self._release(keys=keys, args=args)  # a transition it makes: recorded by a sweep after its lease
            self._pending_releases.discard((login, session_id))

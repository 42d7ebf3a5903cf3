"""The Redis connection a node's backplane roles share, and its two loops.

One coredis client per node (coredis runs natively on trio). Its automatic retry and
resubscribe are off (they lose messages silently): this module owns the loops.

* **The feed**: one pub/sub connection subscribed to every role's channels (a table
  channel -> handler) from before the job rooms load their history, so nothing
  published after a room read its history is missed. When the connection fails, the
  node reports the problem (``/health`` answers 503), waits with exponential backoff,
  subscribes again and then lets each role catch up on what it may have missed
  (:meth:`RedisRole.resubscribed`: rooms read the streams, presence is written again,
  logins are reconciled).
* **The heartbeat**: a liveness key per node instance (TTL ``node_ttl``) tells the
  other nodes which nodes are alive (login and presence entries of a dead node stop
  counting when it expires).

Commands that fail raise :class:`BackplaneUnavailable` (a publish is then answered
503, never 200).
"""

from __future__ import annotations

import logging
import secrets
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from typing import Any

import anyio
import coredis
import trio
from coredis.connection import TCPLocation, UnixDomainSocketLocation
from coredis.retry import NoRetryPolicy

from ..config.loader import ClusterConfig
from .interface import BackplaneUnavailable
from .redis_failures import FAILURES as FAILURES
from .redis_failures import describe as describe
from .redis_failures import is_connection_failure as is_connection_failure
from .redis_master import MasterLocator, MasterPool, probe_sentinels

log = logging.getLogger("broker.backplane")

FEED_DRAIN_MAX = 1000  # pub/sub messages handled per wake-up of the feed


class _ExpectedScriptReload(logging.Filter):
    """coredis logs "Retry attempt 1 due to error: No matching script" at INFO when an
    EVALSHA meets a Redis without the script and it loads it: expected (scripts are
    loaded on connect, a Redis restarted in between has none), never a problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No matching script" not in record.getMessage()


_expected_script_reload = _ExpectedScriptReload()


class RedisRole:
    """A part of the Redis backplane on the node's shared connection; each overrides
    what it uses. The hooks are called from the node's loops: the sync ones never block."""

    def channels(self) -> dict[str, Callable[[bytes], None]]:
        """The pub/sub channels this role follows, each with its handler (sync)."""
        return {}

    def end_of_burst(self) -> None:
        """The feed handed on every message received together (sync)."""

    async def resubscribed(self) -> None:
        """The feed is (again) subscribed: catch up on what may have been missed.
        A Redis failure here makes the feed reconnect."""

    async def heartbeat(self) -> None:
        """With the liveness key, each beat; a Redis failure counts as the heartbeat's."""

    def after_heartbeat(self) -> None:
        """After each beat, reachable or not (sync)."""

    async def run(self) -> None:
        """Background work while the node is open (cancelled when it closes)."""

    def stopped(self) -> None:
        """The node has stopped: fail what still waits for Redis (sync)."""


class RedisNode:
    """The client, the node's identity and key prefix, the feed and the heartbeat."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.node_id = config.node_id or f"node-{secrets.token_hex(4)}"
        # what Redis entries name: a restarted node (same node_id) is a new instance, so
        # entries of its previous life stop counting when that life's liveness key expires
        self.instance = f"{self.node_id}/{secrets.token_hex(4)}"
        self.prefix = config.key_prefix
        self.node_key_prefix = f"{self.prefix}:node:"
        # with Sentinel, the client's pool follows the master the locator finds
        self.locator = MasterLocator(config) if config.uses_sentinel else None
        self.client = redis_client(config, self.locator)
        if self.locator is not None:
            self.locator.on_moved(self._master_moved)
        self._follow_scope: trio.CancelScope | None = None  # the feed's current subscription
        self._moved = trio.Event()  # set when the master moves: the feed skips its backoff
        # connections made outside the pool (the publish writer): closed when the master moves
        self._own_connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.stopped = False
        self.nursery: trio.Nursery | None = None  # open while the node is
        self.reconnects = 0
        self._feed_up = False
        self._feed_error = "not connected yet"
        self._heartbeat_error: str | None = None
        self._roles: list[RedisRole] = []
        self._channels: dict[str, Callable[[bytes], None]] = {}  # pub/sub channel -> its role's handler
        self._scripts: list[Any] = []  # every role's Lua scripts, loaded on each connection

    def register_script(self, source: str) -> Any:
        """A Lua script a role runs with :meth:`call` (loaded on every (re)connection)."""
        script = self.client.register_script(source)
        self._scripts.append(script)
        return script

    def add_role(self, role: RedisRole) -> None:
        """Serve ``role`` (before :meth:`open`): its channels, hooks and background work.
        Roles are called in the order they were added."""
        self._roles.append(role)
        self._channels.update(role.channels())

    async def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script; BackplaneUnavailable if Redis cannot be reached (or we stopped)."""
        if self.stopped:
            raise BackplaneUnavailable("the backplane has stopped")
        try:
            return await script(keys=keys, args=args)
        except FAILURES as exc:
            self.connection_failed()
            raise BackplaneUnavailable(f"redis: {describe(exc)}") from None
        except RuntimeError as exc:  # coredis: the pool has closed (the broker is being cancelled)
            raise BackplaneUnavailable(f"redis client closed: {exc}") from None

    async def command(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run a command; BackplaneUnavailable if Redis cannot be reached (or we stopped)."""
        if self.stopped:
            raise BackplaneUnavailable("the backplane has stopped")
        try:
            return await call()
        except FAILURES as exc:
            self.connection_failed()
            raise BackplaneUnavailable(f"redis: {describe(exc)}") from None

    def connection_failed(self) -> None:
        """A command or connection failed (a dead master, or READONLY from a demoted
        one): with Sentinel, look for the master again (sync)."""
        if self.locator is not None:
            self.locator.suspect()

    @property
    def master_address(self) -> str | None:
        """``host:port`` (or the socket path) of the Redis this node writes to now: with
        Sentinel, the master found last (None until one is); else ``redis_url``'s."""
        if self.locator is not None:
            return self.locator.master_address
        return _address(self.client.connection_pool.location)

    def on_master(self, connection: Any) -> bool:
        """``connection`` goes to the Redis this node writes to now (with Sentinel, a
        failover moves that)."""
        return _address(connection.location) == self.master_address

    def new_connection(self) -> Any:
        """A connection (not started) to the Redis this node writes to now, with the
        client's settings; BackplaneUnavailable if no master is known yet."""
        pool = self.client.connection_pool
        if isinstance(pool, MasterPool):
            try:
                connection = pool.new_connection()
            except FAILURES as exc:
                raise BackplaneUnavailable(f"redis: {describe(exc)}") from None
            self._own_connections.add(connection)  # closed when the master moves
            return connection
        return pool.connection_class(pool.location, **pool.connection_kwargs)

    def location(self) -> dict[str, Any]:
        """For ``/health``: the Redis address in use and, with Sentinel, the master's
        name, the sentinels and whether each answered when last asked (no credentials)."""
        where: dict[str, Any] = {"master": self.master_address}
        if self.locator is not None:
            where.update(masterName=self.locator.master_name, failovers=self.locator.failovers,
                         sentinels={s: self.locator.reached.get(s) for s in self.locator.configured})
        return where

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        """The feed, the heartbeat and each role's background work run inside; the
        client stays usable until the block has ended (sessions closing inside it can
        still release their logins). Enters at once, reachable or not: until Redis
        answers, ``problem()`` says why and publishes get 503."""
        logging.getLogger("coredis").addFilter(_expected_script_reload)  # once: the same filter object
        async with self.client:
            try:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    if self.locator is not None:
                        nursery.start_soon(self.locator.run)
                    for role in self._roles:
                        nursery.start_soon(role.run)
                    nursery.start_soon(self._heartbeat_loop)
                    nursery.start_soon(self._feed_loop)
                    yield
                    nursery.cancel_scope.cancel()
            finally:
                self.stopped = True  # before the client's pool closes: calls from now on fail cleanly
                for role in self._roles:
                    role.stopped()

    def problem(self) -> str | None:
        if self.locator is not None and self.locator.problem is not None and (
                not self._feed_up or self.locator.address is None):
            return f"redis unreachable: {self.locator.problem}"
        if not self._feed_up:
            return f"redis unreachable: {self._feed_error}"
        if self._heartbeat_error is not None:
            return f"redis unreachable: {self._heartbeat_error}"
        return None

    async def _feed_loop(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._follow()
            except* (*FAILURES, BackplaneUnavailable) as group:  # a Cancelled beside them goes on up
                self.connection_failed()
                if self._feed_up:
                    delay = 0.05
                    self.reconnects += 1
                    log.warning("node %s: redis pub/sub lost (%s); reconnecting", self.node_id, describe(group))
                else:
                    delay = min(delay * 2, self.config.reconnect_max_delay)
                self._feed_up = False
                self._feed_error = describe(group)
            with trio.move_on_after(delay * (0.5 + secrets.randbelow(1000) / 1000)):
                await self._moved.wait()  # a new master: subscribe there now
            self._moved = trio.Event()

    def _master_moved(self) -> None:
        """Sentinel named another master: the feed subscribes there (and the roles
        catch up) and the writer reopens there, even if the old one still answers: a
        script answered by a master that has been replaced may be lost with it (sync)."""
        if self._follow_scope is not None:
            self._follow_scope.cancel()
        for connection in list(self._own_connections):  # scripts in flight there fail: never acknowledged
            connection.invalidate()
        self._moved.set()

    async def _follow(self) -> None:
        with trio.CancelScope() as self._follow_scope:
            await self._subscribed()
        raise BackplaneUnavailable("the redis master moved")  # the scope was cancelled by a move

    async def _subscribed(self) -> None:
        async with self.client.pubsub(channels=list(self._channels), retry_policy=None,
                                      ignore_subscribe_messages=True) as pubsub:
            # subscribed: from here on nothing published is missed; now read what was
            await self._load_scripts()
            self._feed_up = True
            log.info("node %s: subscribed to %s", self.node_id, ", ".join(self._channels))
            for role in self._roles:
                await role.resubscribed()
            while True:
                self.hand_on(await _next_messages(pubsub))

    async def _load_scripts(self) -> None:
        """SCRIPT LOAD every script (on each connection to Redis: it may have restarted
        empty), so their first EVALSHA finds them instead of failing and retrying."""
        for script in self._scripts:
            await self.client.script_load(script.script)

    def hand_on(self, messages: list[Any]) -> None:
        """Hand each pub/sub message to its channel's role, in arrival order, then tell
        every role the burst has ended (sync). A message its role cannot parse (only
        something else writing to the broker's channels sends one) is logged and
        dropped: it never stops the feed, nor the node."""
        channels = self._channels
        for message in messages:
            channel = message["channel"]
            name = channel.decode() if isinstance(channel, bytes) else channel
            try:
                channels[name](message["data"])
            except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
                log.warning("node %s: a message on %s that is not the broker's was dropped (%s)",
                            self.node_id, name, type(exc).__name__)
        for role in self._roles:
            role.end_of_burst()

    async def _heartbeat_loop(self) -> None:
        """Renew this instance's liveness key (TTL 0.6 ``node_ttl``) every 0.2 ``node_ttl``
        (0.2 s while Redis fails), then each role's heartbeat work."""
        key = self.node_key_prefix + self.instance
        ttl_ms = int(self.config.node_ttl * 600)
        while True:
            try:
                await self.client.set(key, b"1", px=ttl_ms)
                self._heartbeat_error = None
                for role in self._roles:
                    await role.heartbeat()
            except Exception as exc:
                if not is_connection_failure(exc):
                    raise
                self.connection_failed()
                self._heartbeat_error = describe(exc)
            for role in self._roles:
                role.after_heartbeat()
            await trio.sleep(self.config.node_ttl * 0.2 if self._heartbeat_error is None else 0.2)


async def _next_messages(pubsub: Any) -> list[Any]:
    """The next pub/sub message (waiting for it) and every one already received behind
    it, up to FEED_DRAIN_MAX: one wake-up of the feed per burst, not per message (each
    ``get_message`` costs a cancel scope and a checkpoint). coredis keeps received
    messages in ``_receive_stream``; without it, one message at a time."""
    first = await pubsub.get_message()
    messages = [first] if first is not None else []
    received = getattr(pubsub, "_receive_stream", None)
    while received is not None and len(messages) < FEED_DRAIN_MAX:
        try:
            message = received.receive_nowait()
        except anyio.WouldBlock:
            break
        if message is not None and message.get("type") in (b"message", "message"):
            messages.append(message)
    return messages


def redis_client(config: ClusterConfig, locator: MasterLocator | None, decode_responses: bool = False) -> Any:
    """A coredis client without retries (its callers own them): on ``locator``'s pool
    (it follows the Sentinel-managed master), else at ``redis_url``."""
    if locator is not None:
        return locator.client(decode_responses)
    options: dict[str, Any] = {"decode_responses": decode_responses}  # bool, not a Literal: typed by the call
    return coredis.Redis.from_url(config.redis_url, retry_policy=NoRetryPolicy(), connect_timeout=config.connect_timeout,
                                  stream_timeout=config.command_timeout, **options)


def _address(location: Any) -> str | None:
    if isinstance(location, TCPLocation):
        return f"{location.host}:{location.port}"
    if isinstance(location, UnixDomainSocketLocation):
        return str(location.path)
    return None


async def probe_redis(config: ClusterConfig) -> str:
    """Connect, PING and return Redis's address, version and persistence settings
    (for ``broker check-config``); with Sentinel, what each sentinel answered too.
    BackplaneUnavailable if it cannot be reached."""
    sentinels: list[str] = []
    failure = None
    try:
        if config.uses_sentinel:
            locator, sentinels = await probe_sentinels(config)
            client = locator.client(decode_responses=True)
            where = f"master {locator.master_name!r} at {locator.master_address}"
        else:
            client = redis_client(config, None, decode_responses=True)
            where = f"at {_address(client.connection_pool.location)}"
        async with client:
            await client.ping()
            info = await client.info("server")
            persistence = await client.config_get(["appendonly", "appendfsync"])
    except* FAILURES as group:
        failure = describe(group)
    except* BackplaneUnavailable as group:  # no sentinel named a reachable master: says which said what
        failure = str(group.exceptions[0])
    if failure is not None:
        raise BackplaneUnavailable("; ".join([f"redis unreachable: {failure}", *sentinels]))
    version = info.get("redis_version")  # a str: the client decodes responses
    return "; ".join([
        f"redis {version if isinstance(version, str) else '?'} {where} (appendonly="
        f"{persistence.get('appendonly', '?')}, appendfsync={persistence.get('appendfsync', '?')})", *sentinels])


def replicated(client: Any, config: ClusterConfig) -> AbstractContextManager[Any]:
    """Inside it, each command of ``client`` in this task is followed by a WAIT on the
    connection that ran it (coredis keeps that connection for the command and its WAIT),
    and fails (ReplicationError, one of FAILURES) unless ``[cluster] min_replicas``
    replicas have its writes within ``replica_timeout``; without min_replicas, nothing."""
    if config.min_replicas <= 0:
        return nullcontext()
    return client.ensure_replication(config.min_replicas, max(1, round(config.replica_timeout * 1000)))

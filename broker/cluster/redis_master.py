"""Where a node's Redis is: at ``[cluster] redis_url``, or the master Sentinel names.

With ``redis_sentinels`` + ``redis_master_name`` a :class:`MasterLocator` asks the
sentinels, each in turn, for the master's address (``SENTINEL get-master-addr-by-name``)
and checks that the server there says ``ROLE`` master before using it. Every client of
the node gets its connections from a :class:`MasterPool` the locator moves: on a new
master the pool's connections to the old one are closed, so the node's loops reconnect
(to the new one) and catch up as after a Redis restart. The locator looks again

* whenever a command or connection of the node fails (:meth:`MasterLocator.suspect`:
  a dead master, or a ``READONLY`` answer from a demoted one), and
* at once when a sentinel announces ``+switch-master`` for the name (a task follows the
  channel on one sentinel at a time, the next one when it fails).

Sentinel's own password and the master's are never logged or put in error text.
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections.abc import Callable
from typing import Any

import coredis
import trio
from coredis.connection import SentinelManagedConnection, TCPLocation
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import StalePrimaryError
from coredis.pool import ConnectionPool
from coredis.retry import NoRetryPolicy

from ..config.loader import ClusterConfig, parse_host_port
from .interface import BackplaneUnavailable
from .redis_failures import FAILURES, describe

log = logging.getLogger("broker.backplane")

SWITCH_CHANNEL = "+switch-master"


class MasterPool(ConnectionPool[SentinelManagedConnection]):
    """A coredis pool whose connections go to the master the locator found last; each
    new connection checks ``ROLE`` master (a stale address fails it, StalePrimaryError)."""

    def __init__(self, master_name: str, **connection_kwargs: Any) -> None:
        super().__init__(connection_class=SentinelManagedConnection, **connection_kwargs)
        self.master_name = master_name

    async def get_connection(self, **kwargs: Any) -> SentinelManagedConnection:
        if self.location is None:  # before a slot is taken: it would be lost
            raise RedisConnectionError(f"no redis master {self.master_name!r} found through sentinel yet")
        return await super().get_connection(**kwargs)

    async def _construct_connection(self) -> SentinelManagedConnection:
        return self.new_connection()

    def new_connection(self) -> SentinelManagedConnection:
        """A connection (not started) to the current master; RedisConnectionError if none is known."""
        if not isinstance(self.location, TCPLocation):
            raise RedisConnectionError(f"no redis master {self.master_name!r} found through sentinel yet")
        return SentinelManagedConnection(self.location, self.master_name, True, **self.connection_kwargs)

    def move(self, location: TCPLocation) -> None:
        """New connections go to ``location``; the ones open (to the old master) are closed."""
        self.location = location
        self.disconnect()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_context(enabled: bool, ca_file: str) -> ssl.SSLContext | None:
    if not enabled:
        return None
    return ssl.create_default_context(cafile=ca_file or None)


class MasterLocator:
    """The master of ``redis_master_name`` as the sentinels name it, followed through
    failovers; the pools it hands out move with it. :meth:`run` (in the node's nursery)
    does the looking; cancelling it stops it, nothing else."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.master_name = config.redis_master_name
        # "host:port" ("[v6]:port"), in the configured order; ``sentinels`` is the order they are asked in
        self.configured = [_host_port(*(parse_host_port(entry) or ("", 0))) for entry in config.redis_sentinels]
        self.sentinels = list(self.configured)
        self.address: TCPLocation | None = None  # the master in use (None until found)
        self.problem: str | None = "looking for the redis master through sentinel"
        self.failovers = 0  # moves from one master to another seen by this node
        self.reached: dict[str, bool] = {}  # sentinel -> whether it answered the last time it was asked
        self._pools: list[MasterPool] = []
        self._moved: list[Callable[[], None]] = []
        self._wanted = trio.Event()  # look again (after the backoff)
        self._switched = trio.Event()  # look again now (a +switch-master, or the channel followed anew)
        self._wanted.set()
        self._master_kwargs: dict[str, Any] = {
            "username": config.redis_username or None, "password": config.redis_password or None,
            "db": config.redis_db, "ssl_context": _tls_context(config.redis_tls, config.tls_ca_file),
            "connect_timeout": config.connect_timeout, "stream_timeout": config.command_timeout,
        }
        self._sentinel_kwargs: dict[str, Any] = {
            "username": config.sentinel_username or None, "password": config.sentinel_password or None,
            "ssl_context": _tls_context(config.sentinel_tls, config.tls_ca_file),
            "connect_timeout": config.connect_timeout, "stream_timeout": config.command_timeout,
        }

    @property
    def master_address(self) -> str | None:
        """``host:port`` of the master in use (None until one was found)."""
        return None if self.address is None else f"{self.address.host}:{self.address.port}"

    def client(self, decode_responses: bool = False) -> coredis.Redis[Any]:
        """A coredis client on a pool that follows the master (no retries: callers own them)."""
        pool = MasterPool(self.master_name, decode_responses=decode_responses, **self._master_kwargs)
        pool.location = self.address
        self._pools.append(pool)
        return coredis.Redis(connection_pool=pool, retry_policy=NoRetryPolicy())

    def on_moved(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (sync) each time the master has moved, after the pools."""
        self._moved.append(callback)

    def suspect(self) -> None:
        """Something failed on the master: look again (after the backoff if looking fails)."""
        self._wanted.set()

    async def run(self) -> None:
        """Find the master, then look again when told or when a sentinel announces a
        switch; follow the switch channel beside. Runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_switches)
            await self._look_loop()

    async def _look_loop(self) -> None:
        delay = 0.05
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            self._switched = trio.Event()
            try:
                location, via = await self.resolve()
            except BackplaneUnavailable as exc:
                self.problem = str(exc)
                with trio.move_on_after(delay * (0.5 + secrets.randbelow(1000) / 1000)):
                    await self._switched.wait()  # a switch announced: no need to wait out the backoff
                delay = min(delay * 2, self.config.reconnect_max_delay)
                self._wanted.set()
                continue
            delay = 0.05
            self.problem = None
            self._move(location, via)

    def _move(self, location: TCPLocation, via: str) -> None:
        old = self.master_address
        if self.address == location:
            return
        self.address = location
        if old is None:
            log.info("redis master %r is at %s (sentinel %s)", self.master_name, self.master_address, via)
        else:
            self.failovers += 1
            log.warning("redis master %r moved: %s -> %s (sentinel %s); reconnecting", self.master_name, old,
                        self.master_address, via)
        for pool in self._pools:
            pool.move(location)
        for callback in self._moved:
            callback()

    async def resolve(self) -> tuple[TCPLocation, str]:
        """The master's address and the sentinel that named it: each sentinel in turn
        (the one that answered last first) until one names a server that says it is the
        master. BackplaneUnavailable naming each sentinel's failure otherwise."""
        problems = []
        for index, sentinel in enumerate(list(self.sentinels)):
            answer = await self.ask_sentinel(sentinel)
            if isinstance(answer, str):
                problems.append(f"sentinel {sentinel}: {answer}")
                continue
            if answer is None:
                problems.append(f"sentinel {sentinel} knows no master named {self.master_name!r}")
                continue
            failure = await self._check_master(answer)
            if failure is not None:
                problems.append(f"master {answer.host}:{answer.port} named by sentinel {sentinel}: {failure}")
                continue
            if index:  # ask this one first next time
                self.sentinels.insert(0, self.sentinels.pop(index))
            return answer, sentinel
        raise BackplaneUnavailable(f"no redis master {self.master_name!r} reachable: {'; '.join(problems)}")

    def _sentinel_client(self, sentinel: str) -> coredis.Redis[Any]:
        host, port = parse_host_port(sentinel) or ("", 0)
        return coredis.Redis(host, port, retry_policy=NoRetryPolicy(), decode_responses=True,
                             **self._sentinel_kwargs)

    async def ask_sentinel(self, sentinel: str) -> TCPLocation | None | str:
        """The master's address as ``sentinel`` names it (None: it knows no such master),
        or the failure as text."""
        failure: str | None = None
        answer: Any = None
        try:
            with trio.fail_after(self.config.connect_timeout + self.config.command_timeout):
                async with self._sentinel_client(sentinel) as client:
                    answer = await client.sentinel_get_master_addr_by_name(self.master_name)
        except* FAILURES as group:
            failure = describe(group)
        self.reached[sentinel] = failure is None
        if failure is not None:
            return failure
        return TCPLocation(str(answer[0]), int(answer[1])) if answer else None

    async def _check_master(self, location: TCPLocation) -> str | None:
        """None if the server at ``location`` answers ROLE master, else why not."""
        failure: str | None = None
        role: Any = None
        try:
            with trio.fail_after(self.config.connect_timeout + self.config.command_timeout):
                async with coredis.Redis(location.host, location.port, retry_policy=NoRetryPolicy(),
                                         decode_responses=True, **self._master_kwargs) as client:
                    role = (await client.role()).role
        except* FAILURES as group:
            failure = describe(group)
        if failure is None and role != "master":
            failure = f"{StalePrimaryError.__name__}: it says ROLE {role!r} (the sentinels have not caught up yet)"
        return failure

    async def _follow_switches(self) -> None:
        """Follow ``+switch-master`` on one sentinel at a time (the next one when it
        fails); a switch of our master makes the locator look at once. Each time the
        channel is followed anew, look too (a switch may have been missed)."""
        turn = 0
        delay = 0.05
        while True:
            sentinel = self.sentinels[turn % len(self.sentinels)]
            try:
                async with self._sentinel_client(sentinel) as client, \
                        client.pubsub(channels=[SWITCH_CHANNEL], retry_policy=None,
                                      ignore_subscribe_messages=True) as pubsub:
                    self._look_now()
                    delay = 0.05
                    while True:
                        message = await pubsub.get_message()
                        if message is not None and self._is_our_switch(message.get("data")):
                            self._look_now()
            except* FAILURES as group:
                log.debug("sentinel %s: switch channel lost (%s)", sentinel, describe(group))
            turn += 1
            await trio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
            delay = min(delay * 2, self.config.reconnect_max_delay)

    def _is_our_switch(self, data: Any) -> bool:
        """``<name> <old ip> <old port> <new ip> <new port>`` for our master name."""
        return isinstance(data, str) and data.split(" ", 1)[0] == self.master_name

    def _look_now(self) -> None:
        self._wanted.set()
        self._switched.set()


async def probe_sentinels(config: ClusterConfig) -> tuple[MasterLocator, list[str]]:
    """For ``broker check-config``: every sentinel asked (one line each: what it
    answered), and a locator moved to the master they name (``locator.client()``
    reaches it). BackplaneUnavailable if none names a reachable master."""
    locator = MasterLocator(config)
    lines = []
    for sentinel in list(locator.sentinels):
        answer = await locator.ask_sentinel(sentinel)
        if isinstance(answer, str):
            lines.append(f"sentinel {sentinel}: UNREACHABLE: {answer}")
        elif answer is None:
            lines.append(f"sentinel {sentinel}: knows no master named {locator.master_name!r}")
        else:
            lines.append(f"sentinel {sentinel}: master {locator.master_name!r} at {answer.host}:{answer.port}")
    try:
        location, _ = await locator.resolve()
    except BackplaneUnavailable as exc:
        raise BackplaneUnavailable("; ".join([str(exc), *lines])) from None
    locator.address = location
    return locator, lines

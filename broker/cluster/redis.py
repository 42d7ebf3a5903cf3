"""The cluster backplane on Redis (coredis, natively on trio).

Job events: one script per publish batch sequences, stores (capped stream, latest
status) and PUBLISHes atomically (see :mod:`.lua`); its answer comes once Redis has
answered, which with ``appendfsync always`` means the events are on disk. The scripts go
out on one connection of their own (the writer), without waiting for the answers of the
ones before: Redis runs one connection's commands in the order they were sent, so a
room's batches are sequenced in its order, and several in flight share Redis's fsyncs
(it writes the AOF once per event loop turn, for every script of that turn). One task
awaits the answers in send order and hands each to its room. If the writer connection
fails, every script in flight on it is answered BackplaneUnavailable (some may have
been stored: the feed, or a resync, brings them; none is acknowledged), and the next
send opens a new one. The same script looks up and sets the events' idempotency keys
(a key per job and key, with the TTL), so two nodes publishing the same key race inside
Redis and get one seq. Every node
holds one pub/sub connection subscribed to the live job channel and the evict channel
from before its rooms load their history, so a room that reads history after it
started misses nothing: it merges history and live events by seq.

coredis's automatic retry and resubscribe are off (they lose messages silently): this
module owns the loop. When the pub/sub connection fails, the node reports the problem
(``/health`` answers 503), waits with exponential backoff, subscribes again and then
tells every room to read what it missed from the streams. Commands that fail raise
:class:`BackplaneUnavailable` (a publish is then answered 503, never 200).

A heartbeat key per node (TTL ``node_ttl``) tells the others which nodes are alive:
login entries of a dead node stop counting when it expires.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import coredis
import trio
from coredis.exceptions import RedisError
from coredis.retry import NoRetryPolicy

from ..config.loader import ClusterConfig
from ..protocols import JobEventParts
from ..store import StoredEvent
from . import lua
from .interface import BackplaneUnavailable, ChatFeed, Evictor, JobFeed, JobHistory, LoginClaim, PendingAppend

log = logging.getLogger("broker.backplane")


class _ExpectedScriptReload(logging.Filter):
    """coredis logs "Retry attempt 1 due to error: No matching script" at INFO when an
    EVALSHA meets a Redis without the script and it loads it: expected (scripts are
    loaded on connect, a Redis restarted in between has none), never a problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No matching script" not in record.getMessage()


_expected_script_reload = _ExpectedScriptReload()

# What a lost connection raises inside coredis (its anyio streams included).
FAILURES = (RedisError, OSError, trio.TooSlowError, anyio.ClosedResourceError, anyio.BrokenResourceError)
MAX_PENDING_RELEASES = 100_000
FEED_DRAIN_MAX = 1000  # pub/sub messages handled per wake-up of the feed
MAX_APPENDS_IN_FLIGHT = 4096  # publish scripts sent and not answered yet, whole node (senders wait beyond)
RECONCILE_CHUNK = 500
PRESENCE_BATCH = 500


def is_connection_failure(exc: BaseException) -> bool:
    """True if ``exc`` (or every leaf of an exception group) is a Redis/network failure."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_connection_failure(e) for e in exc.exceptions)
    return isinstance(exc, FAILURES)


def describe(exc: BaseException) -> str:
    """One line naming the failure, without the URL (it may carry a password)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RedisBackplane:
    clustered = True

    def __init__(self, config: ClusterConfig, idempotency_ttl: float = 300.0) -> None:
        self.config = config
        self._idempotency_ttl_ms = round(idempotency_ttl * 1000)  # 0: keys are not remembered
        self.node_id = config.node_id or f"node-{secrets.token_hex(4)}"
        # what Redis entries name: a restarted node (same node_id) is a new instance, so
        # entries of its previous life stop counting when that life's liveness key expires
        self.instance = f"{self.node_id}/{secrets.token_hex(4)}"
        self._prefix = config.key_prefix
        self._jobs_channel = f"{self._prefix}:jobs"
        self._evict_channel = f"{self._prefix}:evict"
        self._node_key_prefix = f"{self._prefix}:node:"
        self._client = coredis.Redis.from_url(
            config.redis_url, retry_policy=NoRetryPolicy(), decode_responses=False,
            connect_timeout=config.connect_timeout, stream_timeout=config.command_timeout,
        )
        self._load = self._client.register_script(lua.LOAD)
        self._claim = self._client.register_script(lua.CLAIM_LOGIN)
        self._release = self._client.register_script(lua.RELEASE_LOGIN)
        self._sweep = self._client.register_script(lua.SWEEP_DEAD)
        self._instances_key = f"{self._prefix}:instances"
        self._my_logins_key = f"{self._prefix}:instance-logins:{self.instance}"
        self._reconcile = self._client.register_script(lua.RECONCILE_LOGINS)
        self._presence_set = self._client.register_script(lua.PRESENCE_SET)
        self._presence_read = self._client.register_script(lua.PRESENCE_READ)
        self._users_online = self._client.register_script(lua.USERS_ONLINE)
        self._presence_channel = f"{self._prefix}:presence"
        self._chat_channel = f"{self._prefix}:chat"
        self._groups_channel = f"{self._prefix}:groups"
        self._presence: dict[str, Counter[str]] = {}  # job -> user -> connections here
        self._presence_dirty: set[tuple[str, str]] = set()  # (job, user) not yet written to Redis
        self._presence_wake = trio.Event()
        self._logins: dict[str, tuple[str, bool]] = {}  # session -> (login, single): this node's claims
        self._feed_up = False
        self._feed_error = "not connected yet"
        self._heartbeat_error: str | None = None
        self._pending_releases: set[tuple[str, str]] = set()  # (user, session) to remove once reachable
        self.reconnects = 0
        self._stopped = False
        self._nursery: trio.Nursery | None = None
        self._writer: Any = None  # the coredis connection publish scripts go out on
        self._writer_sha = ""
        self._writer_lock = trio.Lock()
        self._answers_in, self._answers = trio.open_memory_channel[_InFlight](MAX_APPENDS_IN_FLIGHT)

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script; BackplaneUnavailable if Redis cannot be reached (or we stopped)."""
        if self._stopped:
            raise BackplaneUnavailable("the backplane has stopped")
        try:
            return await script(keys=keys, args=args)
        except FAILURES as exc:
            raise BackplaneUnavailable(f"redis: {describe(exc)}") from None
        except RuntimeError as exc:  # coredis: the pool has closed (the broker is being cancelled)
            raise BackplaneUnavailable(f"redis client closed: {exc}") from None

    # -- life cycle ----------------------------------------------------------

    @asynccontextmanager
    async def open(self, feed: JobFeed, evictor: Evictor, chat: ChatFeed) -> AsyncIterator[None]:
        """The pub/sub loop and the heartbeat run inside; the Redis client stays usable
        until the block has ended (sessions closing inside it can still release their
        logins). Enters at once, reachable or not: until Redis answers, ``problem()``
        says why and publishes get 503."""
        logging.getLogger("coredis").addFilter(_expected_script_reload)  # once: the same filter object
        async with self._client:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._answer_loop)
                    nursery.start_soon(self._heartbeat_loop, feed)
                    nursery.start_soon(self._feed_loop, feed, evictor, chat)
                    nursery.start_soon(self._presence_loop)
                    yield
                    nursery.cancel_scope.cancel()
            finally:
                self._stopped = True  # before the client's pool closes: calls from now on fail cleanly
                self._fail_unanswered()

    def problem(self) -> str | None:
        if not self._feed_up:
            return f"redis unreachable: {self._feed_error}"
        if self._heartbeat_error is not None:
            return f"redis unreachable: {self._heartbeat_error}"
        return None

    async def _feed_loop(self, feed: JobFeed, evictor: Evictor, chat: ChatFeed) -> None:
        delay = 0.05
        while True:
            try:
                await self._follow(feed, evictor, chat)
            except* (*FAILURES, BackplaneUnavailable) as group:  # a Cancelled beside them goes on up
                if self._feed_up:
                    delay = 0.05
                    self.reconnects += 1
                    log.warning("node %s: redis pub/sub lost (%s); reconnecting", self.node_id, describe(group))
                else:
                    delay = min(delay * 2, self.config.reconnect_max_delay)
                self._feed_up = False
                self._feed_error = describe(group)
            await trio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))

    async def _follow(self, feed: JobFeed, evictor: Evictor, chat: ChatFeed) -> None:
        async with self._client.pubsub(
            channels=[self._jobs_channel, self._evict_channel, self._presence_channel, self._chat_channel,
                      self._groups_channel], retry_policy=None,
            ignore_subscribe_messages=True,
        ) as pubsub:
            # subscribed: from here on nothing published is missed; now read what was
            await self._load_scripts()
            self._feed_up = True
            log.info("node %s: subscribed to %s", self.node_id, self._jobs_channel)
            feed.resync_all()
            self._presence_dirty.update((job, user) for job, users in self._presence.items() for user in users)
            self._presence_wake.set()  # write this node's presence again (Redis may have lost it)
            feed.presence_changed_all()
            await self._reconcile_logins(evictor)
            while True:
                self._dispatch_all(await _next_messages(pubsub), feed, evictor, chat)

    async def _load_scripts(self) -> None:
        """SCRIPT LOAD every script (on each connection to Redis: it may have restarted
        empty), so their first EVALSHA finds them instead of failing and retrying."""
        for script in (self._load, self._claim, self._release, self._reconcile, self._presence_set,
                       self._presence_read, self._users_online):
            await self._client.script_load(script.script)

    def _dispatch_all(self, messages: list[Any], feed: JobFeed, evictor: Evictor, chat: ChatFeed) -> None:
        """Hand messages on in arrival order; a job's events from consecutive messages
        (one epoch) go to its room together: one command and one fan-out for them all."""
        jobs: dict[str, tuple[str, list[StoredEvent]]] = {}  # job -> (epoch, events), in seq order
        for message in messages:
            channel, data = message["channel"], message["data"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            if channel != self._jobs_channel:
                self._dispatch(channel, data, feed, evictor, chat)
                continue
            parts = data.split(b"\n")
            job_id, epoch, first = parts[0].decode(), parts[1].decode(), int(parts[2])
            events = [StoredEvent(first + i, parts[3 + 2 * i].decode(), parts[4 + 2 * i])
                      for i in range((len(parts) - 3) // 2)]
            held = jobs.get(job_id)
            if held is not None and held[0] == epoch:
                held[1].extend(events)
                continue
            if held is not None:
                feed.deliver_remote(job_id, *held)
            jobs[job_id] = (epoch, events)
        for job_id, (epoch, events) in jobs.items():
            feed.deliver_remote(job_id, epoch, events)

    def _dispatch(self, channel: str, data: bytes, feed: JobFeed, evictor: Evictor, chat: ChatFeed) -> None:
        if channel == self._chat_channel:
            chat.deliver_remote_chat(data)
            return
        if channel == self._groups_channel:
            chat.remote_group_changed(data.decode())
            return
        parts = data.split(b"\n")
        if channel == self._presence_channel:
            feed.presence_changed([job.decode() for job in parts if job])
        elif channel == self._evict_channel:
            mine = [parts[i + 1].decode() for i in range(0, len(parts) - 1, 2) if parts[i].decode() == self.instance]
            if mine:
                evictor.evict_replaced(mine)

    async def _heartbeat_loop(self, feed: JobFeed) -> None:
        """Renew this instance's liveness key (TTL 0.6 ``node_ttl``) every 0.2 ``node_ttl``,
        and make rooms with presence watchers look again (a node whose key expired has
        left every list): a killed node is gone from every list within ``node_ttl``.
        Also retries login releases that failed."""
        key = self._node_key_prefix + self.instance
        ttl_ms = int(self.config.node_ttl * 600)
        while True:
            try:
                await self._client.set(key, b"1", px=ttl_ms)
                await self._client.sadd(self._instances_key, [self.instance])  # sweepable once it dies
                self._heartbeat_error = None
                if self._pending_releases:
                    await self._retry_releases()
            except Exception as exc:
                if not is_connection_failure(exc):
                    raise
                self._heartbeat_error = describe(exc)
            feed.presence_changed_all()
            await trio.sleep(self.config.node_ttl * 0.2 if self._heartbeat_error is None else 0.2)

    # -- job log -------------------------------------------------------------

    def _job_keys(self, job_id: str) -> list[str]:
        base = f"{self._prefix}:job:{job_id}"
        return [f"{self._prefix}:epoch", f"{base}:seq", f"{base}:log", f"{base}:status"]

    async def send_job_events(self, job_id: str, events: list[JobEventParts], keep: int, last_seq: int,
                              on_answer: Callable[[], None]) -> PendingAppend:
        """Queue the publish script on the writer connection (connecting it first if
        needed) and return; its answer comes through ``_answer_loop``."""
        args: list[str | bytes | int] = [secrets.token_hex(8), keep, self._jobs_channel, job_id,
                                          f"{self._prefix}:idem:{job_id}|", self._idempotency_ttl_ms]
        for event in events:
            args += [event.type, event.head, event.tail, event.idempotency_key or ""]
        keys = self._job_keys(job_id)
        connection = await self._writer_connection()
        try:
            request = connection.create_request(b"EVALSHA", self._writer_sha, len(keys), *keys, *args, decode=False)
        except FAILURES as exc:  # the connection failed since we looked
            raise BackplaneUnavailable(f"redis: {describe(exc)}") from None
        pending = PendingAppend()
        await self._answers_in.send(_InFlight(connection, request, pending, on_answer, events))
        return pending

    async def _writer_connection(self) -> Any:
        """The writer connection, opened (with the publish script loaded) if there is
        none or it failed; BackplaneUnavailable if Redis cannot be reached."""
        if self._stopped or self._nursery is None:
            raise BackplaneUnavailable("the backplane has stopped")
        if self._writer is not None and self._writer.usable:
            return self._writer
        async with self._writer_lock:
            if self._writer is not None and self._writer.usable:
                return self._writer
            pool = self._client.connection_pool
            connection = pool.connection_class(pool.location, **pool.connection_kwargs)
            try:
                with trio.fail_after(self.config.connect_timeout + self.config.command_timeout):
                    await self._nursery.start(self._run_writer, connection)
                    sha = await connection.create_request(b"SCRIPT", b"LOAD", lua.PUBLISH, decode=True)
            except (*FAILURES, RuntimeError) as exc:  # RuntimeError: the nursery is closing
                connection.invalidate()
                raise BackplaneUnavailable(f"redis: {describe(exc)}") from None
            self._writer, self._writer_sha = connection, str(sha)
            return connection

    @staticmethod
    async def _run_writer(connection: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the connection's reader and writer until it ends; a failure after it
        was up only ends it (its requests are failed by coredis), never the backplane."""
        status = _Started(task_status)
        try:
            await connection.run(task_status=status)
        except FAILURES:
            if not status.done:
                raise
            log.info("redis writer connection ended")

    async def _answer_loop(self) -> None:
        """Await the publish scripts' answers in send order; answer each one's
        PendingAppend and call its room back. A failed script ends the writer
        connection: the ones behind it are not trusted either (they fail as it closes)."""
        async for item in self._answers:
            try:
                answer = await item.request
            except FAILURES as exc:
                item.connection.invalidate()
                item.pending.fail(BackplaneUnavailable(f"redis: {describe(exc)}"))
            except BaseException:
                item.pending.fail(BackplaneUnavailable("the backplane has stopped"))
                item.on_answer()
                raise
            else:
                item.pending.resolve(*_appended(answer, item.events))
            item.on_answer()

    def _fail_unanswered(self) -> None:
        """The backplane stopped: every append still waiting for its answer fails."""
        while True:
            try:
                item = self._answers.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            item.pending.fail(BackplaneUnavailable("the backplane has stopped"))
            item.on_answer()

    async def load_job(self, job_id: str, limit: int) -> JobHistory:
        return await self._read_job(job_id, limit, None)

    async def read_job_after(self, job_id: str, after_seq: int, limit: int) -> JobHistory:
        return await self._read_job(job_id, limit, after_seq)

    async def read_job_page(self, job_id: str, after_seq: int, limit: int, keep: int) -> JobHistory:
        """The server API's history page (the stream holds only the history: ``keep`` is its length)."""
        return await self._read_job(job_id, limit, after_seq)

    async def _read_job(self, job_id: str, limit: int, after_seq: int | None) -> JobHistory:
        args = [secrets.token_hex(8), limit, "" if after_seq is None else after_seq]
        epoch, last, entries, status = await self._call(self._load, self._job_keys(job_id), args)
        events = []
        for entry_id, fields in entries:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            events.append(StoredEvent(int(entry_id.split(b"-")[0]), values[b"t"].decode(), values[b"p"]))
        if after_seq is None:
            events.reverse()
        latest = StoredEvent(int(status[0]), "job_status", status[1]) if status[0] is not None else None
        return JobHistory(epoch.decode(), int(last), events, latest)

    # -- logins --------------------------------------------------------------

    async def claim_login(self, login: str, session_id: str, single: bool, limit: int | None) -> LoginClaim:
        result = await self._call(
            self._claim, [f"{self._prefix}:login:{login}", self._evict_channel, self._my_logins_key],
            [self._node_key_prefix, self.instance, session_id, "1" if single else "0", -1 if limit is None else limit,
             login],
        )
        if result[0] == b"full":
            return LoginClaim(False)
        self._logins[session_id] = (login, single)
        local = [result[i + 1].decode() for i in range(1, len(result) - 1, 2) if result[i].decode() == self.instance]
        return LoginClaim(True, local)

    async def release_login(self, login: str, session_id: str) -> None:
        """Forget the session's entry; if Redis is unreachable, retried by the heartbeat."""
        self._logins.pop(session_id, None)
        try:
            await self._call(self._release, [f"{self._prefix}:login:{login}", self._my_logins_key],
                             [self.instance, login, session_id])
        except BackplaneUnavailable:
            if len(self._pending_releases) < MAX_PENDING_RELEASES:
                self._pending_releases.add((login, session_id))

    async def _reconcile_logins(self, evictor: Evictor) -> None:
        """After (re)subscribing: evict messages sent while this node was not listening
        are lost, so check this node's sessions against Redis (in chunks, one script
        each): the replaced ones are closed now, entries Redis lost are written back."""
        sessions = list(self._logins.items())
        for start in range(0, len(sessions), RECONCILE_CHUNK):
            chunk = sessions[start:start + RECONCILE_CHUNK]
            args: list[str] = [self.instance]
            for session_id, (_, single) in chunk:
                args += [session_id, "1" if single else "0"]
            replaced = await self._call(self._reconcile, [f"{self._prefix}:login:{login}" for _, (login, _) in chunk], args)
            if replaced:
                evictor.evict_replaced([s.decode() for s in replaced])

    async def _retry_releases(self) -> None:
        for login, session_id in list(self._pending_releases):
            await self._release(keys=[f"{self._prefix}:login:{login}", self._my_logins_key],
                                args=[self.instance, login, session_id])
            self._pending_releases.discard((login, session_id))

    # -- presence ------------------------------------------------------------

    def presence_update_nowait(self, job_id: str, user_id: str, delta: int) -> None:
        users = self._presence.setdefault(job_id, Counter())
        before = users[user_id]
        users[user_id] += delta
        if users[user_id] <= 0:
            del users[user_id]
            if not users:
                del self._presence[job_id]
        if (before > 0) != (users.get(user_id, 0) > 0):  # only arrivals and departures travel
            self._presence_dirty.add((job_id, user_id))
            self._presence_wake.set()

    async def _presence_loop(self) -> None:
        """Write this node's presence changes to Redis, all pending ones in one script,
        and announce them; what fails stays pending and is retried."""
        while True:
            await self._presence_wake.wait()
            self._presence_wake = trio.Event()
            while self._presence_dirty:
                batch = list(self._presence_dirty)[:PRESENCE_BATCH]
                self._presence_dirty.difference_update(batch)
                keys = [f"{self._prefix}:presence:{job}" for job, _ in batch]
                args: list[Any] = [self.instance, self._presence_channel]
                for job, user in batch:
                    args += [user, self._presence.get(job, Counter()).get(user, 0)]
                args += sorted({job for job, _ in batch})
                try:
                    await self._call(self._presence_set, keys, args)
                except BackplaneUnavailable:
                    self._presence_dirty.update(batch)
                    await trio.sleep(0.2)

    async def job_presence(self, job_id: str) -> set[str]:
        others = await self._call(self._presence_read, [f"{self._prefix}:presence:{job_id}"],
                                  [self._node_key_prefix, self.instance])
        return {user.decode() for user in others} | set(self._presence.get(job_id, ()))

    async def sweep_dead_nodes(self) -> list[str]:
        """The users whose last connection was on a node that died (its liveness key
        expired, so within ``node_ttl``), each returned once, to one caller in the whole
        cluster (the sweep is one script). Raises BackplaneUnavailable."""
        gone = await self._call(self._sweep, [self._instances_key],
                                [self._node_key_prefix, f"{self._prefix}:instance-logins:", f"{self._prefix}:login:"])
        return [login.decode()[5:] for login in gone if login.startswith(b"user:")]

    async def users_online(self, user_ids: list[str]) -> list[str]:
        if not user_ids:
            return []
        flags = await self._call(self._users_online, [f"{self._prefix}:login:user:{u}" for u in user_ids],
                                 [self._node_key_prefix])
        return [user for user, online in zip(user_ids, flags, strict=True) if online]

    # -- chat --------------------------------------------------------------

    async def publish_chat(self, data: bytes) -> None:
        await self._command(lambda: self._client.publish(self._chat_channel, data))

    async def publish_group_change(self, group_id: str) -> None:
        await self._command(lambda: self._client.publish(self._groups_channel, group_id))

    async def _command(self, call: Any) -> Any:
        if self._stopped:
            raise BackplaneUnavailable("the backplane has stopped")
        try:
            return await call()
        except FAILURES as exc:
            raise BackplaneUnavailable(f"redis: {describe(exc)}") from None

    # -- diagnostics ---------------------------------------------------------

    async def server_version(self) -> str:
        info = await self._client.info("server")
        return str(info.get("redis_version", "?"))


@attrs.frozen
class _InFlight:
    """A publish script sent on ``connection`` whose answer is awaited."""

    connection: Any
    request: Any
    pending: PendingAppend
    on_answer: Callable[[], None]
    events: list[JobEventParts]


def _appended(answer: list[Any], events: list[JobEventParts]) -> tuple[str, list[StoredEvent | int]]:
    """The publish script's answer as (epoch, per event: the stored event, or the seq of
    the event its idempotency key was first published with)."""
    epoch, first = answer[0].decode(), int(answer[1])
    repeats = [int(seq) for seq in answer[2]] if len(answer) > 2 else [0] * len(events)
    result: list[StoredEvent | int] = []
    seq = first
    for event, repeat in zip(events, repeats, strict=True):
        if repeat:
            result.append(repeat)
        else:
            result.append(StoredEvent(seq, event.type, event.assemble(seq, epoch)))
            seq += 1
    return epoch, result


class _Started:
    """A task status that remembers whether ``started`` was called."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self.status = status
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self.status.started(value)


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


async def probe_redis(config: ClusterConfig) -> str:
    """Connect, PING and return Redis's version and persistence settings (for
    ``broker check-config``); BackplaneUnavailable if it cannot be reached."""
    client = coredis.Redis.from_url(config.redis_url, retry_policy=NoRetryPolicy(), decode_responses=True,
                                    connect_timeout=config.connect_timeout, stream_timeout=config.command_timeout)
    failure = None
    try:
        async with client:
            await client.ping()
            info = await client.info("server")
            persistence = await client.config_get(["appendonly", "appendfsync"])
    except* FAILURES as group:
        failure = describe(group)
    if failure is not None:
        raise BackplaneUnavailable(f"redis unreachable: {failure}")
    version = info.get("redis_version")  # a str: the client decodes responses
    return (f"redis {version if isinstance(version, str) else '?'} (appendonly={persistence.get('appendonly', '?')}, "
            f"appendfsync={persistence.get('appendfsync', '?')})")

"""The job log on Redis: sequencing, history and the live feed of job events.

One script per publish batch sequences, stores (capped stream, latest status) and
PUBLISHes atomically (see :mod:`.lua`); its answer comes once Redis has answered,
which with ``appendfsync always`` means the events are on disk. The scripts go out on
one connection of their own (the writer), without waiting for the answers of the
ones before: Redis runs one connection's commands in the order they were sent, so a
room's batches are sequenced in its order, and several in flight share Redis's fsyncs
(it writes the AOF once per event loop turn, for every script of that turn). One task
awaits the answers in send order and hands each to its room. If the writer connection
fails, every script in flight on it is answered BackplaneUnavailable (some may have
been stored: the feed, or a resync, brings them; none is acknowledged), and the next
send opens a new one. The same script looks up and sets the events' idempotency keys
(a key per job and key, with the TTL), so two nodes publishing the same key race inside
Redis and get one seq.

The node's feed (:mod:`.redis_node`) is subscribed to the job channel from before the
rooms load their history, so a room that reads history after it started misses
nothing: it merges history and live events by seq. After a reconnect every room reads
what it missed from the streams.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..protocols import JobEventParts
from ..store import StoredEvent
from . import lua
from .interface import BackplaneUnavailable, JobFeed, JobHistory, PendingAppend
from .redis_node import FAILURES, RedisNode, RedisRole, describe

log = logging.getLogger("broker.backplane")

MAX_APPENDS_IN_FLIGHT = 4096  # publish scripts sent and not answered yet, whole node (senders wait beyond)


class RedisJobLog(RedisRole):
    def __init__(self, node: RedisNode, idempotency_ttl: float = 300.0) -> None:
        self._node = node
        self._prefix = node.prefix
        self._idempotency_ttl_ms = round(idempotency_ttl * 1000)  # 0: keys are not remembered
        self.channel = f"{self._prefix}:jobs"
        self._load = node.register_script(lua.LOAD)
        self.feed: JobFeed | None = None  # set while the backplane is open
        self._held: dict[str, tuple[str, list[StoredEvent]]] = {}  # this burst's events: job -> (epoch, events)
        self._writer: Any = None  # the coredis connection publish scripts go out on
        self._writer_sha = ""
        self._writer_lock = trio.Lock()
        self._answers_in, self._answers = trio.open_memory_channel[_InFlight](MAX_APPENDS_IN_FLIGHT)

    # -- the feed --------------------------------------------------------------

    def channels(self) -> dict[str, Callable[[bytes], None]]:
        return {self.channel: self._on_events}

    def _on_events(self, data: bytes) -> None:
        """A job's events from consecutive messages (one epoch) go to its room together
        at the end of the burst: one command and one fan-out for them all."""
        parts = data.split(b"\n")
        job_id, epoch, first = parts[0].decode(), parts[1].decode(), int(parts[2])
        events = [StoredEvent(first + i, parts[3 + 2 * i].decode(), parts[4 + 2 * i])
                  for i in range((len(parts) - 3) // 2)]
        held = self._held.get(job_id)
        if held is not None and held[0] == epoch:
            held[1].extend(events)
            return
        if held is not None and self.feed is not None:
            self.feed.deliver_remote(job_id, *held)
        self._held[job_id] = (epoch, events)

    def end_of_burst(self) -> None:
        held, self._held = self._held, {}
        if self.feed is not None:
            for job_id, (epoch, events) in held.items():
                self.feed.deliver_remote(job_id, epoch, events)

    async def resubscribed(self) -> None:
        if self.feed is not None:
            self.feed.resync_all()

    # -- appends ---------------------------------------------------------------

    def _job_keys(self, job_id: str) -> list[str]:
        base = f"{self._prefix}:job:{job_id}"
        return [f"{self._prefix}:epoch", f"{base}:seq", f"{base}:log", f"{base}:status"]

    async def send_job_events(self, job_id: str, events: list[JobEventParts], keep: int, last_seq: int,
                              on_answer: Callable[[], None]) -> PendingAppend:
        """Queue the publish script on the writer connection (connecting it first if
        needed) and return; its answer comes through :meth:`run`."""
        args: list[str | bytes | int] = [secrets.token_hex(8), keep, self.channel, job_id,
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

    def _writer_current(self) -> bool:
        """The writer connection is up and on the master the node uses now (with
        Sentinel, a failover moves it: the old master may still answer, READONLY)."""
        return self._writer is not None and self._writer.usable and self._node.on_master(self._writer)

    async def _writer_connection(self) -> Any:
        """The writer connection, opened (with the publish script loaded) on the
        current master if there is none, it failed or the master moved;
        BackplaneUnavailable if Redis cannot be reached."""
        node = self._node
        if node.stopped or node.nursery is None:
            raise BackplaneUnavailable("the backplane has stopped")
        if self._writer_current():
            return self._writer
        async with self._writer_lock:
            if self._writer_current():
                return self._writer
            if self._writer is not None:
                self._writer.invalidate()  # on the old master: scripts in flight on it fail (not acknowledged)
            connection = node.new_connection()
            try:
                with trio.fail_after(node.config.connect_timeout + node.config.command_timeout):
                    await node.nursery.start(self._run_writer, connection)
                    sha = await connection.create_request(b"SCRIPT", b"LOAD", lua.PUBLISH, decode=True)
            except (*FAILURES, RuntimeError) as exc:  # RuntimeError: the nursery is closing
                connection.invalidate()
                node.connection_failed()
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

    async def run(self) -> None:
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

    def stopped(self) -> None:
        """Every append still waiting for its answer fails."""
        while True:
            try:
                item = self._answers.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            item.pending.fail(BackplaneUnavailable("the backplane has stopped"))
            item.on_answer()

    # -- history ---------------------------------------------------------------

    async def load_job(self, job_id: str, limit: int) -> JobHistory:
        return await self._read_job(job_id, limit, None)

    async def read_job_after(self, job_id: str, after_seq: int, limit: int) -> JobHistory:
        return await self._read_job(job_id, limit, after_seq)

    async def read_job_page(self, job_id: str, after_seq: int, limit: int, keep: int) -> JobHistory:
        """The server API's history page (the stream holds only the history: ``keep`` is its length)."""
        return await self._read_job(job_id, limit, after_seq)

    async def _read_job(self, job_id: str, limit: int, after_seq: int | None) -> JobHistory:
        args = [secrets.token_hex(8), limit, "" if after_seq is None else after_seq]
        epoch, last, entries, status = await self._node.call(self._load, self._job_keys(job_id), args)
        events = []
        for entry_id, fields in entries:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            events.append(StoredEvent(int(entry_id.split(b"-")[0]), values[b"t"].decode(), values[b"p"]))
        if after_seq is None:
            events.reverse()
        latest = StoredEvent(int(status[0]), "job_status", status[1]) if status[0] is not None else None
        return JobHistory(epoch.decode(), int(last), events, latest)


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

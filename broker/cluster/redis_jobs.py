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

With ``[cluster] min_replicas`` > 0 a batch is acknowledged only once that many
replicas have it, and published only then. The script then stores without PUBLISHing;
a ``WAIT min_replicas replica_timeout`` follows it on the writer connection (WAIT
covers every earlier write of its connection, so while one WAIT is on its way the
scripts sent behind it share the next one); when the WAIT's answer comes, the batches
it covers are answered and PUBLISHed (the same message the script would have sent) in
send order, or, with too few replicas, answered BackplaneUnavailable (stored on the
master, maybe replicated later: never acknowledged, and published only once a later
WAIT on the same connection succeeds, which covers it; if none does, a later event's
hole or a resync brings it to the rooms from the stream). A failover loses only such batches; the
first append on the promoted replica starts a new epoch (``P:master`` in :mod:`.lua`),
so seqs an old master gave to lost events never name two events.

The node's feed (:mod:`.redis_node`) is subscribed to the job channel from before the
rooms load their history, so a room that reads history after it started misses
nothing: it merges history and live events by seq. After a reconnect every room reads
what it missed from the streams.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import trio

from ..protocols import JobEventParts
from ..store import StoredEvent
from . import lua
from .interface import BackplaneUnavailable, JobFeed, JobHistory, PendingAppend
from .redis_node import FAILURES, RedisNode, RedisRole, describe

log = logging.getLogger("broker.backplane")

MAX_REFUSED_KEPT = 1024  # batches refused by a WAIT, kept to publish after the next one succeeds
MAX_APPENDS_IN_FLIGHT = 4096  # publish scripts sent and not answered yet, whole node (senders wait beyond)


class RedisJobLog(RedisRole):
    def __init__(self, node: RedisNode, idempotency_ttl: float = 300.0) -> None:
        self._node = node
        self._prefix = node.prefix
        self._idempotency_ttl_ms = round(idempotency_ttl * 1000)  # 0: keys are not remembered
        self.channel = f"{self._prefix}:jobs"
        self._load = node.register_script(lua.LOAD)
        self._min_replicas = node.config.min_replicas  # > 0: WAIT before an append is answered
        self._wait_ms = max(1, round(node.config.replica_timeout * 1000))  # WAIT's 0 would mean for ever
        self.feed: JobFeed | None = None  # set while the backplane is open
        self._held: dict[str, tuple[str, list[StoredEvent]]] = {}  # this burst's events: job -> (epoch, events)
        self._writer: _Writer | None = None  # the connection publish scripts go out on
        self._writer_lock = trio.Lock()
        self._slots = trio.Semaphore(MAX_APPENDS_IN_FLIGHT)  # a script's slot is freed once it is answered
        # scripts, and WAITs behind them: at most one WAIT per script still in the channel
        self._answers_in, self._answers = trio.open_memory_channel[_InFlight | _Wait](2 * MAX_APPENDS_IN_FLIGHT)
        self._confirming: list[_InFlight] = []  # stored, waiting for the WAIT behind them (send order)
        # stored but refused (too few replicas in time), to publish once a later WAIT on
        # their connection succeeds (it covers them); when full the oldest is forgotten:
        # its events reach the members at the next event's hole or a resync
        self._refused: deque[_InFlight] = deque(maxlen=MAX_REFUSED_KEPT)

    # -- the feed --------------------------------------------------------------

    def channels(self) -> dict[str, Callable[[bytes], None]]:
        return {self.channel: self._on_events}

    def _on_events(self, data: bytes) -> None:
        """A job's events from consecutive messages (one epoch) go to its room together
        at the end of the burst: one command and one fan-out for them all."""
        parts = data.split(b"\n")
        if len(parts) < 5 or len(parts) % 2 == 0:
            raise ValueError("not a job events message")  # the node logs and drops it
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
        """Queue the append script on the writer connection (connecting it first if
        needed) and return; its answer comes through :meth:`run`. With min_replicas, a
        WAIT follows it unless one is already on its way (that one's answer sends it)."""
        writer = await self._writer_connection()
        # the script and the WAIT decision go out together, with no checkpoint between
        # them and the queue: the queue's order is the connection's
        await self._slots.acquire()
        waited = self._min_replicas > 0
        args: list[str | bytes | int] = [secrets.token_hex(8), keep, "" if waited else self.channel, job_id,
                                          f"{self._prefix}:idem:{job_id}|", self._idempotency_ttl_ms]
        for event in events:
            args += [event.type, event.head, event.tail, event.idempotency_key or ""]
        keys = [*self._job_keys(job_id), f"{self._prefix}:master"]
        try:
            request = writer.connection.create_request(b"EVALSHA", writer.sha, len(keys), *keys, *args,
                                                       decode=False)
        except FAILURES as exc:  # the connection failed since we looked
            self._slots.release()
            raise BackplaneUnavailable(f"redis: {describe(exc)}") from None
        pending = PendingAppend()
        self._answers_in.send_nowait(_InFlight(writer, request, pending, on_answer, job_id, events))
        if waited:
            writer.uncovered += 1
            if not writer.waiting:
                self._send_wait(writer)
        return pending

    def _send_wait(self, writer: _Writer) -> None:
        """Queue a WAIT for every script sent on ``writer`` since its last one (sync);
        if the connection has failed, a WAIT that fails them."""
        request, error = None, None
        try:
            request = writer.connection.create_request(b"WAIT", self._min_replicas, self._wait_ms, decode=False)
        except FAILURES as exc:
            error = BackplaneUnavailable(f"redis: {describe(exc)}")
        writer.uncovered = 0
        writer.waiting = request is not None
        self._answers_in.send_nowait(_Wait(writer, request, error))

    def _current_writer(self) -> _Writer | None:
        """The writer, if its connection is up and on the master the node uses now (with
        Sentinel, a failover moves it: the old master may still answer, READONLY)."""
        writer = self._writer
        if writer is not None and writer.connection.usable and self._node.on_master(writer.connection):
            return writer
        return None

    async def _writer_connection(self) -> _Writer:
        """The writer connection, opened (with the append script loaded) on the
        current master if there is none, it failed or the master moved;
        BackplaneUnavailable if Redis cannot be reached."""
        node = self._node
        if node.stopped or node.nursery is None:
            raise BackplaneUnavailable("the backplane has stopped")
        if (writer := self._current_writer()) is not None:
            return writer
        async with self._writer_lock:
            if (writer := self._current_writer()) is not None:
                return writer
            if self._writer is not None:
                # on the old master: scripts in flight on it fail (not acknowledged)
                self._writer.connection.invalidate()
            connection = node.new_connection()
            try:
                with trio.fail_after(node.config.connect_timeout + node.config.command_timeout):
                    await node.nursery.start(self._run_writer, connection)
                    sha = await connection.create_request(b"SCRIPT", b"LOAD", lua.APPEND, decode=True)
            except (*FAILURES, RuntimeError) as exc:  # RuntimeError: the nursery is closing
                connection.invalidate()
                node.connection_failed()
                raise BackplaneUnavailable(f"redis: {describe(exc)}") from None
            self._writer = _Writer(connection, str(sha))
            return self._writer

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
        """Await the scripts' answers in send order. Without min_replicas each is
        answered (its PendingAppend, its room called back) at once. With it, a stored
        batch waits for the WAIT behind it: enough replicas, and the batches it covers
        are answered and published, in send order; too few (or a failure), and they are
        answered BackplaneUnavailable and never published. A failed script ends the
        writer connection: the ones behind it are not trusted either (they fail as it closes)."""
        try:
            async for item in self._answers:
                if isinstance(item, _Wait):
                    await self._confirm(item)
                else:
                    await self._stored(item)
        finally:
            self._fail_confirming(BackplaneUnavailable("the backplane has stopped"))

    async def _stored(self, item: _InFlight) -> None:
        try:
            answer = await item.request
        except FAILURES as exc:
            item.writer.connection.invalidate()
            self._answer(item, BackplaneUnavailable(f"redis: {describe(exc)}"))
            return
        except BaseException:
            self._answer(item, BackplaneUnavailable("the backplane has stopped"))
            raise
        item.appended = _appended(answer, item.events)
        item.again = _again(answer)
        if self._min_replicas > 0:
            self._confirming.append(item)
        else:
            self._answer(item)

    async def _confirm(self, wait: _Wait) -> None:
        """The WAIT's answer decides every batch stored before it on its connection."""
        writer = wait.writer
        error = wait.error
        if wait.request is not None:
            try:
                replicas = await wait.request
            except FAILURES as exc:
                writer.connection.invalidate()
                error = BackplaneUnavailable(f"redis: {describe(exc)}")
            else:
                if int(replicas) < self._min_replicas:
                    error = BackplaneUnavailable(f"redis: {replicas} of {self._min_replicas} replicas acknowledged "
                                                 f"the write within {self._wait_ms} ms")
            writer.waiting = False
            if writer.uncovered:  # scripts sent while this WAIT was on its way: theirs goes now
                self._send_wait(writer)
        confirming, self._confirming = self._confirming, []
        if error is None:  # this WAIT covers the batches refused earlier on its connection too
            refused, self._refused = self._refused, deque(maxlen=MAX_REFUSED_KEPT)
            for item in refused:
                if item.writer is writer:
                    await self._notify(item)
        for item in confirming:
            if item.writer is not writer:  # stored on a connection that failed before its WAIT came
                self._answer(item, BackplaneUnavailable("redis: the connection closed before the replicas "
                                                        "confirmed the write"))
            elif error is not None:
                self._answer(item, error)
                if wait.request is not None and writer.connection.usable:
                    self._refused.append(item)  # stored: published once replicated (see above)
            else:
                await self._notify(item)
                self._answer(item)

    async def _notify(self, item: _InFlight) -> None:
        """PUBLISH a confirmed batch's new events, as the script would have: on the
        writer connection, so notifications keep the scripts' order (not awaited: nothing
        waits for it); if that connection has failed, on the node's client.
        A repeat's first event goes out again first (its first attempt may have been
        answered 503 and never published: the repeat's 200 must reach the members too;
        rooms drop a seq they already had)."""
        assert item.appended is not None
        epoch, stored = item.appended
        new = [event for event in stored if not isinstance(event, int)]
        runs = [[event] for event in item.again] + ([new] if new else [])
        for run in runs:
            message = notify_message(item.job_id, epoch, run)
            try:
                item.writer.connection.create_request(b"PUBLISH", self.channel, message, decode=False)
            except FAILURES:
                try:
                    await self._node.command(partial(self._node.client.publish, self.channel, message))
                except BackplaneUnavailable as exc:  # stored and replicated: rooms get it at their next resync
                    log.warning("job %s: events %d.. not published live: %s", item.job_id, run[0].seq, exc)

    def _answer(self, item: _InFlight, error: BackplaneUnavailable | None = None) -> None:
        """Answer one batch (stored, or ``error``) and free its slot (sync)."""
        if error is None and item.appended is not None:
            item.pending.resolve(*item.appended)
        else:
            item.pending.fail(error or BackplaneUnavailable("the backplane has stopped"))
        self._slots.release()
        item.on_answer()

    def _fail_confirming(self, error: BackplaneUnavailable) -> None:
        confirming, self._confirming = self._confirming, []
        for item in confirming:
            self._answer(item, error)

    def stopped(self) -> None:
        """Every append still waiting for its answer fails."""
        self._fail_confirming(BackplaneUnavailable("the backplane has stopped"))
        while True:
            try:
                item = self._answers.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            if isinstance(item, _InFlight):
                self._answer(item, BackplaneUnavailable("the backplane has stopped"))

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


def notify_message(job_id: str, epoch: str, events: list[StoredEvent]) -> bytes:
    """The live message of consecutive new events, as the append script publishes it
    (:mod:`.lua`: ``J \\n epoch \\n first_seq (\\n type \\n payload)*``)."""
    parts = [job_id.encode(), epoch.encode(), b"%d" % events[0].seq]
    for event in events:
        parts += [event.type.encode(), event.payload]
    return b"\n".join(parts)


@attrs.define
class _Writer:
    """The connection append scripts go out on, with its WAIT bookkeeping."""

    connection: Any
    sha: str  # the append script's
    uncovered: int = 0  # scripts sent since its last WAIT
    waiting: bool = False  # a WAIT sent whose answer run() has not taken yet


@attrs.define
class _InFlight:
    """An append script sent on ``writer`` whose answer is awaited."""

    writer: _Writer
    request: Any
    pending: PendingAppend
    on_answer: Callable[[], None]
    job_id: str
    events: list[JobEventParts]
    appended: tuple[str, list[StoredEvent | int]] | None = None  # its answer, once stored
    again: list[StoredEvent] = attrs.field(factory=list)  # repeats' first events, published again once confirmed


@attrs.frozen
class _Wait:
    """A WAIT sent on ``writer`` after scripts (``request`` None: it could not be sent,
    ``error`` says why)."""

    writer: _Writer
    request: Any
    error: BackplaneUnavailable | None = None


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


def _again(answer: list[Any]) -> list[StoredEvent]:
    """The repeats' first events the script handed back (publishing deferred), if any."""
    if len(answer) < 4:
        return []
    return [StoredEvent(int(seq), kind.decode(), payload) for seq, kind, payload in answer[3]]


class _Started:
    """A task status that remembers whether ``started`` was called."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self.status = status
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self.status.started(value)

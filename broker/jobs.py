"""Job rooms: one actor per job (PROTOCOL.md section 3).

A job room owns its members, the job's ``seq``, a bounded history and the latest
``job_status``. Everything about a job happens in its mailbox order, so a join's
replay and the live events after it can neither overlap nor leave a gap.

Events are committed to the store before they are sent to anyone, so every seq a
client has seen survives a restart and is never reused. The publishers are answered
right after the commit, before the fan-out: a publisher never waits for N writes.
Each event is encoded and framed once; the room hands the same bytes to every member
with ``send_frame_nowait``, and a member whose outbox is full evicts itself (4003).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Protocol

import attrs
import trio

from actors import Reply, Supervisor

from .config import JobsConfig
from .metrics import Metrics
from .protocols import CloseCode, ErrorCode, JobEvent, encode_job_event, error_message, joined_message, text_frame
from .rooms import RoomActor, RoomSupervisor, RoomUnavailable
from .store import SeqConflict, Store, StoredEvent, StoreError

log = logging.getLogger("broker.jobs")

GATHER_TICKS = 3  # at most this many scheduler ticks spent gathering a publish batch


class Member(Protocol):
    """What a room needs of a connection."""

    id: str
    closed: bool  # true once the connection is closing: the room drops it

    def send_frame_nowait(self, frame: bytes, force: bool = False, now: float | None = None) -> bool:
        """Queue ``frame``; False if the member is gone (it then leaves the room).
        ``now``: the current time, read once per fan-out instead of once per member."""
        ...

    def evict(self, code: int, reason: str, metric: str) -> None: ...


@attrs.frozen
class Join:
    member: Member
    last_seq: int | None
    reply: Reply[int]


@attrs.frozen
class Leave:
    member: Member
    reply: Reply[None] | None = None


@attrs.frozen
class Publish:
    event: JobEvent
    reply: Reply[int]


@attrs.define
class _Sent:
    seq: int
    frame: bytes


class JobRoom(RoomActor):
    def __init__(self, job_id: str, jobs: JobRooms) -> None:
        super().__init__(job_id, jobs.rooms, jobs.config.room_inbox_size, jobs.config.room_idle_timeout)
        self.job_id = job_id
        self._jobs = jobs
        self._config = jobs.config
        self.members: dict[str, Member] = {}
        self.seq = 0
        self.history: deque[_Sent] = deque(maxlen=self._config.history_size)
        self.latest_status: _Sent | None = None
        self._last_batch = 1  # publishes in the last batch: how many to expect back

    async def load(self) -> None:
        snapshot = await self._jobs.store.load_job(self.job_id, self._config.history_size)
        self.seq = snapshot.last_seq
        self.history.extend(_Sent(e.seq, text_frame(e.payload)) for e in snapshot.events)
        if snapshot.latest_status is not None:
            self.latest_status = _Sent(snapshot.latest_status.seq, text_frame(snapshot.latest_status.payload))

    async def handle(self, command: Join | Leave | Publish) -> Join | Leave | Publish | None:
        if isinstance(command, Publish):
            await self._gather_publishers()
            run, leftover = self.inbox.receive_run_nowait(
                command, lambda c: isinstance(c, Publish), self._config.publish_batch_max
            )
            self._last_batch = len(run)
            await self.handle_batch(run, self._publish(run))
            return leftover
        if isinstance(command, Join):
            try:
                self._join(command)
            except BaseException:
                self.reject(command, RoomUnavailable(f"room {self.key} failed"))
                raise
        else:
            self.members.pop(command.member.id, None)
            if command.reply is not None:
                command.reply.set(None)
        return None

    async def _gather_publishers(self) -> None:
        """Let publishers that are about to publish do so before the batch is taken: the
        ones answered by the last batch need a few scheduler ticks (send the answer, read
        the next request) before their next event arrives. Up to GATHER_TICKS
        checkpoints (microseconds) while fewer are queued than the last batch had buy one
        commit and one write per member for many events instead of one each. After a
        batch of one (a lone sequential publisher, waiting for its answer) no tick is
        spent: there is nobody to gather."""
        for _ in range(GATHER_TICKS):
            if self.inbox.stats().depth + 1 >= self._last_batch:  # as many as last time are here
                return
            await trio.lowlevel.checkpoint()

    def may_stop(self) -> bool:
        for member_id in [m.id for m in self.members.values() if m.closed]:
            del self.members[member_id]
        return not self.members

    def on_crash(self) -> None:
        for member in list(self.members.values()):
            member.evict(CloseCode.INTERNAL, "room failed", "internal_error")

    async def _publish(self, batch: list[Publish]) -> None:
        now = time.time()
        first_seq = self.seq + 1
        stored = [
            StoredEvent(first_seq + i, p.event.type, encode_job_event(p.event, first_seq + i, now))
            for i, p in enumerate(batch)
        ]
        try:
            await self._jobs.store.append_job_events(self.job_id, stored, keep=self._config.history_size)
        except Exception as exc:
            log.error("job %s: %d events not stored: %s", self.job_id, len(batch), exc)
            if isinstance(exc, SeqConflict):
                await self._catch_up()
            for publish in batch:
                publish.reply.fail(exc)
            return
        frames = self._record(stored)
        for publish, event in zip(batch, stored, strict=True):
            publish.reply.set(event.seq)
        self._jobs.metrics.events_published.inc(len(batch))
        if self.members:
            # Answer first: the publishers' 200s go out (and their next events come in)
            # before the fan-out's N writes. Nothing else of this room runs meanwhile, so
            # members still get every event in seq order; shielded, so it always happens.
            await trio.lowlevel.cancel_shielded_checkpoint()
        self._fan_out(frames, len(stored))

    async def _catch_up(self) -> None:
        """The store holds seqs this room has not sent (another node's room, or a commit
        whose answer was lost): send them to the members and continue after them, so the
        publisher's retry gets the next free seq."""
        try:
            snapshot = await self._jobs.store.load_job(self.job_id, self._config.history_size)
        except StoreError:
            return  # the next conflict tries again
        missed = [event for event in snapshot.events if event.seq > self.seq]
        if missed:
            self._fan_out(self._record(missed), len(missed))
        latest = snapshot.latest_status
        if latest is not None and (self.latest_status is None or latest.seq > self.latest_status.seq):
            self.latest_status = _Sent(latest.seq, text_frame(latest.payload))
        self.seq = max(self.seq, snapshot.last_seq)

    def _record(self, stored: list[StoredEvent]) -> bytes:
        """Committed events (ascending seq) into the history; returns their frames, to be
        fanned out next. The whole batch goes to each member in one write: one syscall
        per member however many events (frames are whole, so the bytes concatenate)."""
        self.seq = stored[-1].seq
        frames = []
        for event in stored:
            item = _Sent(event.seq, text_frame(event.payload))
            frames.append(item.frame)
            self.history.append(item)
            if event.type == "job_status":
                self.latest_status = item
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def _fan_out(self, frames: bytes, count: int) -> None:
        delivered = 0
        gone = []
        now = trio.current_time()
        for member in self.members.values():
            if member.send_frame_nowait(frames, now=now):
                delivered += 1
            else:
                gone.append(member.id)
        for member_id in gone:
            del self.members[member_id]
        self._jobs.metrics.messages_out.inc(delivered * count)

    def _join(self, join: Join) -> None:
        member, last_seq = join.member, join.last_seq
        frames: list[bytes] = []
        if last_seq is None:
            if self.latest_status is not None:
                frames.append(self.latest_status.frame)
        elif last_seq > self.seq or (last_seq < self.seq and not self._history_reaches(last_seq)):
            oldest = self.history[0].seq if self.history else self.seq + 1
            message = (
                f"lastSeq {last_seq} is ahead of this job's seq {self.seq}"
                if last_seq > self.seq
                else f"history starts at seq {oldest}; events after {last_seq} up to {oldest - 1} are gone"
            )
            frames.append(text_frame(
                error_message(ErrorCode.HISTORY_GAP, message, jobId=self.job_id, lastSeq=last_seq, firstSeq=oldest)
            ))
            if self.latest_status is not None:
                frames.append(self.latest_status.frame)
        else:
            frames.extend(item.frame for item in self.history if item.seq > last_seq)
        frames.append(text_frame(joined_message(self.job_id, self.seq)))
        for frame in frames:
            if not member.send_frame_nowait(frame):
                join.reply.set(self.seq)
                return
        self._jobs.metrics.messages_out.inc(len(frames) - 1)
        self.members[member.id] = member
        join.reply.set(self.seq)

    def _history_reaches(self, last_seq: int) -> bool:
        return bool(self.history) and self.history[0].seq <= last_seq + 1


class JobRooms:
    """The jobs' room supervisor and the API the rest of the broker uses."""

    def __init__(self, supervisor: Supervisor, store: Store, config: JobsConfig, metrics: Metrics) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.rooms: RoomSupervisor[JobRoom] = RoomSupervisor(
            supervisor, "job", lambda key: JobRoom(key, self), metrics, config.max_rooms
        )

    def __len__(self) -> int:
        return len(self.rooms)

    def room(self, job_id: str) -> JobRoom:
        return self.rooms.room(job_id)

    async def publish(self, event: JobEvent) -> int:
        """Store and fan out ``event``; returns its seq once it is committed (the fan-out
        follows at once, in seq order)."""
        reply: Reply[int] = Reply()
        await self.rooms.send(event.job_id, Publish(event, reply))
        return await reply.wait()

    async def publish_many(self, events: list[JobEvent]) -> list[int]:
        """Publish in order (per job); returns the seqs once all are committed."""
        replies = []
        for event in events:
            reply: Reply[int] = Reply()
            await self.rooms.send(event.job_id, Publish(event, reply))
            replies.append(reply)
        return [await reply.wait() for reply in replies]

    async def join(self, job_id: str, member: Member, last_seq: int | None) -> int:
        """Add ``member``; the room sends the replay (or latest status) then ``joined``.
        Returns the job's seq at the time of joining."""
        reply: Reply[int] = Reply()
        await self.rooms.send(job_id, Join(member, last_seq, reply))
        return await reply.wait()

    async def leave(self, job_id: str, member: Member) -> None:
        """Remove ``member`` and return once the room has: no event of the job is sent
        to it after this returns. Waits while the room's inbox is full (backpressure on
        this caller only). A room that is not running, or ends first, has no members."""
        reply: Reply[None] = Reply()
        if await self.rooms.send_if_running(job_id, Leave(member, reply)):
            try:
                await reply.wait()
            except RoomUnavailable:
                pass

    def leave_nowait(self, job_id: str, member: Member) -> None:
        """Best effort: if the room is busy, the member is dropped at its next delivery."""
        self.rooms.send_if_running_nowait(job_id, Leave(member))

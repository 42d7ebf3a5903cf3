"""Job rooms: one actor per job, started on first use, stopped when idle.

A room owns its members, the job's ``seq``, a bounded history and the latest
``job_status``. Everything about a job happens in its room's mailbox order, so a
join's replay and the live events after it can neither overlap nor leave a gap.

Wait on the way in, never on the way out: publishers wait on the room's bounded
mailbox; the room never awaits a member. It encodes and frames each event once and
hands the same bytes to every member with ``send_frame_nowait``; a member whose
outbox is full evicts itself as a slow consumer (4003) and leaves the room.

Events are committed to the store before they are sent to anyone, so every ``seq``
a client has seen survives a broker restart and is never reused.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Protocol

import attrs
import trio

from actors import Mailbox, MailboxClosed, MailboxFull, Reply, Supervisor

from .config import JobsConfig
from .metrics import Metrics
from .protocols import CloseCode, ErrorCode, JobEvent, encode_job_event, error_message, joined_message, text_frame
from .store import Store, StoredEvent

log = logging.getLogger("broker.rooms")


class Member(Protocol):
    """What a room needs of a connection."""

    id: str
    closed: bool  # true once the connection is closing: the room drops it

    def send_frame_nowait(self, frame: bytes) -> bool:
        """Queue ``frame``; False if the member is gone (it then leaves the room)."""
        ...

    def evict(self, code: int, reason: str, metric: str) -> None: ...


class RoomUnavailable(Exception):
    """The room stopped before it could answer (crash or shutdown)."""


@attrs.frozen
class Join:
    member: Member
    last_seq: int | None
    reply: Reply[int]


@attrs.frozen
class Leave:
    member: Member


@attrs.frozen
class Publish:
    event: JobEvent
    reply: Reply[int]


RoomCommand = Join | Leave | Publish


@attrs.define
class _Sent:
    seq: int
    frame: bytes


class JobRoom:
    """The actor for one job. Created and run by :class:`JobRooms`."""

    def __init__(self, job_id: str, rooms: JobRooms) -> None:
        self.job_id = job_id
        self._rooms = rooms
        self._config = rooms.config
        self.inbox: Mailbox[RoomCommand] = Mailbox(self._config.room_inbox_size)
        self.members: dict[str, Member] = {}
        self.seq = 0
        self.history: deque[_Sent] = deque(maxlen=self._config.history_size)
        self.latest_status: _Sent | None = None

    async def run(self) -> None:
        """Load the job from the store, then serve commands until idle for
        ``room_idle_timeout`` with no members. On a crash, members are closed with 1011
        (they reconnect and resume with lastSeq) and queued requests fail."""
        try:
            snapshot = await self._rooms.store.load_job(self.job_id, self._config.history_size)
            self.seq = snapshot.last_seq
            self.history.extend(_Sent(e.seq, text_frame(e.payload)) for e in snapshot.events)
            if snapshot.latest_status is not None:
                self.latest_status = _Sent(snapshot.latest_status.seq, text_frame(snapshot.latest_status.payload))
            await self._serve()
        except Exception:
            for member in list(self.members.values()):
                member.evict(CloseCode.INTERNAL, "room failed", "internal_error")
            raise
        finally:
            self._rooms._forget(self)
            self._fail_queued()

    async def _serve(self) -> None:
        idle_timeout = self._config.room_idle_timeout
        while True:
            with trio.move_on_after(idle_timeout) as idle:
                command: RoomCommand | None = await self.inbox.receive()
            if idle.cancelled_caught:
                self._purge_gone()
                # no await between this check and _forget(): no command can slip in
                if not self.members and self.inbox.is_empty():
                    return
                continue
            while command is not None:
                if isinstance(command, Publish):
                    run, command = self.inbox.receive_run_nowait(
                        command, lambda c: isinstance(c, Publish), self._config.publish_batch_max
                    )
                    await self._publish(run)  # type: ignore[arg-type]
                elif isinstance(command, Join):
                    self._join(command)
                    command = None
                else:
                    self.members.pop(command.member.id, None)
                    command = None

    async def _publish(self, batch: list[Publish]) -> None:
        now = time.time()
        first_seq = self.seq + 1
        sent = []
        for offset, publish in enumerate(batch):
            payload = encode_job_event(publish.event, first_seq + offset, now)
            sent.append((publish, StoredEvent(first_seq + offset, publish.event.type, payload)))
        try:
            await self._rooms.store.append_job_events(
                self.job_id, [stored for _, stored in sent], keep=self._config.history_size
            )
        except Exception as exc:
            log.error("job %s: %d events not stored: %s", self.job_id, len(batch), exc)
            for publish, _ in sent:
                publish.reply.fail(exc)
            return
        self.seq = first_seq + len(batch) - 1
        for publish, stored in sent:
            frame = text_frame(stored.payload)
            item = _Sent(stored.seq, frame)
            self.history.append(item)
            if stored.type == "job_status":
                self.latest_status = item
            self._fan_out(frame)
            publish.reply.set(stored.seq)
        self._rooms.metrics.events_published.inc(len(batch))

    def _fan_out(self, frame: bytes) -> None:
        delivered = 0
        gone = []
        for member in self.members.values():
            if member.send_frame_nowait(frame):
                delivered += 1
            else:
                gone.append(member.id)
        for member_id in gone:
            del self.members[member_id]
        self._rooms.metrics.messages_out.inc(delivered)

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
            frames.append(
                text_frame(
                    error_message(ErrorCode.HISTORY_GAP, message, jobId=self.job_id, lastSeq=last_seq, firstSeq=oldest)
                )
            )
            if self.latest_status is not None:
                frames.append(self.latest_status.frame)
        else:
            frames.extend(item.frame for item in self.history if item.seq > last_seq)
        frames.append(text_frame(joined_message(self.job_id, self.seq)))
        for frame in frames:
            if not member.send_frame_nowait(frame):
                join.reply.set(self.seq)
                return
        self._rooms.metrics.messages_out.inc(len(frames) - 1)
        self.members[member.id] = member
        join.reply.set(self.seq)

    def _history_reaches(self, last_seq: int) -> bool:
        return bool(self.history) and self.history[0].seq <= last_seq + 1

    def _purge_gone(self) -> None:
        for member_id in [m.id for m in self.members.values() if m.closed]:
            del self.members[member_id]

    def _fail_queued(self) -> None:
        while True:
            try:
                command = self.inbox.receive_nowait()
            except (trio.WouldBlock, MailboxClosed):
                break
            if isinstance(command, (Join, Publish)):
                command.reply.fail(RoomUnavailable(f"room {self.job_id} stopped"))
        self.inbox.close()


class JobRooms:
    """The room supervisor for jobs: finds or starts the room of a job (a sync,
    atomic lookup) and routes commands to it."""

    def __init__(self, supervisor: Supervisor, store: Store, config: JobsConfig, metrics: Metrics) -> None:
        self._supervisor = supervisor
        self.store = store
        self.config = config
        self.metrics = metrics
        self._rooms: dict[str, JobRoom] = {}
        metrics.track(metrics.rooms_open.labels("job"), lambda: len(self._rooms))

    def __len__(self) -> int:
        return len(self._rooms)

    def room(self, job_id: str) -> JobRoom:
        """The running room of ``job_id``, started now if there is none."""
        room = self._rooms.get(job_id)
        if room is None:
            room = JobRoom(job_id, self)
            self._rooms[job_id] = room
            self._supervisor.spawn(room.run, name=f"job-room:{job_id}")
        return room

    def _forget(self, room: JobRoom) -> None:
        if self._rooms.get(room.job_id) is room:
            del self._rooms[room.job_id]

    async def _send(self, job_id: str, command: RoomCommand) -> None:
        for _ in range(3):
            room = self.room(job_id)
            try:
                room.inbox.send_nowait(command)  # no await since the lookup: the room is live
                return
            except MailboxFull:
                try:
                    await room.inbox.send(command)  # backpressure on this caller only
                    return
                except MailboxClosed:
                    continue
            except MailboxClosed:
                continue
        raise RoomUnavailable(f"room {job_id} is not accepting commands")

    async def publish(self, event: JobEvent) -> int:
        """Store and fan out ``event``; returns its seq once it is committed."""
        reply: Reply[int] = Reply()
        await self._send(event.job_id, Publish(event, reply))
        return await reply.wait()

    async def publish_many(self, events: list[JobEvent]) -> list[int]:
        """Publish in order (per job); returns the seqs once all are committed."""
        replies = []
        for event in events:
            reply: Reply[int] = Reply()
            await self._send(event.job_id, Publish(event, reply))
            replies.append(reply)
        return [await reply.wait() for reply in replies]

    async def join(self, job_id: str, member: Member, last_seq: int | None) -> int:
        """Add ``member``; the room sends the replay (or latest status) and ``joined``.
        Returns the job's seq at the time of joining."""
        reply: Reply[int] = Reply()
        await self._send(job_id, Join(member, last_seq, reply))
        return await reply.wait()

    def leave_nowait(self, job_id: str, member: Member) -> None:
        """Best effort: if the room is busy the member is dropped at its next delivery."""
        room = self._rooms.get(job_id)
        if room is not None:
            try:
                room.inbox.send_nowait(Leave(member))
            except (MailboxFull, MailboxClosed):
                pass

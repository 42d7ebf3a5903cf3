"""Job rooms: one actor per job and node (docs/PROTOCOL.md section 3).

A job room owns its members, a view of the job's ``seq``, a bounded history and the
latest ``job_status``. Everything about a job happens in its mailbox order, so a
join's replay and the live events after it can neither overlap nor leave a gap.

Events are sequenced and made durable by the backplane's job log (the SQLite store on
one node; Redis in a cluster) before they are sent to anyone, so every seq a client
has seen survives a restart and is never reused. A room sends events strictly in seq
order: its own publishes and the events other nodes published (pushed by the feed as
:class:`Remote`) are merged by seq; a hole the feed cannot fill is read back from the
log (:class:`Resync`). The publishers are answered right after the commit, before
the fan-out: a publisher never waits for N writes. Each event is encoded and framed
once; the room's :class:`~broker.jobs.delivery.Delivery` hands the same bytes to every
member with ``send_frame_nowait`` (in a big room from a delivery task, so the next
events are committed meanwhile and go out together, one write per member), and a
member whose outbox is full evicts itself (4003).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from actors import Reply, Supervisor

from ..cluster import Backplane, JobHistory, PendingAppend
from ..config.loader import JobsConfig
from ..hub.rooms import MailboxClosed, MailboxFull, RoomActor, RoomSupervisor, RoomUnavailable
from ..observability.metrics import Metrics
from ..protocols import CloseCode, ErrorCode, JobEvent, error_message, job_event_parts, joined_message, text_frame
from ..store import SeqConflict, StoredEvent, StoreError
from ..webhooks.sink import EventSink, NoWebhooks
from .delivery import Delivery, Member
from .occupancy import Occupancy
from .presence import RoomPresence

log = logging.getLogger("broker.jobs")

GATHER_TICKS = 3  # at most this many scheduler ticks spent gathering a publish batch
COMMITS_IN_FLIGHT = 8  # publish batches a room has sent to the job log and not seen answered yet


@attrs.frozen
class Join:
    member: Member
    last_seq: int | None
    reply: Reply[int | CatchUp]
    last_epoch: str | None = None
    presence: bool = False  # also stream presence_join / presence_leave
    inline_bytes: int | None = None  # the most replay the room writes at once (None: all of it)


@attrs.frozen
class CatchUp:
    """A join's replay too large to write at once: the member was not added. Its
    connection writes ``frames`` at the pace its outbox drains, then joins again with
    ``last_seq=through_seq`` (the room never waits on a member)."""

    frames: list[bytes]  # the history's own encoded frames, shared, oldest first
    through_seq: int


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


@attrs.frozen
class Remote:
    """Events another node published (pushed by the backplane's feed)."""

    epoch: str
    events: list[StoredEvent]


@attrs.frozen
class Resync:
    """The feed may have missed events: read them from the log."""


@attrs.frozen
class CommitAnswered:
    """A publish batch this room sent to the job log has its answer (pushed by the backplane)."""


@attrs.frozen
class RefreshPresence:
    """Who is in the job may have changed: tell the watchers."""


class JobRoom(RoomActor):
    def __init__(self, job_id: str, jobs: JobRooms) -> None:
        super().__init__(job_id, jobs.rooms, jobs.config.room_inbox_size, jobs.config.room_idle_timeout)
        self.job_id = job_id
        self._jobs = jobs
        self._config = jobs.config
        self.members: dict[str, Member] = {}
        self.epoch: str | None = None
        self.seq = 0
        self.history: deque[_Sent] = deque(maxlen=self._config.history_size)
        self.latest_status: _Sent | None = None
        self._ahead: dict[int, StoredEvent] = {}  # sequenced but not sent yet: an earlier seq is still coming
        self.stale = False  # the feed dropped an event for this room (full inbox): read the log
        self._last_batch = 1  # publishes in the last batch: how many to expect back
        # sent to the job log, oldest first: answered (and sent on) in this order
        self._commits: deque[tuple[list[Publish], PendingAppend]] = deque()
        self.presence = RoomPresence(job_id, jobs.log, self._config.presence_list_max)
        self.presence_due = False  # a presence refresh did not fit in the mailbox
        self._delivery = Delivery(self.members, self._drop, jobs.metrics.messages_out.inc,
                                  self._config.publish_batch_max)
        self._crashed = False
        self.occupancy = Occupancy(job_id, jobs.webhooks, jobs.log, jobs.log.clustered)

    async def run(self) -> None:
        """The room's loop (:meth:`RoomActor.run`) in a nursery of its own, where its
        delivery task runs while there is something to write. Ending the room cancels
        that task, which first writes what is left (broker/jobs/delivery.py); a failing
        delivery task fails the room like a failing command does."""
        async with trio.open_nursery() as nursery:
            self._delivery.spawn = lambda task: nursery.start_soon(self._deliver, task)
            try:
                await super().run()
            finally:
                self._delivery.spawn = None
                nursery.cancel_scope.cancel()

    async def _deliver(self, task: Callable[[], Awaitable[None]]) -> None:
        try:
            await task()
        except Exception:
            self.on_crash()  # first, while the room is still known: its members are closed with 1011
            raise

    async def load(self) -> None:
        self._reset(await self._jobs.log.load_job(self.job_id, self._config.history_size))

    def _reset(self, state: JobHistory) -> None:
        self.epoch = state.epoch
        self.seq = state.last_seq
        self.history.clear()
        self.history.extend(_Sent(e.seq, text_frame(e.payload)) for e in state.events)
        self._ahead.clear()
        self.latest_status = None
        if state.latest_status is not None:
            self.latest_status = _Sent(state.latest_status.seq, text_frame(state.latest_status.payload))

    async def handle(self, command: Join | Leave | Publish | Remote | Resync | RefreshPresence | CommitAnswered,
                     ) -> Any:
        leftover = await self._handle(command)
        if not self.occupancy.settled(bool(self.members)):  # job.occupied / job.vacated webhooks
            await self.occupancy.report(self._member_users())
        return leftover

    def _member_users(self) -> set[str]:
        return {user for member in self.members.values() if (user := getattr(member, "user_id", None)) is not None}

    async def _handle(self, command: Join | Leave | Publish | Remote | Resync | RefreshPresence | CommitAnswered,
                      ) -> Any:
        if self._commits and self._commits[0][1].answered:
            await self._finish_commits()  # its CommitAnswered may not have fitted in the inbox
        if self.stale:
            await self._resync()
        if self.presence_due:
            self.presence_due = False
            await self._refresh_watchers()
        if isinstance(command, Publish):
            await self._gather_publishers()
            # Events of other nodes queued between publishes do not end the batch: they
            # are sequenced already (merged first, by seq), the publishes are not yet, so
            # one commit takes every publish queued. Cut at each feed message, batches
            # stayed at 1-3 events under cross-node load, one Redis round trip each.
            run, passed, leftover = self.inbox.receive_run_past_nowait(
                command, lambda c: isinstance(c, Publish), lambda c: isinstance(c, Remote),
                self._config.publish_batch_max,
            )
            for remote in passed:
                await self._on_remote(remote)
            self._last_batch = len(run)
            await self.handle_batch(run, self._publish(run))
            return leftover
        if isinstance(command, CommitAnswered):
            pass  # finished above
        elif isinstance(command, Remote):
            await self._on_remote(command)
        elif isinstance(command, Resync):
            await self._resync()
        elif isinstance(command, RefreshPresence):
            await self._refresh_watchers()
        elif isinstance(command, Join):
            if command.last_seq is not None and command.last_seq > self.seq and self.epoch is not None:
                # a client coming from another node may have seen events this node's feed
                # has not brought yet: catch up from the log before calling it a gap
                await self._resync()
            try:
                self._delivery.finish()  # the replay covers every seq up to now: nothing may still be queued
                self._join(command)
            except BaseException:
                self.reject(command, RoomUnavailable(f"room {self.key} failed"))
                raise
            if command.presence and command.member.id in self.members:
                await self.presence.watch(command.member)
        else:
            self._drop(command.member.id)
            if command.reply is not None:
                command.reply.set(None)
        return None

    async def _on_remote(self, command: Remote) -> None:
        if command.epoch != self.epoch:
            await self._resync()
        elif self._merge(command.events) and command.events and command.events[-1].seq > self.seq:
            # the feed is in seq order: a seq missing below one it brought is a lost
            # message. Held events that came only from this node's own replies are
            # not: the feed is behind and still brings the seqs before them.
            await self._resync()

    async def _refresh_watchers(self) -> None:
        if self.presence.watchers:
            self._delivery.finish()  # presence changes keep their mailbox order with the events
        await self.presence.refresh()

    def _add(self, member: Member) -> None:
        if member.id not in self.members:
            user_id = getattr(member, "user_id", None)
            if user_id is not None:
                self.presence.arrive(user_id)
        self.members[member.id] = member

    def _drop(self, member_id: str) -> None:
        member = self.members.pop(member_id, None)
        if member is not None:
            user_id = getattr(member, "user_id", None)
            if user_id is not None:
                self.presence.depart(user_id, member_id)

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
            self._drop(member_id)
        if not self.occupancy.settled(bool(self.members)):  # report job.vacated first
            try:
                self.inbox.send_nowait(RefreshPresence())
            except (MailboxFull, MailboxClosed):
                pass
            return False
        return not self.members and not self._commits

    def on_end(self) -> None:
        """Publishers of commits still in flight get RoomUnavailable (their events may
        or may not be stored: never a 200 for them) instead of waiting forever."""
        while self._commits:
            batch, _ = self._commits.popleft()
            for publish in batch:
                self.reject(publish, RoomUnavailable(f"room {self.key} stopped"))

    def on_crash(self) -> None:
        if self._crashed:
            return
        self._crashed = True
        self._delivery.abandon()
        self.presence.depart_all()
        for member in list(self.members.values()):
            member.evict(CloseCode.INTERNAL, "room failed", "internal_error")

    async def _publish(self, batch: list[Publish]) -> None:
        """Send ``batch`` to the job log without waiting for its answer: while it is on
        its way the room takes the next publishes and sends them behind it (the log
        applies one room's appends in send order, so seqs follow the publishes' order).
        At most COMMITS_IN_FLIGHT batches are on their way; beyond that the room waits
        for the oldest answer."""
        while len(self._commits) >= COMMITS_IN_FLIGHT:
            await self._commits[0][1].wait()
            await self._finish_commits()
        now = time.time()
        parts = [job_event_parts(p.event, now) for p in batch]
        try:
            pending = await self._jobs.log.send_job_events(
                self.job_id, parts, keep=self._config.history_size, last_seq=self.seq, on_answer=self._answered,
            )
        except Exception as exc:
            await self._not_stored(batch, exc)
            return
        self._commits.append((batch, pending))
        await self._finish_commits()

    def _answered(self) -> None:
        """Called by the backplane when a commit's answer comes: wake the room. If its
        inbox is full it is busy, and looks at its commits before every command."""
        try:
            self.inbox.send_nowait(CommitAnswered())
        except (MailboxFull, MailboxClosed):
            pass

    async def _finish_commits(self) -> None:
        """Answer the publishers of each commit answered so far, oldest first (send
        order), and send its events on."""
        while self._commits and self._commits[0][1].answered:
            batch, pending = self._commits.popleft()
            try:
                epoch, stored = pending.result()
            except Exception as exc:
                await self._not_stored(batch, exc)
                continue
            for publish, event in zip(batch, stored, strict=True):
                publish.reply.set(event if isinstance(event, int) else event.seq)
            # a repeated idempotency key: answered with the first seq, nothing stored or sent
            new_events = [event for event in stored if not isinstance(event, int)]
            self._jobs.metrics.events_published.inc(len(new_events))
            if self.members:
                # Answer first: the publishers' 200s go out (and their next events come in)
                # before the fan-out's N writes. Nothing else of this room runs meanwhile, so
                # members still get every event in seq order; shielded, so it always happens.
                await trio.lowlevel.cancel_shielded_checkpoint()
            if epoch != self.epoch:
                await self._resync()  # the coordination state was lost and made anew
            else:
                # held back if other nodes' events come first: the feed brings them (or a resync)
                self._merge(new_events)

    async def _not_stored(self, batch: list[Publish], exc: Exception) -> None:
        log.error("job %s: %d events not stored: %s", self.job_id, len(batch), exc)
        if isinstance(exc, SeqConflict):
            # the store holds seqs this room has not sent (another process writing the
            # job, or a commit whose answer was lost): send them on and continue after
            # them, so the publisher's retry gets the next free seq
            await self._resync()
        for publish in batch:
            publish.reply.fail(exc)

    def _merge(self, events: list[StoredEvent]) -> bool:
        """Send every event that continues the job's seq, in seq order, holding those
        that come early; True if some are still held (an earlier seq is missing)."""
        ahead = self._ahead
        for event in events:
            if event.seq > self.seq:
                ahead[event.seq] = event
        frames = []
        while self.seq + 1 in ahead:
            event = ahead.pop(self.seq + 1)
            self.seq = event.seq
            item = _Sent(event.seq, text_frame(event.payload))
            frames.append(item.frame)
            self.history.append(item)
            if event.type == "job_status":
                self.latest_status = item
        if frames:
            # The whole batch goes to each member in one write: one syscall per member
            # however many events (frames are whole, so the bytes just concatenate).
            self._fan_out(frames[0] if len(frames) == 1 else b"".join(frames), len(frames))
        return bool(ahead)

    async def _resync(self) -> None:
        """Read what this room missed from the log and send it on. If the log no longer
        holds it (or its epoch changed), members get HISTORY_GAP and then what there is.
        If the log is unreachable, the room stays stale and tries again later."""
        self.stale = False
        try:
            state = await self._jobs.log.read_job_after(self.job_id, self.seq, self._config.history_size)
        except StoreError as exc:
            log.warning("job %s: resync failed: %s", self.job_id, exc)
            self.stale = True
            return
        if state.epoch != self.epoch:
            log.warning("job %s: epoch %s replaced %s: seqs restarted", self.job_id, state.epoch, self.epoch)
            try:
                fresh = await self._jobs.log.load_job(self.job_id, self._config.history_size)
            except StoreError:
                self.stale = True
                return
            self._gap_to_members(f"coordination state was lost: epoch {fresh.epoch} starts seqs again")
            first = fresh.events[0].seq if fresh.events else fresh.last_seq + 1
            self._reset(attrs.evolve(fresh, last_seq=first - 1, events=[]))
            self._merge(fresh.events)
            return
        if state.events and state.events[0].seq > self.seq + 1 or not state.events and state.last_seq > self.seq:
            first = state.events[0].seq if state.events else state.last_seq + 1
            self._gap_to_members(f"events {self.seq + 1} to {first - 1} are gone from the history")
            self._ahead.clear()
            self.seq = first - 1
        self._merge(state.events)

    def _gap_to_members(self, message: str) -> None:
        frame = text_frame(error_message(ErrorCode.HISTORY_GAP, message, jobId=self.job_id, lastSeq=self.seq))
        self._fan_out(frame, 1)

    def _fan_out(self, frames: bytes, count: int) -> None:
        self._delivery.send(frames, count)

    def _join(self, join: Join) -> None:
        member, last_seq = join.member, join.last_seq
        frames: list[bytes] = []
        if last_seq is None:
            if self.latest_status is not None:
                frames.append(self.latest_status.frame)
        elif join.last_epoch is not None and self.epoch is not None and join.last_epoch != self.epoch:
            frames.append(text_frame(error_message(
                ErrorCode.HISTORY_GAP, f"epoch {join.last_epoch} is gone: seqs restarted in epoch {self.epoch}",
                jobId=self.job_id, lastSeq=last_seq, epoch=self.epoch,
            )))
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
            replay = [item for item in self.history if item.seq > last_seq]
            if join.inline_bytes is not None and sum(len(item.frame) for item in replay) > join.inline_bytes:
                join.reply.set(CatchUp([item.frame for item in replay], replay[-1].seq))
                return
            frames.extend(item.frame for item in replay)
        frames.append(text_frame(joined_message(self.job_id, self.seq, self.epoch)))
        for frame in frames:
            if not member.send_frame_nowait(frame):
                join.reply.set(self.seq)
                return
        self._jobs.metrics.messages_out.inc(len(frames) - 1)
        self._add(member)
        join.reply.set(self.seq)

    def _history_reaches(self, last_seq: int) -> bool:
        return bool(self.history) and self.history[0].seq <= last_seq + 1


class JobRooms:
    """The jobs' room supervisor and the API the rest of the broker uses; also the
    backplane's :class:`~broker.cluster.JobFeed` (events of other nodes)."""

    def __init__(self, supervisor: Supervisor, log: Backplane, config: JobsConfig, metrics: Metrics,
                 webhooks: EventSink | None = None) -> None:
        self.log = log
        self.webhooks: EventSink = webhooks if webhooks is not None else NoWebhooks()  # job.occupied / job.vacated
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
        """Store and fan out ``event``; returns its seq once it is durable."""
        reply: Reply[int] = Reply()
        await self.rooms.send(event.job_id, Publish(event, reply))
        return await reply.wait()

    async def publish_many(self, events: list[JobEvent]) -> list[int]:
        """Publish in order (per job); returns the seqs once all are durable."""
        return [await reply.wait() for reply in await self.submit_many(events)]

    async def submit_many(self, events: list[JobEvent]) -> list[Reply[int]]:
        """Queue ``events`` in their rooms, in order, waiting only while a room's inbox is
        full; each reply gives its event's seq once durable. What one caller queues one
        call after another is sequenced in that order (per job), answers pending or not."""
        replies = []
        for event in events:
            reply: Reply[int] = Reply()
            await self.rooms.send(event.job_id, Publish(event, reply))
            replies.append(reply)
        return replies

    async def join(self, job_id: str, member: Member, last_seq: int | None, last_epoch: str | None = None,
                   presence: bool = False, inline_bytes: int | None = None) -> int | CatchUp:
        """Add ``member``; the room sends the replay (or latest status) then ``joined``
        (then, with ``presence``, the list of users and each change after it).
        Returns the job's seq at the time of joining, or, when the replay after
        ``last_seq`` is over ``inline_bytes``, a :class:`CatchUp` (member not added)."""
        reply: Reply[int | CatchUp] = Reply()
        # a join never starts one of the rooms kept for publishes (the backend's way in)
        await self.rooms.send(job_id, Join(member, last_seq, reply, last_epoch, presence, inline_bytes),
                              reserve=self.config.rooms_reserved_for_publishes)
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

    async def presence(self, job_id: str) -> tuple[int, list[str]]:
        """(count, the first ``presence_list_max`` users, sorted) in ``job_id`` on every
        node. Raises StoreError if the backplane is unreachable."""
        users = sorted(await self.log.job_presence(job_id))
        return len(users), users[:self.config.presence_list_max]

    def leave_nowait(self, job_id: str, member: Member) -> None:
        """Best effort: if the room is busy, the member is dropped at its next delivery."""
        self.rooms.send_if_running_nowait(job_id, Leave(member))

    # -- the backplane's feed (sync, never blocks) ---------------------------

    def deliver_remote(self, job_id: str, epoch: str, events: list[StoredEvent]) -> None:
        """Events of a job published anywhere: only a running room cares (a room that
        starts later reads them from the log). A full room marks itself stale and reads
        them back from the log: the feed never waits on a room."""
        room = self.rooms.running(job_id)
        if room is not None:
            self._tell(room, Remote(epoch, events))

    def resync_all(self) -> None:
        for room in self.rooms.running_rooms():
            self._tell(room, Resync())

    def presence_changed(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            room = self.rooms.running(job_id)
            if room is not None:
                self._refresh_presence(room)

    def presence_changed_all(self) -> None:
        for room in self.rooms.running_rooms():
            self._refresh_presence(room)

    def _refresh_presence(self, room: JobRoom) -> None:
        """One refresh queued per room at a time, and only for rooms with watchers."""
        if room.presence.watchers and not room.presence.refresh_queued:
            room.presence.refresh_queued = True
            try:
                room.inbox.send_nowait(RefreshPresence())
            except MailboxFull:
                room.presence_due = True
            except MailboxClosed:
                pass

    def _tell(self, room: JobRoom, command: Remote | Resync) -> None:
        try:
            room.inbox.send_nowait(command)
        except MailboxFull:
            room.stale = True
        except MailboxClosed:
            pass  # ending: a new room loads from the log

"""A job room: one actor per job and node (docs/PROTOCOL.md section 3), under
:class:`~broker.jobs.job_rooms.JobRooms`; its commands are in :mod:`.commands`.

A job room owns its members, a view of the job's ``seq``, a bounded history and the
latest ``job_status``. Everything about a job happens in its mailbox order, so a
join's replay and the live events after it can neither overlap nor leave a gap.

Events are sequenced and made durable by the backplane's job log (the store, SQLite
or PostgreSQL, without Redis; Redis in a cluster) before they are sent to anyone, so every seq a client
has seen survives a restart and is never reused. A room sends events strictly in seq
order: its own publishes and the events other nodes published (pushed by the feed as
:class:`~.commands.Remote`) are merged by seq; a hole the feed cannot fill is read back
from the log (:class:`~.commands.Resync`). The publishers are answered right after the commit, before
the fan-out: a publisher never waits for N writes. Each event is encoded and framed
once; the room's :class:`~broker.jobs.delivery.Delivery` hands the same bytes to every
member with ``send_frame_nowait`` (in a big room from a delivery task, so the next
events are committed meanwhile and go out together, one write per member), and a
member whose outbox is full evicts itself (4003).

At the 400-line guideline: one actor whose handlers share its state (seq, history,
members, delivery); its commands, the JobRooms API and replay are already modules of
their own (:mod:`.commands`, :mod:`.job_rooms`, :mod:`.replay`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ..cluster import BackplaneUnavailable, JobHistory, JobLog, JobOccupancy, LocalOccupancy, PendingAppend, Presence
from ..config.loader import JobsConfig
from ..hub.rooms import MailboxClosed, MailboxFull, RoomActor, RoomSupervisor, RoomUnavailable
from ..observability.metrics import Metrics
from ..protocols import CloseCode, ErrorCode, error_message, job_event_parts, text_frame
from ..store import SeqConflict, StoredEvent, StoreError
from ..webhooks.sink import EventSink, NoWebhooks
from .commands import CatchUp, CommitAnswered, JobCommand, Join, Leave, Publish, RefreshPresence, Remote, Resync
from .delivery import Delivery, Member
from .occupancy import Occupancy
from .presence import RoomPresence
from .replay import SentEvent, epoch_of, join_frames

log = logging.getLogger("broker.jobs")

GATHER_TICKS = 3  # at most this many scheduler ticks spent gathering a publish batch
COMMITS_IN_FLIGHT = 8  # publish batches a room has sent to the job log and not seen answered yet


@attrs.frozen
class RoomDeps:
    """What every job room uses, given by :class:`~broker.jobs.job_rooms.JobRooms`."""

    rooms: RoomSupervisor[JobRoom]
    job_log: JobLog
    presence: Presence  # the backplane's role: who is in the job on every node
    config: JobsConfig
    metrics: Metrics
    webhooks: EventSink = attrs.field(factory=NoWebhooks)  # job.occupied / job.vacated
    occupancy: JobOccupancy = attrs.field(factory=LocalOccupancy)  # the backplane's role: watchers on every node


class JobRoom(RoomActor):
    def __init__(self, job_id: str, jobs: RoomDeps) -> None:
        super().__init__(job_id, jobs.rooms, jobs.config.room_inbox_size, jobs.config.room_idle_timeout)
        self.job_id = job_id
        self._jobs = jobs
        self._config = jobs.config
        self.members: dict[str, Member] = {}
        self.epoch: str | None = None
        self.seq = 0
        self.history: deque[SentEvent] = deque(maxlen=self._config.history_size)
        self.latest_status: SentEvent | None = None
        self._ahead: dict[int, StoredEvent] = {}  # sequenced but not sent yet: an earlier seq is still coming
        self.stale = False  # the feed dropped an event for this room (full inbox): read the log
        self._last_batch = 1  # publishes in the last batch: how many to expect back
        # sent to the job log, oldest first: answered (and sent on) in this order
        self._commits: deque[tuple[list[Publish], PendingAppend]] = deque()
        self.presence = RoomPresence(job_id, jobs.presence, self._config.presence_list_max)
        self.presence_due = False  # a presence refresh did not fit in the mailbox
        self._delivery = Delivery(self.members, self._drop, jobs.metrics.messages_out.inc,
                                  self._config.publish_batch_max)
        self._crashed = False
        self.occupancy = Occupancy(job_id, jobs.webhooks, jobs.occupancy)

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
        self._reset(await self._jobs.job_log.load_job(self.job_id, self._config.history_size))

    def _reset(self, state: JobHistory) -> None:
        self.epoch = state.epoch
        self.seq = state.last_seq
        self.history.clear()
        self.history.extend(SentEvent(e.seq, text_frame(e.payload)) for e in state.events)
        self._ahead.clear()
        self.latest_status = None
        if state.latest_status is not None:
            self.latest_status = SentEvent(state.latest_status.seq, text_frame(state.latest_status.payload))

    async def handle(self, command: JobCommand) -> Any:
        leftover = await self._handle(command)
        if not self.occupancy.settled(bool(self.members)):  # job.occupied / job.vacated webhooks
            await self.occupancy.report(bool(self.members))
        return leftover

    async def _handle(self, command: JobCommand) -> Any:
        if self._commits and self._commits[0][1].answered:
            await self._finish_commits()  # its CommitAnswered may not have fitted in the inbox
        if self.stale:
            await self._resync()
        if self.presence_due:
            self.presence_due = False
            await self._refresh_watchers()
        return await _HANDLERS[type(command)](self, command)

    async def _on_publish(self, command: Publish) -> JobCommand | None:
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

    async def _on_commit_answered(self, command: CommitAnswered) -> None:
        """Nothing more: :meth:`handle` finishes answered commits before every command."""

    async def _on_resync(self, command: Resync) -> None:
        await self._resync()

    async def _on_refresh_presence(self, command: RefreshPresence) -> None:
        await self._refresh_watchers()

    async def _on_join(self, command: Join) -> None:
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

    async def _on_leave(self, command: Leave) -> None:
        self._drop(command.member.id)
        if command.reply is not None:
            command.reply.set(None)

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
        or may not be stored: never a 200 for them) instead of waiting forever. A room
        that ends with members counted for occupancy (it failed) gives them up."""
        self.occupancy.ended()
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
            pending = await self._jobs.job_log.send_job_events(
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
            item = SentEvent(event.seq, text_frame(event.payload))
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
            state = await self._jobs.job_log.read_job_after(self.job_id, self.seq, self._config.history_size)
        except (StoreError, BackplaneUnavailable) as exc:
            log.warning("job %s: resync failed: %s", self.job_id, exc)
            self.stale = True
            return
        if state.epoch != self.epoch:
            log.warning("job %s: epoch %s replaced %s: seqs restarted", self.job_id, state.epoch, self.epoch)
            try:
                fresh = await self._jobs.job_log.load_job(self.job_id, self._config.history_size)
            except (StoreError, BackplaneUnavailable):
                self.stale = True
                return
            self._gap_to_members(f"coordination state was lost: epoch {fresh.epoch} starts seqs again")
            # after a failover the log still holds the old epoch's events, sent already
            # (or lost with the old master): only the new epoch's go out, after the latest
            # status unless it is the one members got last
            sent_status = self.latest_status
            current = [event for event in fresh.events if epoch_of(event.payload) == fresh.epoch]
            first = current[0].seq if current else fresh.last_seq + 1
            self._reset(attrs.evolve(fresh, last_seq=first - 1, events=[]))
            status = self.latest_status
            if status is not None and status.seq < first and (sent_status is None or sent_status.frame != status.frame):
                self._fan_out(status.frame, 1)
            self._merge(current)
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
        member = join.member
        frames = join_frames(self.job_id, self.seq, self.epoch, self.history, self.latest_status,
                             join.last_seq, join.last_epoch, join.inline_bytes)
        if isinstance(frames, CatchUp):  # too much to write at once: the connection paces it
            join.reply.set(frames)
            return
        for frame in frames:
            if not member.send_frame_nowait(frame):
                join.reply.set(self.seq)
                return
        self._jobs.metrics.messages_out.inc(len(frames) - 1)
        self._add(member)
        join.reply.set(self.seq)


# what a room does with each command it takes (Publish answers with the command it
# took past its batch, if any: the room's loop handles that one next)
_HANDLERS: dict[type, Callable[[JobRoom, Any], Awaitable[JobCommand | None]]] = {
    Publish: JobRoom._on_publish,
    Remote: JobRoom._on_remote,
    CommitAnswered: JobRoom._on_commit_answered,
    Resync: JobRoom._on_resync,
    RefreshPresence: JobRoom._on_refresh_presence,
    Join: JobRoom._on_join,
    Leave: JobRoom._on_leave,
}

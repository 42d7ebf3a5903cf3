"""The jobs' room supervisor and the API the rest of the broker uses for jobs:
publish, join, leave, presence; and where the backplane pushes what other nodes did
(their events, presence changes), handed to the running rooms without waiting.

A room (:class:`~broker.jobs.room.JobRoom`) starts on demand under the supervisor and
ends when idle; every call here is a command in its mailbox (:mod:`.commands`).
"""

from __future__ import annotations

from actors import Reply, Supervisor

from ..cluster import JobLog, JobOccupancy, LocalOccupancy, Presence
from ..config.loader import JobsConfig
from ..hub.rooms import MailboxClosed, MailboxFull, RoomSupervisor, RoomUnavailable
from ..observability.metrics import Metrics
from ..protocols import JobEvent
from ..store import StoredEvent
from ..webhooks.sink import EventSink, NoWebhooks
from .commands import CatchUp, Join, Leave, Publish, RefreshPresence, Remote, Resync
from .delivery import Member
from .room import JobRoom, RoomDeps


class JobRooms:
    """The jobs' room supervisor and the API the rest of the broker uses; also where
    the backplane pushes what other nodes did (:class:`~broker.cluster.JobFeed`: their
    events; :class:`~broker.cluster.PresenceFeed`: presence changes)."""

    def __init__(self, supervisor: Supervisor, job_log: JobLog, presence: Presence, config: JobsConfig,
                 metrics: Metrics, webhooks: EventSink | None = None, occupancy: JobOccupancy | None = None) -> None:
        self.job_log = job_log
        self.webhooks: EventSink = webhooks if webhooks is not None else NoWebhooks()  # job.occupied / job.vacated
        self.cluster_presence = presence
        self.config = config
        self.metrics = metrics
        self.rooms: RoomSupervisor[JobRoom] = RoomSupervisor(
            supervisor, "job", lambda key: JobRoom(key, deps), metrics, config.max_rooms
        )
        deps = RoomDeps(self.rooms, job_log, presence, config, metrics, self.webhooks,
                        occupancy if occupancy is not None else LocalOccupancy())

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
        node. Raises BackplaneUnavailable if the backplane is unreachable."""
        users = sorted(await self.cluster_presence.job_presence(job_id))
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

"""The commands a job room takes in its mailbox, in the order it takes them.

From the broker's side (:class:`~broker.jobs.job_rooms.JobRooms`): join (answered
with the job's seq, or a :class:`CatchUp` when its replay is to be paced), leave,
publish. From the backplane's feed and the room's own job log: events of other nodes
(:class:`Remote`), a resync after the feed may have lost some, a commit's answer,
and a presence refresh. Each is handled by :class:`~broker.jobs.room.JobRoom`
through its dispatch table.
"""

from __future__ import annotations

import attrs

from actors import Reply

from ..protocols import JobEvent
from ..store import StoredEvent
from .delivery import Member


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


JobCommand = Join | Leave | Publish | Remote | Resync | RefreshPresence | CommitAnswered

"""``job.occupied`` / ``job.vacated`` webhooks: a job got its first watcher (anywhere
in the cluster) or lost its last one.

Every member of a room counts (with or without ``"presence": true``, with or without
a user id). The room calls :meth:`Occupancy.report` after each command and asks
:meth:`Occupancy.settled` before it stops, so a room that empties and then idles
still reports. Only a crossing of 0 members in this node's room goes to the
backplane's :class:`~broker.cluster.JobOccupancy`, which says whether it changed the
job's state in the whole cluster: one node, one room: always; a cluster: exactly one
node records each change (:mod:`broker.cluster.redis_occupancy`), so the same user
watching on two nodes, or two rooms changing at the same moment, give one
``job.occupied`` and one ``job.vacated``. Nothing is asked of the backplane unless an
endpoint takes one of the two events.

Failures: a backplane that cannot be reached leaves the room unsettled (tried again
at its next command, or when it would stop); a change the backplane gave this node
and the store refused stays queued in the room (up to :data:`UNRECORDED_MAX`, then
logged as lost) and is recorded first at the next try, so each node's events keep
their order. Two changes recorded by different nodes a moment apart may reach the
outbox, and the receiver, in either order (each node's own are in order).
"""

from __future__ import annotations

import logging

from ..cluster import BackplaneUnavailable, JobOccupancy
from ..store import StoreError
from ..webhooks.events import JOB_OCCUPIED, JOB_VACATED, job_key, json_data
from ..webhooks.sink import EventSink

log = logging.getLogger("broker.webhooks")

UNRECORDED_MAX = 64  # changes a room keeps while the store refuses them


class Occupancy:
    def __init__(self, job_id: str, sink: EventSink, shared: JobOccupancy) -> None:
        self.job_id = job_id
        self.sink = sink
        self.shared = shared
        self.tracked = sink.wants(JOB_OCCUPIED) or sink.wants(JOB_VACATED)
        self.reported = False  # this room has members, as the backplane last took it
        self.unrecorded: list[str] = []  # events given to this node, refused by the store so far

    def settled(self, occupied: bool) -> bool:
        """Whether the backplane has ``occupied`` for this room and every event is recorded."""
        return not self.tracked or (occupied == self.reported and not self.unrecorded)

    async def report(self, occupied: bool) -> None:
        """Record what is owed, then tell the backplane if this room's state
        (``occupied``: it has members) is not the one it last took."""
        if not self.tracked or not await self._record_owed() or occupied == self.reported:
            return
        try:
            changed = await self.shared.room_changed(self.job_id, occupied)
        except BackplaneUnavailable as exc:
            log.warning("job %s: %s not decided: %s", self.job_id, "occupied" if occupied else "vacated", exc)
            return
        self.reported = occupied
        if changed:
            event = JOB_OCCUPIED if occupied else JOB_VACATED
            if self.sink.wants(event):
                self.unrecorded.append(event)
                await self._record_owed()

    def ended(self) -> None:
        """The room is ending (it failed): if its members counted, the backplane removes
        them (:meth:`~broker.cluster.JobOccupancy.sweep` gives the change to record)."""
        if self.tracked and self.reported:
            self.shared.room_ended(self.job_id)
            self.reported = False

    async def _record_owed(self) -> bool:
        """Record the owed events in order; False if the store refused one."""
        while self.unrecorded:
            event = self.unrecorded[0]
            try:
                await self.sink.record(event, job_key(self.job_id), json_data({"jobId": self.job_id}))
            except StoreError as exc:
                log.warning("job %s: %s not recorded yet: %s", self.job_id, event, exc)
                if len(self.unrecorded) > UNRECORDED_MAX:
                    log.error("job %s: %s lost (the store refused %d events)", self.job_id,
                              self.unrecorded.pop(0), UNRECORDED_MAX)
                return False
            self.unrecorded.pop(0)
        return True

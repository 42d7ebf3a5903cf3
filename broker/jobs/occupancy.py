"""``job.occupied`` / ``job.vacated`` webhooks: a job room got its first member
(anywhere in the cluster) or lost its last one.

The room calls :meth:`Occupancy.report` after each command (it may await: the event
is written to the outbox before the room goes on) and asks :meth:`Occupancy.settled`
before it stops, so a room that empties and then idles still reports ``vacated``.
In a cluster, the other nodes' members count too (``job_presence``): a node whose
room empties while another node's has members reports nothing. Two nodes whose rooms
change at the same moment may both report (at least once). A backplane or store
failure is logged; the change is reported at the next command that finds it again.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ..cluster import BackplaneUnavailable
from ..store import StoreError
from ..webhooks.events import JOB_OCCUPIED, JOB_VACATED, job_key, json_data
from ..webhooks.sink import EventSink

log = logging.getLogger("broker.webhooks")


class Presence(Protocol):
    async def job_presence(self, job_id: str) -> set[str]: ...


class Occupancy:
    def __init__(self, job_id: str, sink: EventSink, presence: Presence, clustered: bool) -> None:
        self.job_id = job_id
        self.sink = sink
        self.presence = presence
        self.clustered = clustered
        self.reported = False  # occupied, as last recorded

    def settled(self, occupied: bool) -> bool:
        """Whether the last recorded state is ``occupied`` (nothing left to report)."""
        return not self.sink.wants(JOB_VACATED if self.reported else JOB_OCCUPIED) or occupied == self.reported

    async def report(self, local_users: set[str]) -> None:
        """Record the change if the room's state (``local_users``: this node's members'
        users) is not the one last recorded."""
        occupied = bool(local_users)
        if occupied == self.reported:
            return
        event = JOB_OCCUPIED if occupied else JOB_VACATED
        try:
            if self.clustered and await self.presence.job_presence(self.job_id) - local_users:
                # members on other nodes: the job was occupied before (or is not vacated)
                self.reported = occupied
                return
            if self.sink.wants(event):
                await self.sink.record(event, job_key(self.job_id), json_data({"jobId": self.job_id}))
        except (StoreError, BackplaneUnavailable) as exc:
            log.warning("job %s: %s not recorded: %s", self.job_id, event, exc)
            return
        self.reported = occupied

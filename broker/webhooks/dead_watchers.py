"""``job.vacated`` for jobs whose last watchers died with their node (kill -9, a lost
machine), and the other occupancy changes no room can report.

Every node sweeps every ``node_ttl / 5``; the backplane gives each such change to one
sweeper in the cluster (:meth:`~broker.cluster.JobOccupancy.sweep`): a dead node's
rooms are removed once its liveness key has expired (within 0.6 ``node_ttl``), so
``job.vacated`` is recorded within ``node_ttl``, once. The same sweep records the
changes of this node's failed rooms and ``job.occupied`` again for jobs this node
wrote back after it was itself swept as dead. If the store write fails, the event is
logged as lost (the backplane has made the change already).
"""

from __future__ import annotations

import logging

import trio

from ..cluster import BackplaneUnavailable, JobOccupancy
from ..store import StoreError
from .events import JOB_OCCUPIED, JOB_VACATED, job_key, json_data
from .sink import EventSink

log = logging.getLogger("broker.webhooks")


async def sweep_dead_watchers(occupancy: JobOccupancy, sink: EventSink, interval: float) -> None:
    """Sweep until cancelled; a backplane that cannot be reached is tried next time."""
    while True:
        await trio.sleep(interval)
        try:
            changes = await occupancy.sweep()
        except BackplaneUnavailable as exc:
            log.debug("dead watchers not swept: %s", exc)
            continue
        for job_id, occupied in changes:
            event = JOB_OCCUPIED if occupied else JOB_VACATED
            if not sink.wants(event):
                continue
            try:
                await sink.record(event, job_key(job_id), json_data({"jobId": job_id}))
            except StoreError as exc:
                log.error("%s of job %s (swept) not recorded: %s", event, job_id, exc)

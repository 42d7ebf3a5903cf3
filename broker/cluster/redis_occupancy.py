"""Job occupancy on Redis: ``job.occupied`` / ``job.vacated`` exact across the cluster.

Each node writes one field per job whose room there has members (``P:watchers:J``,
field = node instance), only when its room's member count crosses 0, in a script
(:data:`~.lua.OCCUPANCY_CHANGE`) that answers whether the hash went from empty to
non-empty (occupied) or back (vacated): Redis runs one script at a time, so of two
nodes changing at the same moment exactly one gets each change, and the same user
watching on two nodes is two fields (it counts rooms with members, not users).

A node killed with kill -9 leaves its fields: every node sweeps every ``node_ttl / 5``
(:meth:`RedisOccupancy.sweep`, one script, :data:`~.lua.OCCUPANCY_SWEEP`); the first
to find a dead instance (liveness key expired, within 0.6 ``node_ttl``) removes its
fields and gets the jobs they leave empty (vacated), so the event is recorded once,
within ``node_ttl``. A node that was swept while alive (it could not renew its key),
and any node after Redis restarted empty (on resubscribe), writes its rooms' fields
back (:data:`~.lua.OCCUPANCY_RESTORE`); after a sweep the jobs left empty meanwhile are
occupied again, after a loss of Redis's data nothing is announced (they never were
vacated). Around a loss of Redis's data itself an event may be missed or repeated:
rooms that changed before every node wrote its fields back judge an incomplete hash.

The role serialises its own scripts per job (a room's change, a write-back, a failed
room's clean-up never overlap for one job); a room changes one job at a time anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from . import lua
from .interface import BackplaneUnavailable
from .redis_node import RedisNode, RedisRole

SWEPT_MARKER_TTL_MS = 86_400_000  # a swept instance's marker outlives any pause of a live node


class RedisOccupancy(RedisRole):
    clustered = True

    def __init__(self, node: RedisNode) -> None:
        self._node = node
        prefix = node.prefix
        self._change = node.register_script(lua.OCCUPANCY_CHANGE)
        self._restore = node.register_script(lua.OCCUPANCY_RESTORE)
        self._sweep = node.register_script(lua.OCCUPANCY_SWEEP)
        self._hash_prefix = f"{prefix}:watchers:"
        self._jobs_prefix = f"{prefix}:watching:"
        self._swept_prefix = f"{prefix}:watch-swept:"
        self._instances_key = f"{prefix}:watch-instances"
        self._my_jobs = self._jobs_prefix + node.instance
        self._my_marker = self._swept_prefix + node.instance
        self.occupied: set[str] = set()  # jobs whose field this node wrote (its room has members)
        self._ended: set[str] = set()  # jobs whose room failed while counted: to remove
        self._reoccupied: list[str] = []  # jobs occupied again by a write-back: to record
        self._busy: dict[str, trio.Event] = {}  # job -> set when this node's script for it is answered
        self._used = False  # a room has reported: this node takes part (heartbeat, write-back)
        self._restore_due = False

    @asynccontextmanager
    async def _exclusive(self, job_id: str) -> AsyncIterator[None]:
        while (busy := self._busy.get(job_id)) is not None:
            await busy.wait()
        done = self._busy[job_id] = trio.Event()
        try:
            yield
        finally:
            del self._busy[job_id]
            done.set()

    async def room_changed(self, job_id: str, occupied: bool) -> bool:
        self._used = True
        async with self._exclusive(job_id):
            if occupied:
                self._ended.discard(job_id)  # a new room took over before the clean-up: its field stays
            return await self._run_change(job_id, occupied)

    async def _run_change(self, job_id: str, occupied: bool) -> bool:
        node = self._node
        crossed = await node.call(
            self._change,
            [self._hash_prefix + job_id, self._my_jobs, self._instances_key, self._my_marker],
            [node.instance, "1" if occupied else "0", job_id],
        )
        if occupied:
            self.occupied.add(job_id)
        else:
            self.occupied.discard(job_id)
        return bool(crossed)

    def room_ended(self, job_id: str) -> None:
        self._ended.add(job_id)

    async def sweep(self) -> list[tuple[str, bool]]:
        changes: list[tuple[str, bool]] = [(job, True) for job in self._reoccupied]
        self._reoccupied.clear()
        for job_id in sorted(self._ended):
            async with self._exclusive(job_id):
                if job_id in self._ended and job_id in self.occupied:
                    try:
                        vacated = await self._run_change(job_id, False)
                    except BackplaneUnavailable:
                        if changes:
                            return changes  # this room and the dead nodes: next time
                        raise
                    if vacated:
                        changes.append((job_id, False))
                self._ended.discard(job_id)
        node = self._node
        try:
            vacated = await node.call(self._sweep, [self._instances_key],
                                      [node.node_key_prefix, self._jobs_prefix, self._hash_prefix,
                                       self._swept_prefix, SWEPT_MARKER_TTL_MS])
        except BackplaneUnavailable:
            if changes:
                return changes  # the dead nodes are swept next time
            raise
        return changes + [(job.decode(), False) for job in vacated]

    # -- the node's loops ------------------------------------------------------

    async def heartbeat(self) -> None:
        """Keep this instance sweepable once it dies; if it was missing from the set
        (swept while alive, or Redis lost it), write this node's fields back."""
        if not self._used:
            return
        added = await self._node.client.sadd(self._instances_key, [self._node.instance])
        if added or self._restore_due:
            self._restore_due = True
            try:
                await self._write_back()
            except BackplaneUnavailable:
                pass  # still due: the next beat tries again

    async def resubscribed(self) -> None:
        """Redis may have restarted empty: write this node's fields back."""
        if self._used:
            await self._write_back()

    async def _write_back(self) -> None:
        """One script for every job whose room here has members, except those a room
        or clean-up is changing right now (their script writes their state)."""
        self._restore_due = True
        jobs = sorted(self.occupied - self._busy.keys())
        done = trio.Event()
        for job_id in jobs:
            self._busy[job_id] = done
        try:
            node = self._node
            again = await node.call(self._restore, [self._my_jobs, self._instances_key, self._my_marker],
                                    [node.instance, self._hash_prefix, *jobs])
        finally:
            for job_id in jobs:
                del self._busy[job_id]
            done.set()
        self._reoccupied += [job.decode() for job in again]
        self._restore_due = False

"""A job room's fan-out: committed events to every member, one write per member per batch.

Writing an event to 1 000 members is 1 000 ``send`` syscalls (~9 ms), and most of
that cost is per write, not per byte. So the room does not make its publishers wait
for it: in a big room (more than ``SYNC_MAX_MEMBERS``) a *delivery task* writes the
members in chunks of ``CHUNK_MEMBERS``, with a checkpoint between chunks, while the
room goes on committing and answering the next publishes. Everything committed
meanwhile is queued (*pending*, frames concatenated in seq order) and the next run
carries all of it in **one write per member**: one sequential publisher's events
coalesce the way many concurrent publishers' batches do. A small room is written at
once, in the caller, as before: there a task hop would cost more than it saves.

Ordering and exactly-once, which the room relies on:

* frames go out in the order they were queued: a run is taken only after the previous
  one ended, and a small room is written directly only when nothing is queued;
* a run writes the members of the room when it is *taken* (a snapshot), skipping any
  that has left since: no member is written after its ``Leave`` was handled;
* the room calls :meth:`Delivery.finish` before it adds a member (a join's replay is
  the history up to the room's seq): whatever was committed before the join is
  written before it, to the members before it, so a new member neither misses an
  event nor gets one twice;
* bounded: at most ``pending_max`` events wait (the room's ``publish_batch_max``), or
  one merge when a single one is larger (a resync), besides the run being written
  (taken from the same queue, so under the same bound); queuing more first finishes
  what is queued, synchronously, in the room: backpressure, the room's inbox fills
  and its publishers wait.

The task lives in the room's own nursery (``spawn``), only while there is something
to write: an idle room has none. Cancelled (the room is ending: shutdown or idle
stop), it writes what is left synchronously before it ends, so a committed event
still reaches every member that was in the room; after a crash the room calls
:meth:`Delivery.abandon` instead (its members are being closed with 1011 and resume
with ``lastSeq``). An exception from a member's write is a bug: it fails the task
and with it the room.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..hub.peer import Peer

# A room with at most this many members is written at once, in the room's task: 64
# writes take ~0.6 ms, about what committing and answering one publish costs, so
# below that there is little to overlap and a task hop would add latency to the
# common small room (one subscriber: ~0.45 ms per publish).
SYNC_MAX_MEMBERS = 64
# Members written between two checkpoints of the delivery task (~20-40 us of writes).
# A publish needs about four scheduler ticks (read the request, take it from the
# inbox, resume after the commit's thread, answer), and each checkpoint is one tick,
# so the shorter the chunk, the more publishes are committed during one delivery and
# ride in the next write. Measured with one sequential publisher and 1 000 members
# (CPU per delivery): 64 members per chunk 7.3 us, 16 4.0 us, 8 2.7 us, 4 1.5 us,
# 2 1.8 us (there the ~7 us a checkpoint costs starts to weigh).
CHUNK_MEMBERS = 4


Member = Peer  # a room needs no more of a connection than any part does


class _Run:
    """One delivery: the same bytes to each member of a snapshot, from ``next`` on."""

    __slots__ = ("frames", "count", "members", "next", "written")

    def __init__(self, frames: bytes, count: int, members: list[Member]) -> None:
        self.frames = frames
        self.count = count  # events in ``frames``
        self.members = members
        self.next = 0  # the first member not written yet
        self.written = 0  # members written so far

    @property
    def done(self) -> bool:
        return self.next >= len(self.members)


class Delivery:
    """The fan-out of one room. ``members`` is the room's own dict (read, never
    changed here); ``drop(member_id)`` removes a member whose write failed;
    ``delivered(n)`` counts n event deliveries."""

    def __init__(self, members: dict[str, Member], drop: Callable[[str], None], delivered: Callable[[int], None],
                 pending_max: int, sync_max: int | None = None, chunk: int | None = None) -> None:
        self._members = members
        self._drop = drop
        self._delivered = delivered
        self._pending_max = pending_max
        self._sync_max = SYNC_MAX_MEMBERS if sync_max is None else sync_max
        self._chunk = CHUNK_MEMBERS if chunk is None else chunk
        # ``nursery.start_soon`` of the room while it runs; None: everything is written at once
        self.spawn: Callable[[Callable[[], Awaitable[None]]], None] | None = None
        self._pending: list[bytes] = []
        self._pending_count = 0
        self._current: _Run | None = None
        self._task_running = False

    @property
    def busy(self) -> bool:
        """Frames are queued or being written."""
        return self._current is not None or bool(self._pending)

    def send(self, frames: bytes, count: int) -> None:
        """Deliver ``frames`` (``count`` whole encoded frames) to every member, after
        everything sent before. Never waits."""
        if self.spawn is None:
            self.finish()
            self._write_all_now(frames, count)
            return
        if not self.busy and len(self._members) <= self._sync_max:
            self._write_all_now(frames, count)
            return
        if self._pending and self._pending_count + count > self._pending_max:
            self.finish()  # the bound: the room writes what waits itself
        self._pending.append(frames)
        self._pending_count += count
        if not self._task_running:
            self._task_running = True
            self.spawn(self._run)

    def finish(self) -> None:
        """Write everything queued now, in order, before returning (the room calls
        this before adding a member)."""
        run, self._current = self._current, None
        if run is not None:
            self._write(run, len(run.members))
        if self._pending:
            self._write(self._take(), len(self._members))

    def abandon(self) -> None:
        """The room crashed: write nothing more (its members are being closed)."""
        self._current = None
        self._pending.clear()
        self._pending_count = 0

    async def _run(self) -> None:
        try:
            while True:
                run = self._current
                if run is None:
                    if not self._pending:
                        return
                    run = self._current = self._take()
                self._write(run, self._chunk)
                if run.done and self._current is run:
                    self._current = None
                await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            self.finish()  # the room is ending: what it committed still goes out
            raise
        finally:
            self._task_running = False

    def _take(self) -> _Run:
        pending = self._pending
        frames = pending[0] if len(pending) == 1 else b"".join(pending)
        run = _Run(frames, self._pending_count, list(self._members.values()))
        pending.clear()
        self._pending_count = 0
        return run

    def _write(self, run: _Run, limit: int) -> None:
        members, snapshot, frames = self._members, run.members, run.frames
        end = min(run.next + limit, len(snapshot))
        now = trio.current_time()
        delivered = 0
        for index in range(run.next, end):
            member = snapshot[index]
            if members.get(member.id) is not member:
                continue  # left (or was dropped) since the run was taken
            if member.send_frame_nowait(frames, now=now):
                delivered += 1
            else:
                self._drop(member.id)
        run.next = end
        run.written += delivered
        if run.done:
            self._delivered(run.written * run.count)  # counted once per run: a metric update takes a lock

    def _write_all_now(self, frames: bytes, count: int) -> None:
        delivered = 0
        gone = []
        now = trio.current_time()
        for member in self._members.values():
            if member.send_frame_nowait(frames, now=now):
                delivered += 1
            else:
                gone.append(member.id)
        for member_id in gone:
            self._drop(member_id)
        self._delivered(delivered * count)

"""A big job room's fan-out runs beside its commits (broker/jobs/delivery.py): order,
exactly-once across joins and leaves, evictions, bounds, and the room ending mid-way.
Virtual time and in-memory members: no sleeps, no sockets."""

import json
import random
from contextlib import asynccontextmanager

import pytest
import trio

from actors import open_supervisor
from broker.app import Broker
from broker.cluster import LocalJobLog, LocalPresence
from broker.jobs.delivery import CHUNK_MEMBERS, SYNC_MAX_MEMBERS, Delivery
from broker.jobs.job_rooms import JobRooms
from broker.protocols import JobEvent
from tests.support.helpers import MemoryStore, make_config, text_payloads

BIG = SYNC_MAX_MEMBERS + 7  # written by the delivery task, in chunks
MANY = SYNC_MAX_MEMBERS + 16 * CHUNK_MEMBERS  # a delivery spans more ticks than a leave or a stop takes


def payloads(data):
    """The JSON messages in ``data``: whole unmasked server text frames, concatenated."""
    return [json.loads(payload) for payload in text_payloads(data)]


class Member:
    """Records every write; ``outbox`` writes at most, then it is a slow consumer."""

    def __init__(self, member_id, outbox=None):
        self.id = member_id
        self.closed = False
        self.writes = []
        self.outbox = outbox
        self.evicted = None

    def send_frame_nowait(self, frame, force=False, now=None):
        if self.closed:
            return False
        if self.outbox is not None and len(self.writes) >= self.outbox:
            self.evict(4003, "slow consumer: outbound queue overflowed", "slow_consumer")
            return False
        self.writes.append(frame)
        return True

    def evict(self, code, reason, metric):
        if self.evicted is None:
            self.evicted = code
        self.closed = True

    def messages(self):
        return [m for write in self.writes for m in payloads(write)]

    def seqs(self):
        return [m["seq"] for m in self.messages() if m["type"] == "job_status"]


def event(job_id, index):
    return JobEvent(job_id, "job_status", {"status": "RUNNING", "i": index})


@asynccontextmanager
async def job_rooms(tmp_path, **jobs):
    config = make_config(tmp_path, jobs=jobs)
    broker = Broker(config)
    async with open_supervisor("rooms") as supervisor:
        rooms = JobRooms(supervisor, LocalJobLog(MemoryStore()), LocalPresence(), config.jobs, broker.metrics)
        rooms.supervisor = supervisor
        yield rooms
        supervisor.stop_all()


async def fill(rooms, job_id, count, prefix="m"):
    members = [Member(f"{prefix}{i}") for i in range(count)]
    for member in members:
        await rooms.join(job_id, member, None)
    return members


async def until(predicate):
    with trio.fail_after(5):
        while not predicate():
            await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("seed", range(4))
async def test_joins_and_leaves_during_deliveries_each_member_gets_each_event_once_in_order(
        tmp_path, autojump_clock, seed):
    chooser = random.Random(seed)
    async with job_rooms(tmp_path) as rooms:
        first = await fill(rooms, "job-o", BIG)
        room = rooms.room("job-o")
        delivery = room._delivery
        finish, busy_joins = delivery.finish, []

        def finish_counting():
            busy_joins.append(delivery.busy)
            finish()

        delivery.finish = finish_counting
        joined = {}  # member -> (lastSeq it joined with, the room's seq it was told)
        left = {}  # member -> how many writes it had when leave returned
        present = list(first)

        async def join(member, last_seq):
            joined[member] = (last_seq, await rooms.join("job-o", member, last_seq))
            present.append(member)  # may leave from now on

        async def leave(member):
            await rooms.leave("job-o", member)
            left[member] = len(member.writes)

        async with trio.open_nursery() as churn:
            for i in range(1, 201):
                assert await rooms.publish(event("job-o", i)) == i  # answered before its delivery ends
                if i % 5 == 0:
                    member = Member(f"late{i}")
                    churn.start_soon(join, member, chooser.randrange(max(0, i - 20), i + 1))
                if i % 7 == 0:
                    churn.start_soon(leave, present.pop(chooser.randrange(len(present))))
        await rooms.join("job-o", Member("sync"), None)  # after every delivery (it finishes them)
        assert True in busy_joins  # joins did arrive while a delivery was queued or running
        coalesced = max(len(payloads(write)) for member in first for write in member.writes)
        assert coalesced > 1  # a delivery carried several events in one write

    for member in first:
        seqs = member.seqs()
        assert seqs == list(range(1, len(seqs) + 1))
        if member not in left:
            assert len(seqs) == 200
    for member, (last_seq, seq_at_join) in joined.items():
        kinds = [m["type"] for m in member.messages()]
        assert kinds.count("joined") == 1
        replay = kinds.index("joined")
        seqs = member.seqs()
        assert seqs[:replay] == list(range(last_seq + 1, seq_at_join + 1))  # the replay, then live
        assert seqs == list(range(last_seq + 1, last_seq + 1 + len(seqs)))  # no gap, no duplicate
        if member not in left:
            assert seqs[-1] == 200
    for member, writes in left.items():
        assert len(member.writes) == writes  # nothing after leave returned


async def test_a_member_that_leaves_mid_delivery_gets_nothing_after_leave_returns(tmp_path, autojump_clock):
    async with job_rooms(tmp_path) as rooms:
        members = await fill(rooms, "job-l", MANY)
        first, last = members[0], members[-1]
        assert await rooms.publish(event("job-l", 1)) == 1
        await until(lambda: first.seqs() == [1])  # the delivery has begun...
        await rooms.leave("job-l", last)
        assert rooms.room("job-l")._delivery.busy and last.seqs() == []  # ...and not reached the last member
        await rooms.join("job-l", Member("sync"), None)
        assert all(m.seqs() == [1] for m in members[:-1])
        assert last.seqs() == []


async def test_a_member_with_a_full_outbox_is_evicted_and_the_others_get_everything(tmp_path, autojump_clock):
    async with job_rooms(tmp_path) as rooms:
        members = await fill(rooms, "job-s", BIG)
        slow = members[BIG // 2]
        slow.outbox = len(slow.writes) + 3  # three more writes fit
        for i in range(1, 41):
            await rooms.publish(event("job-s", i))
        await rooms.join("job-s", Member("sync"), None)
        assert slow.evicted == 4003 and slow.id not in rooms.room("job-s").members
        assert all(m.seqs() == list(range(1, 41)) for m in members if m is not slow)
        assert 0 < len(slow.seqs()) < 40 and slow.seqs() == list(range(1, len(slow.seqs()) + 1))


async def test_a_room_stopped_mid_delivery_still_delivers_what_it_committed(tmp_path, autojump_clock):
    async with job_rooms(tmp_path) as rooms:
        members = await fill(rooms, "job-t", MANY)
        for i in range(1, 4):
            assert await rooms.publish(event("job-t", i)) == i
        assert rooms.room("job-t")._delivery.busy
        rooms.supervisor.stop_all()
        await until(lambda: len(rooms) == 0)
    assert all(m.seqs() == [1, 2, 3] for m in members)


async def test_a_room_whose_delivery_task_fails_closes_its_members_and_a_new_room_carries_on(
        tmp_path, autojump_clock):
    class Broken(Member):
        def send_frame_nowait(self, frame, force=False, now=None):
            if b'"seq":2' in frame:
                raise RuntimeError("bug in a member")
            return super().send_frame_nowait(frame, force, now)

    async with job_rooms(tmp_path) as rooms:
        members = await fill(rooms, "job-c", BIG)
        members.append(Broken("broken"))
        await rooms.join("job-c", members[-1], None)
        assert await rooms.publish(event("job-c", 1)) == 1
        await rooms.join("job-c", Member("sync"), None)
        assert await rooms.publish(event("job-c", 2)) == 2  # committed, answered; its delivery fails
        await until(lambda: len(rooms) == 0)
        assert [m.evicted for m in members] == [1011] * len(members)  # they resume with lastSeq
        assert all(m.seqs()[:1] == [1] for m in members)
        assert await rooms.publish(event("job-c", 3)) == 3  # a fresh room continues from the store


# -- the delivery state on its own: when it writes, in which order --------------


class Room:
    """A Delivery's surroundings: the members dict, the drop and the counter; its
    task is never started (``started``), so what the task would do is explicit."""

    def __init__(self, count, pending_max=4, sync_max=2):
        self.members = {f"m{i}": Member(f"m{i}") for i in range(count)}
        self.started = []
        self.delivered = 0
        self.delivery = Delivery(self.members, self.members.pop, self._count, pending_max, sync_max, chunk=2)
        self.delivery.spawn = self.started.append

    def _count(self, n):
        self.delivered += n

    def writes(self):
        return {member_id: member.writes for member_id, member in self.members.items()}


async def test_a_small_room_is_written_at_once_and_a_big_one_is_queued_for_the_task():
    small = Room(2)
    small.delivery.send(b"a", 1)
    assert small.writes() == {"m0": [b"a"], "m1": [b"a"]} and small.started == []
    big = Room(3)
    big.delivery.send(b"a", 1)
    big.delivery.send(b"b", 1)
    assert all(w == [] for w in big.writes().values()) and len(big.started) == 1  # one task for both
    big.delivery.finish()
    assert all(w == [b"ab"] for w in big.writes().values()) and big.delivered == 6  # one write per member


async def test_nothing_overtakes_what_is_queued_even_once_the_room_is_small():
    room = Room(3)
    room.delivery.send(b"a", 1)
    del room.members["m2"]  # left: now small enough to be written at once...
    room.delivery.send(b"b", 1)  # ...but "a" waits: "b" goes behind it
    assert all(w == [] for w in room.writes().values())
    room.delivery.finish()
    assert all(w == [b"ab"] for w in room.writes().values())
    room.delivery.send(b"c", 1)  # nothing queued now: at once
    assert all(w == [b"ab", b"c"] for w in room.writes().values())


async def test_the_queue_is_bounded_more_first_writes_what_waits():
    room = Room(3, pending_max=4)
    room.delivery.send(b"ab", 2)
    room.delivery.send(b"cd", 2)
    assert all(w == [] for w in room.writes().values())
    room.delivery.send(b"e", 1)  # five would wait: the four go out now, in the caller
    assert all(w == [b"abcd"] for w in room.writes().values())
    room.delivery.send(b"big-resync", 9)  # over the bound alone: what waits goes first, it queues whole
    room.delivery.finish()
    assert all(w == [b"abcd", b"e", b"big-resync"] for w in room.writes().values())


async def test_the_task_writes_in_chunks_skips_members_that_left_and_drops_the_gone():
    room = Room(7)
    room.delivery.send(b"a", 1)
    (task,) = room.started
    members = room.members
    gone, leaver = members["m3"], members["m5"]
    gone.closed = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task)
        await until(lambda: members["m1"].writes)  # the task wrote a chunk or two (two members each)
        assert leaver.writes == []
        del members["m5"]  # leaves mid-delivery
        room.delivery.send(b"b", 1)  # queued behind the run in progress
    assert "m3" not in members and leaver.writes == []
    assert all(m.writes == [b"a", b"b"] for m in members.values())
    assert room.delivered == 5 + 5


async def test_presence_changes_keep_their_order_with_the_events(tmp_path, autojump_clock):
    async with job_rooms(tmp_path) as rooms:
        rooms.cluster_presence.feed = rooms  # what the broker's backplane.open does: presence changes reach the rooms
        members = await fill(rooms, "job-p", MANY)
        leaver = Member("leaver")
        leaver.user_id = "lea"
        await rooms.join("job-p", leaver, None)
        watcher = Member("watcher")  # written last in every delivery
        await rooms.join("job-p", watcher, None, presence=True)
        assert await rooms.publish(event("job-p", 1)) == 1
        await rooms.leave("job-p", leaver)  # a presence_leave for the watcher, after event 1
        await until(lambda: any(m["type"] == "presence_leave" for m in watcher.messages()))
        kinds = [m["type"] for m in watcher.messages()]
        assert kinds.index("job_status") < kinds.index("presence_leave")
        assert all(m.seqs() == [1] for m in members)

"""Timeouts tested exactly, in virtual time (autojump_clock), over in-memory streams."""

import json

import attrs
import pytest
import trio
import trio.testing

from actors import open_supervisor
from broker.app import Broker
from broker.cluster import LocalJobLog, LocalPresence
from broker.jobs.job_rooms import JobRooms
from broker.session.connection import Session
from broker.transport.websocket import ServerWebSocket
from broker.transport.wire import WireStream
from tests.support.helpers import MemoryStore, make_config, text_payloads
from tests.support.virtual import broker_event, connect, virtual_broker


async def test_heartbeat_timeout_closes_with_4002_exactly(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path) as broker, trio.open_nursery() as nursery:
        start = trio.current_time()
        _, client = await connect(nursery, broker, answer_pings=False)
        assert (await client.next_json())["type"] == "connection_established"
        code, reason = await client.expect_close()
        assert (code, reason) == (4002, "heartbeat timeout")
        assert trio.current_time() - start == 30 + 30  # ping at 30 s, no pong by 60 s
        assert client.pings == 1


async def test_answered_pings_keep_the_connection(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path, websocket={"idle_timeout": 10_000}) as broker, \
            trio.open_nursery() as nursery:
        session, client = await connect(nursery, broker)
        assert (await client.next_json())["type"] == "connection_established"
        reader = trio.CancelScope()

        async def read_forever():
            with reader:
                while True:
                    await client.next_event()

        nursery.start_soon(read_forever)
        await trio.sleep(301)
        assert client.pings == 10 and not session.closed
        reader.cancel()
        session.evict(1000, "test over", "test")


async def test_idle_timeout_exact_and_reset_by_activity(tmp_path, autojump_clock):
    # heartbeats out of the way: this client does not read while it waits
    async with virtual_broker(tmp_path, websocket={"heartbeat_interval": 10_000}) as broker, \
            trio.open_nursery() as nursery:
        start = trio.current_time()
        _, client = await connect(nursery, broker)
        assert (await client.next_json())["type"] == "connection_established"
        await trio.sleep(100)
        await client.send_json({"type": "ping"})
        # the pong is activity too, at the same virtual instant
        code, reason = await client.expect_close()
        assert (code, reason) == (1000, "idle timeout")
        assert trio.current_time() - start == 100 + 600


async def test_auth_frame_timeout_gives_unauthorized_then_1008_exactly(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path) as broker, trio.open_nursery() as nursery:
        start = trio.current_time()
        _, client = await connect(nursery, broker, target="/ws")
        error = await client.next_json()
        assert error["type"] == "error" and error["code"] == "UNAUTHORIZED"
        assert trio.current_time() - start == 10
        assert (await client.expect_close())[0] == 1008


async def test_auth_frame_within_timeout_is_accepted(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path) as broker, trio.open_nursery() as nursery:
        session, client = await connect(nursery, broker, target="/ws")
        await trio.sleep(9)
        await client.send_json({"type": "auth", "token": "demo-token"})
        assert (await client.next_json())["type"] == "connection_established"
        session.evict(1000, "test over", "test")


async def test_slow_consumer_is_evicted_with_4003_then_gets_the_close_after_its_backlog(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path, websocket={"outbox_max_bytes": 8192}) as broker, \
            trio.open_nursery() as nursery:
        # lockstep: a write completes only as the client reads, like a full TCP window
        session, client = await connect(nursery, broker, pair=trio.testing.lockstep_stream_pair)
        assert (await client.next_json())["type"] == "connection_established"
        await client.send_json({"type": "join_job", "jobId": "job-1"})
        assert (await client.next_json())["type"] == "joined"
        published = 0
        while session.close_code is None:  # the client is not reading now
            await broker.job_rooms.publish_many(
                [broker_event("job-1", published)]
            )
            published += 1
        assert session.close_code == 4003
        received = []
        while True:
            event = await client.next_event()
            if type(event).__name__ == "CloseConnection":
                assert event.code == 4003
                break
            received.append(event)
        assert 0 < len(received) < published  # what was queued arrived, the rest was not queued


class FakeMember:
    def __init__(self, member_id):
        self.id = member_id
        self.closed = False
        self.frames = []

    def send_frame_nowait(self, frame, force=False, now=None):
        if self.closed:
            return False
        self.frames.append(frame)
        return True

    def evict(self, code, reason, metric):
        self.closed = True


async def test_room_stops_exactly_when_idle_and_restarts_from_the_store(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path, jobs={"room_idle_timeout": 60}) as broker:
        rooms = broker.job_rooms
        member = FakeMember("m1")
        await rooms.join("job-i", member, None)
        await rooms.publish(broker_event("job-i", 1))
        await trio.sleep(500)
        assert len(rooms) == 1  # a member keeps the room alive
        (room_actor,) = rooms.rooms._supervisor.children
        left_at = trio.current_time()
        rooms.leave_nowait("job-i", member)
        await room_actor.wait()
        assert trio.current_time() - left_at == 60 and len(rooms) == 0
        # a new room resumes the job's seq from the store
        assert await rooms.publish(broker_event("job-i", 2)) == 2
        assert broker.store.loads == 2


async def test_room_drops_members_that_went_away(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path) as broker:
        rooms = broker.job_rooms
        alive, gone = FakeMember("a"), FakeMember("b")
        await rooms.join("job-m", alive, None)
        await rooms.join("job-m", gone, None)
        gone.closed = True
        await rooms.publish(broker_event("job-m", 1))  # answered once committed, before the fan-out
        await rooms.join("job-m", FakeMember("c"), None)  # answered after it (mailbox order)
        assert set(rooms.room("job-m").members) == {"a", "c"}
        kinds = [json.loads(frame[frame.index(b"{"):])["type"] for frame in alive.frames]
        assert kinds == ["joined", "job_status"]


async def test_a_bug_in_one_session_closes_it_with_1011_and_nothing_else(tmp_path, autojump_clock, monkeypatch):
    async with virtual_broker(tmp_path) as broker, trio.open_nursery() as nursery:
        victim, victim_client = await connect(nursery, broker)
        bystander, bystander_client = await connect(nursery, broker)
        for client in (victim_client, bystander_client):
            assert (await client.next_json())["type"] == "connection_established"
        handle = Session._handle

        async def broken_handle(session, command):
            if session is victim:
                raise RuntimeError("bug")
            await handle(session, command)

        monkeypatch.setattr(Session, "_handle", broken_handle)  # sessions have no __dict__ to patch one
        await victim_client.send_json({"type": "ping"})
        assert await victim_client.expect_close() == (1011, "internal error")
        await bystander_client.send_json({"type": "ping"})
        assert (await bystander_client.next_json())["type"] == "pong"
        bystander.evict(1000, "test over", "test")


async def test_a_session_holds_live_messages_until_the_replay_has_none_left_then_tracks_them(tmp_path):
    async with virtual_broker(tmp_path) as broker:
        server_end, client_end = trio.testing.memory_stream_pair()
        session = Session(broker.session_deps(), "memory")
        session.wire = WireStream(server_end)
        session.ws = ServerWebSocket(session.wire)
        session.track_chat(replaying=True)

        def frame(conversation, msg_id):
            return f"{conversation}:{msg_id};".encode()

        # live deliveries while the replay runs: held, not sent
        for conversation, msg_id in (("c1", 5), ("c1", 6), ("c2", 3)):
            assert session.deliver_chat(conversation, msg_id, frame(conversation, msg_id))
        assert session.wire.bytes_queued == 0
        assert [(c, m) for c, m, _ in session.release_held()] == [("c1", 5), ("c1", 6), ("c2", 3)]
        assert session.deliver_chat("c2", 4, frame("c2", 4))  # still replaying: held again
        assert [(c, m) for c, m, _ in session.release_held()] == [("c2", 4)]
        assert session.release_held() == []  # none left: live from here on
        assert session.deliver_chat("c1", 7, frame("c1", 7)) and session.deliver_chat("c2", 5, frame("c2", 5))
        await session.wire.send_all(b"")
        assert (await client_end.receive_some()).decode().split(";")[:-1] == ["c1:7", "c2:5"]
        assert [(c, m) for _, c, m in session.chat_deliveries.unconfirmed] == [("c1", 7), ("c2", 5)]
        # a pong for everything queued confirms the newest position per conversation
        confirmed = {}

        async def record(user_id, positions):
            confirmed.update(positions)

        fake_chat = type("FakeChat", (), {"confirm_delivered": staticmethod(record)})()
        session.deps = attrs.evolve(session.deps, chat=fake_chat)
        session.user_id = "bob"
        await session._confirm_up_to(session.wire.bytes_queued)
        assert confirmed == {"c1": 7, "c2": 5} and not session.chat_deliveries.unconfirmed


async def test_a_room_that_crashes_in_its_fan_out_has_answered_the_committed_publish(tmp_path, autojump_clock):
    class BrokenMember(FakeMember):
        def send_frame_nowait(self, frame, force=False, now=None):
            if b"job_status" in frame:
                raise RuntimeError("bug in a member")
            return super().send_frame_nowait(frame, force, now)

    async with virtual_broker(tmp_path) as broker:
        rooms = broker.job_rooms
        member = BrokenMember("m")
        await rooms.join("job-c", member, None)
        with trio.fail_after(5):
            assert await rooms.publish(broker_event("job-c", 1)) == 1  # committed: a retry would duplicate it
            while len(rooms):  # the room crashes in the fan-out, after answering
                await trio.sleep(0.001)
        assert member.closed  # its members are closed (1011): they resume with lastSeq
        assert await rooms.publish(broker_event("job-c", 2)) == 2  # a fresh room carries on from the store


async def test_a_room_that_crashes_before_answering_fails_its_publishers_instead_of_hanging(
        tmp_path, autojump_clock, monkeypatch):
    import pytest

    import broker.jobs.room as jobs
    from broker.hub.rooms import RoomUnavailable

    def broken_encode(event, now):
        raise RuntimeError("bug in the room")

    async with virtual_broker(tmp_path) as broker:
        rooms = broker.job_rooms
        with monkeypatch.context() as patch:
            patch.setattr(jobs, "job_event_parts", broken_encode)
            with trio.fail_after(5):
                with pytest.raises(RoomUnavailable):
                    await rooms.publish(broker_event("job-c", 1))
        while len(rooms):
            await trio.sleep(0.001)
        assert await rooms.publish(broker_event("job-c", 2)) == 1  # nothing of the failed batch was stored


class GatedStore(MemoryStore):
    """Appends wait for ``gate``: the room stays busy and its inbox fills."""

    def __init__(self):
        super().__init__()
        self.gate = trio.Event()

    async def append_job_events(self, job_id, events, keep):
        await self.gate.wait()
        await super().append_job_events(job_id, events, keep)


async def test_leave_job_takes_effect_even_when_the_room_inbox_is_full(tmp_path, autojump_clock):
    """leave_job was answered `left` but dropped when the room's inbox was full: the
    client kept receiving the job's events. Now `left` comes once the room has let go."""
    config = make_config(tmp_path, jobs={"room_inbox_size": 1})
    broker = Broker(config)
    store = GatedStore()
    async with open_supervisor("rooms") as rooms, trio.open_nursery() as nursery:
        broker.job_rooms = JobRooms(rooms, LocalJobLog(store), LocalPresence(), config.jobs, broker.metrics)
        session, client = await connect(nursery, broker)
        assert (await client.next_json())["type"] == "connection_established"
        await client.send_json({"type": "join_job", "jobId": "job-1"})
        assert (await client.next_json())["type"] == "joined"
        for index in (1, 2):  # the first is being stored, the second fills the inbox
            nursery.start_soon(broker.job_rooms.publish, broker_event("job-1", index))
            await trio.testing.wait_all_tasks_blocked()
        assert broker.job_rooms.room("job-1").inbox.stats().depth == 1
        await client.send_json({"type": "leave_job", "jobId": "job-1"})
        await trio.testing.wait_all_tasks_blocked()
        store.gate.set()
        received = [await client.next_json() for _ in range(3)]
        assert [(m["type"], m.get("seq")) for m in received] == [("job_status", 1), ("job_status", 2), ("left", None)]
        assert session.id not in broker.job_rooms.room("job-1").members
        await broker.job_rooms.publish(broker_event("job-1", 3))  # after the leave: not for this client
        await client.send_json({"type": "ping"})
        assert (await client.next_json())["type"] == "pong"
        session.evict(1000, "test over", "test")
        rooms.stop_all()


class CountingStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.batches = []

    async def append_job_events(self, job_id, events, keep):
        self.batches.append(len(events))
        await super().append_job_events(job_id, events, keep)


async def test_concurrent_publishers_share_commits_and_members_get_every_event_in_order(tmp_path, autojump_clock):
    config = make_config(tmp_path)
    broker = Broker(config)
    store = CountingStore()
    member = FakeMember("m")
    async with open_supervisor("rooms") as rooms:
        broker.job_rooms = JobRooms(rooms, LocalJobLog(store), LocalPresence(), config.jobs, broker.metrics)
        await broker.job_rooms.join("job-b", member, None)

        async def publisher(index):
            for n in range(20):  # each waits for its answer before the next, as an HTTP client does
                await broker.job_rooms.publish(broker_event("job-b", index * 100 + n))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for index in range(16):
                    nursery.start_soon(publisher, index)
            await broker.job_rooms.join("job-b", FakeMember("sync"), None)  # after the last fan-out
        rooms.stop_all()
    assert sum(store.batches) == 320
    assert len(store.batches) <= 320 // 8  # the publishers answered together come back together
    messages = [json.loads(payload) for frame in member.frames for payload in text_payloads(frame)]
    assert [m["seq"] for m in messages if m["type"] == "job_status"] == list(range(1, 321))


class InterleavedLog(LocalJobLog):
    """A cluster log seen from one node: another node took ``other_seqs`` first, so this
    node's appends come back past them; resync reads are counted."""

    def __init__(self, store):
        super().__init__(store)
        self.taken = 0
        self.reads = 0

    async def load_job(self, job_id, limit):
        from broker.cluster.interface import JobHistory

        return JobHistory("e1", 0, [], None)

    async def append_job_events(self, job_id, events, keep, last_seq):
        from broker.cluster.interface import StoredEvent

        self.taken += 1  # another node's event came first
        stored = []
        for event in events:
            self.taken += 1
            stored.append(StoredEvent(self.taken, event.type, event.assemble(self.taken, "e1")))
        return "e1", stored

    async def read_job_after(self, job_id, after_seq, limit):
        self.reads += 1
        return await self.load_job(job_id, limit)


async def test_own_reply_ahead_of_a_lagging_feed_is_no_hole(tmp_path, autojump_clock):
    """The feed still bringing older seqs while this node's own reply is held ahead
    used to read the log back on every feed message; the feed brings the missing seq."""
    from broker.cluster.interface import StoredEvent

    config = make_config(tmp_path)
    broker = Broker(config)
    member = FakeMember("m")
    async with open_supervisor("rooms") as rooms:
        log = InterleavedLog(MemoryStore())
        broker.job_rooms = JobRooms(rooms, log, LocalPresence(), config.jobs, broker.metrics)
        await broker.job_rooms.join("job-i", member, None)
        assert await broker.job_rooms.publish(broker_event("job-i", 1)) == 2  # seq 1 is another node's
        broker.job_rooms.deliver_remote("job-i", "e1", [StoredEvent(0, "job_status", b"{}")])  # old news
        await broker.job_rooms.join("job-i", FakeMember("sync"), None)
        assert log.reads == 0
        other = StoredEvent(1, "job_status", b'{"type":"job_status","seq":1}')
        broker.job_rooms.deliver_remote("job-i", "e1", [other])
        await broker.job_rooms.join("job-i", FakeMember("sync2"), None)
        rooms.stop_all()
    assert log.reads == 0
    messages = [json.loads(payload) for frame in member.frames for payload in text_payloads(frame)]
    assert [m["seq"] for m in messages if m["type"] == "job_status"] == [1, 2]


class GatedClusterLog(LocalJobLog):
    """A cluster log seen from one node: an append is sequenced when it is called (as
    Redis runs the script) and answered once ``gate`` is set; other nodes' events take
    seqs from the same counter (``take``)."""

    def __init__(self, store):
        super().__init__(store)
        self.last = 0
        self.batches = []
        self.gate = trio.Event()

    def take(self):
        self.last += 1
        return self.last

    async def load_job(self, job_id, limit):
        from broker.cluster.interface import JobHistory

        return JobHistory("e1", self.last, [], None)

    async def append_job_events(self, job_id, events, keep, last_seq):
        from broker.cluster.interface import StoredEvent

        self.batches.append(len(events))
        stored = []
        for event in events:
            seq = self.take()
            stored.append(StoredEvent(seq, event.type, event.assemble(seq, "e1")))
        await self.gate.wait()
        return "e1", stored

    async def read_job_after(self, job_id, after_seq, limit):
        raise AssertionError("no event was lost: nothing to read back")


async def test_feed_events_queued_between_publishes_do_not_split_the_batch(tmp_path, autojump_clock):
    """A room took a batch of publishes only up to the first feed message queued behind
    them: under cross-node load its commits held 1-3 events each. Publishes queued on
    either side of feed messages now go in one commit, and members still get every
    event once, in seq order."""
    from broker.cluster.interface import StoredEvent

    config = make_config(tmp_path)
    broker = Broker(config)
    member = FakeMember("m")
    async with open_supervisor("rooms") as rooms, trio.open_nursery() as nursery:
        log = GatedClusterLog(MemoryStore())
        broker.job_rooms = JobRooms(rooms, log, LocalPresence(), config.jobs, broker.metrics)
        await broker.job_rooms.join("job-f", member, None)
        seqs = {}

        async def publish(index):
            seqs[index] = await broker.job_rooms.publish(broker_event("job-f", index))

        nursery.start_soon(publish, 0)  # being committed: the room waits for its answer
        await trio.testing.wait_all_tasks_blocked()
        for index in (1, 2, 3):  # queued behind it, each followed by another node's event
            nursery.start_soon(publish, index)
            await trio.testing.wait_all_tasks_blocked()
            seq = log.take()
            payload = b'{"type":"job_status","jobId":"job-f","seq":%d}' % seq
            broker.job_rooms.deliver_remote("job-f", "e1", [StoredEvent(seq, "job_status", payload)])
        log.gate.set()
        with trio.fail_after(5):
            while len(seqs) < 4:
                await trio.testing.wait_all_tasks_blocked()
            await broker.job_rooms.join("job-f", FakeMember("sync"), None)  # after the last fan-out
        rooms.stop_all()
    assert log.batches == [1, 3]
    assert [seqs[i] for i in range(4)] == [1, 5, 6, 7]
    messages = [json.loads(payload) for frame in member.frames for payload in text_payloads(frame)]
    assert [m["seq"] for m in messages if m["type"] == "job_status"] == list(range(1, 8))


class HandAnsweredLog(LocalJobLog):
    """A cluster log whose appends are sequenced when sent (as Redis runs scripts in
    send order) and answered only when the test says so, in send order."""

    def __init__(self, store):
        super().__init__(store)
        self.last = 0
        self.sent = []  # (PendingAppend, on_answer, stored events)

    async def load_job(self, job_id, limit):
        from broker.cluster.interface import JobHistory

        return JobHistory("e1", self.last, [], None)

    async def send_job_events(self, job_id, events, keep, last_seq, on_answer):
        from broker.cluster.interface import PendingAppend, StoredEvent

        stored = []
        for event in events:
            self.last += 1
            stored.append(StoredEvent(self.last, event.type, event.assemble(self.last, "e1")))
        pending = PendingAppend()
        self.sent.append((pending, on_answer, stored))
        return pending

    def answer(self, index, error=None):
        pending, on_answer, stored = self.sent[index]
        if error is None:
            pending.resolve("e1", stored)
        else:
            pending.fail(error)
        on_answer()

    async def read_job_after(self, job_id, after_seq, limit):
        from broker.cluster.interface import JobHistory

        events = [e for _, _, stored in self.sent for e in stored if e.seq > after_seq]
        return JobHistory("e1", self.last, events, None)


async def test_a_room_sends_batches_while_earlier_ones_are_in_flight_and_answers_each_its_own(tmp_path,
                                                                                             autojump_clock):
    """Publishes that arrive while a commit is on its way go out at once, behind it;
    each publisher gets its own seq (or its own batch's error), members get the stored
    events in seq order, and a failed batch between two good ones holds nothing back."""
    from broker.cluster import BackplaneUnavailable

    config = make_config(tmp_path)
    broker = Broker(config)
    member = FakeMember("m")
    async with open_supervisor("rooms") as rooms, trio.open_nursery() as nursery:
        log = HandAnsweredLog(MemoryStore())
        broker.job_rooms = JobRooms(rooms, log, LocalPresence(), config.jobs, broker.metrics)
        await broker.job_rooms.join("job-p", member, None)
        results = {}

        async def publish(index):
            try:
                results[index] = await broker.job_rooms.publish(broker_event("job-p", index))
            except BackplaneUnavailable as exc:
                results[index] = exc

        for index in range(3):  # each sent while the ones before wait for their answers
            nursery.start_soon(publish, index)
            await trio.testing.wait_all_tasks_blocked()
        assert [len(stored) for _, _, stored in log.sent] == [1, 1, 1]
        assert results == {}
        log.answer(0)
        log.answer(1, BackplaneUnavailable("redis: connection lost"))
        log.answer(2)
        with trio.fail_after(5):
            while len(results) < 3:
                await trio.testing.wait_all_tasks_blocked()
            await broker.job_rooms.join("job-p", FakeMember("sync"), None)  # after the fan-out
        assert results[0] == 1 and isinstance(results[1], BackplaneUnavailable) and results[2] == 3

        def seqs_sent():
            messages = [json.loads(payload) for frame in member.frames for payload in text_payloads(frame)]
            return [m for m in messages if m["type"] == "job_status"]

        # seq 2 was stored, its answer lost: seq 3 waits for it, as the feed brings it
        # (the script published it with the store, atomically)
        assert [m["seq"] for m in seqs_sent()] == [1]
        broker.job_rooms.deliver_remote("job-p", "e1", log.sent[1][2])
        with trio.fail_after(5):
            await broker.job_rooms.join("job-p", FakeMember("sync2"), None)
        statuses = seqs_sent()
        assert [m["seq"] for m in statuses] == [1, 2, 3]
        assert [m["data"]["i"] for m in statuses] == [0, 1, 2]
        rooms.stop_all()


async def test_a_room_that_stops_with_commits_in_flight_fails_their_publishers(tmp_path, autojump_clock):
    """Stopping a room (shutdown) while its commits wait for answers: their publishers
    get RoomUnavailable at once, never a hang and never a 200."""
    from broker.hub.rooms import RoomUnavailable

    config = make_config(tmp_path)
    broker = Broker(config)
    async with open_supervisor("rooms") as rooms, trio.open_nursery() as nursery:
        log = HandAnsweredLog(MemoryStore())
        broker.job_rooms = JobRooms(rooms, log, LocalPresence(), config.jobs, broker.metrics)
        failures = []

        async def publish(index):
            with pytest.raises(RoomUnavailable):
                await broker.job_rooms.publish(broker_event("job-s", index))
            failures.append(index)

        for index in range(2):
            nursery.start_soon(publish, index)
            await trio.testing.wait_all_tasks_blocked()
        assert len(log.sent) == 2
        rooms.stop_all()
        with trio.fail_after(5):
            while len(failures) < 2:
                await trio.testing.wait_all_tasks_blocked()
        assert sorted(failures) == [0, 1]


async def test_pipelined_publishes_of_one_connection_are_queued_before_the_first_is_answered(tmp_path,
                                                                                         autojump_clock):
    """A keep-alive client that sends publishes without waiting for each answer: the
    front reads and queues them all while the first commit is still on its way (one
    commit can take them together), and answers them in request order, seqs in that order."""
    from tests.support.clients import publish_head

    class GatedCountingStore(GatedStore):
        committing = 0

        async def append_job_events(self, job_id, events, keep):
            self.committing = len(events)
            await super().append_job_events(job_id, events, keep)

    config = make_config(tmp_path)
    broker = Broker(config)
    store = GatedCountingStore()
    async with open_supervisor("rooms") as rooms, trio.open_nursery() as nursery:
        broker.store = store
        broker.job_rooms = JobRooms(rooms, LocalJobLog(store), LocalPresence(), config.jobs, broker.metrics)
        server_end, client_end = trio.testing.memory_stream_pair()
        nursery.start_soon(broker.http_front().handle_tcp, server_end)
        bodies = [json.dumps({"jobId": "job-h", "type": "job_status", "data": {"status": f"s{i}"}}).encode()
                  for i in range(6)]
        await client_end.send_all(b"".join(publish_head(body) + body for body in bodies))
        await trio.testing.wait_all_tasks_blocked()
        room = broker.job_rooms.room("job-h")
        # the first commit is on its way; every request was read and queued meanwhile
        assert store.committing >= 1 and store.committing + room.inbox.stats().depth == 6
        store.gate.set()
        received = b""
        with trio.fail_after(5):
            while received.count(b"HTTP/1.1 ") < 6 or not received.endswith(b"}"):
                received += await client_end.receive_some(65536)
        answers = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in received.split(b"HTTP/1.1 ")[1:]]
        assert [a["seq"] for a in answers] == [1, 2, 3, 4, 5, 6]
        assert store.events["job-h"][-1].payload.count(b'"s5"') == 1
        await client_end.aclose()
        rooms.stop_all()

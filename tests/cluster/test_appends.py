"""Publish scripts in flight on the Redis backplane's writer connection (a real
redis-server, tests/support/services.py): a room sends its batches back to back without
waiting for answers. What must hold: Redis applies them in send order (seqs follow
it), each answer goes to its own batch, and when a script fails or the connection drops
with scripts in flight, none of them is answered as stored unless it is in the log."""

from __future__ import annotations

import time

import pytest
import trio

from broker.cluster import BackplaneUnavailable, PendingAppend
from broker.cluster.redis import RedisBackplane
from broker.config.loader import ClusterConfig
from broker.protocols import JobEvent, job_event_parts
from tests.support.cluster import NoFeed
from tests.support.services import redis_command, redis_server


def parts(job_id: str, label: str, count: int = 1):
    return [job_event_parts(JobEvent(job_id, "job_status", {"status": f"{label}-{i}"}), time.time())
            for i in range(count)]


async def send(backplane: RedisBackplane, job_id: str, label: str, count: int = 1,
               answers: list[str] | None = None) -> PendingAppend:
    return await backplane.job_log.send_job_events(job_id, parts(job_id, label, count), 1000, 0,
                                           lambda: answers.append(label) if answers is not None else None)


async def stored_statuses(backplane: RedisBackplane, job_id: str) -> dict[int, str]:
    import json

    history = await backplane.job_log.read_job_after(job_id, 0, 1000)
    return {e.seq: json.loads(e.payload)["data"]["status"] for e in history.events}


async def test_back_to_back_appends_are_sequenced_in_send_order_and_answered_in_it(tmp_path):
    async with redis_server(tmp_path) as redis:
        backplane = RedisBackplane(ClusterConfig(redis_url=redis.url))
        feed = NoFeed()
        async with backplane.open(feed, feed, feed, feed):
            answers: list[str] = []
            sizes = [1, 3, 2, 5, 1] * 20
            pending = [await send(backplane, "job-o", f"b{i}", size, answers) for i, size in enumerate(sizes)]
            with trio.fail_after(10):
                await pending[-1].wait()
            assert answers == [f"b{i}" for i in range(len(sizes))]  # called back in send order
            expected, seq = {}, 0
            for i, (size, answer) in enumerate(zip(sizes, pending, strict=True)):
                epoch, stored = answer.result()
                assert [e.seq for e in stored] == list(range(seq + 1, seq + size + 1))
                for j in range(size):
                    expected[seq + 1 + j] = f"b{i}-{j}"
                seq += size
            assert await stored_statuses(backplane, "job-o") == expected


async def test_writer_connection_dropped_with_appends_in_flight_acknowledges_none_of_them(tmp_path):
    """Redis holds the scripts (CLIENT PAUSE), the connection is killed: none ran, each
    is answered BackplaneUnavailable, and the next append (a new connection) continues
    the seqs with no gap."""
    async with redis_server(tmp_path) as redis:
        backplane = RedisBackplane(ClusterConfig(redis_url=redis.url))
        feed = NoFeed()
        async with backplane.open(feed, feed, feed, feed):
            first = await send(backplane, "job-k", "before")
            with trio.fail_after(10):
                await first.wait()
            assert [e.seq for e in first.result()[1]] == [1]
            assert (await redis_command(redis.port, "CLIENT", "PAUSE", "10000", "WRITE")) == b"+OK\r\n"
            in_flight = [await send(backplane, "job-k", f"held{i}") for i in range(20)]
            assert not any(p.answered for p in in_flight)
            assert (await redis_command(redis.port, "CLIENT", "KILL", "TYPE", "normal")).startswith(b":")
            with trio.fail_after(10):
                for pending in in_flight:
                    await pending.wait()
            assert (await redis_command(redis.port, "CLIENT", "UNPAUSE")) == b"+OK\r\n"
            for pending in in_flight:
                with pytest.raises(BackplaneUnavailable):
                    pending.result()
            with trio.fail_after(10):
                while True:  # the pool's connections were killed too: wait until Redis answers again
                    try:
                        after = await send(backplane, "job-k", "after")
                        await after.wait()
                        after.result()
                        break
                    except BackplaneUnavailable:
                        await trio.sleep(0.05)
            assert [e.seq for e in after.result()[1]] == [2]
            assert await stored_statuses(backplane, "job-k") == {1: "before-0", 2: "after-0"}


async def test_a_script_failing_between_others_in_flight_never_acknowledges_an_unstored_event(tmp_path):
    """The middle script fails (its job's seq key holds no number): it is answered with
    an error; the one behind it is either answered with its real seqs or not
    acknowledged; appends after that go on, gap-free."""
    async with redis_server(tmp_path) as redis:
        backplane = RedisBackplane(ClusterConfig(redis_url=redis.url))
        feed = NoFeed()
        async with backplane.open(feed, feed, feed, feed):
            seq_key = backplane.job_log._job_keys("job-bad")[1]
            assert (await redis_command(redis.port, "SET", seq_key, "not-a-number")) == b"+OK\r\n"
            a = await send(backplane, "job-m", "a", 2)
            bad = await send(backplane, "job-bad", "x")
            c = await send(backplane, "job-m", "c", 2)
            with trio.fail_after(10):
                await c.wait()
            assert [e.seq for e in a.result()[1]] == [1, 2]
            with pytest.raises(BackplaneUnavailable):
                bad.result()
            acknowledged = {1: "a-0", 2: "a-1"}
            try:
                acknowledged.update({e.seq: f"c-{i}" for i, e in enumerate(c.result()[1])})
            except BackplaneUnavailable:
                pass  # sent before the failure was seen: may be stored, never acknowledged
            d = await send(backplane, "job-m", "d")
            with trio.fail_after(10):
                await d.wait()
            stored = await stored_statuses(backplane, "job-m")
            assert sorted(stored) == list(range(1, len(stored) + 1))  # gap-free
            assert stored.items() >= acknowledged.items()  # every acknowledged event is stored as answered
            assert stored[d.result()[1][0].seq] == "d-0" and d.result()[1][0].seq == len(stored)


class RecordingFeed(NoFeed):
    def __init__(self):
        self.delivered = []

    def deliver_remote(self, job_id, epoch, events):
        self.delivered.append((job_id, epoch, [e.seq for e in events]))


def test_a_burst_of_feed_messages_reaches_each_room_as_one_delivery_in_seq_order():
    """The feed drains every pub/sub message already received per wake-up: a job's
    events from consecutive messages go to its room together, in order; an epoch
    change is never merged across."""
    backplane = RedisBackplane(ClusterConfig(redis_url="redis://127.0.0.1:1/0"))
    channel = backplane.job_log.channel.encode()

    def job_message(job_id: str, epoch: str, first: int, count: int) -> dict:
        parts = [job_id.encode(), epoch.encode(), str(first).encode()]
        for seq in range(first, first + count):
            parts += [b"job_status", b'{"seq":%d}' % seq]
        return {"type": b"message", "channel": channel, "data": b"\n".join(parts)}

    feed = RecordingFeed()
    backplane.job_log.feed = feed
    backplane.node.hand_on([job_message("a", "e1", 1, 2), job_message("b", "e1", 1, 1),
                            job_message("a", "e1", 3, 1), job_message("b", "e1", 2, 2),
                            job_message("c", "e1", 7, 1), job_message("c", "e2", 1, 1)])
    assert feed.delivered == [("c", "e1", [7]), ("a", "e1", [1, 2, 3]), ("b", "e1", [1, 2, 3]), ("c", "e2", [1])]


@pytest.mark.parametrize("garbage", [b"", b"job-x", b"job-x\ne1\nnot-a-seq", b"job-x\ne1\n1\njob_status",
                                     b"\xff\xfe\n\xff\n1", b"only\none"])
def test_a_message_on_the_brokers_channels_that_is_not_the_brokers_is_dropped(garbage, caplog):
    """Something else publishing on the broker's channels (a marker, a typo in redis-cli)
    never stops the feed or the node: the message is logged and dropped, and the next
    ones are handed on as before."""
    backplane = RedisBackplane(ClusterConfig(redis_url="redis://127.0.0.1:1/0"))
    feed = RecordingFeed()
    backplane.job_log.feed = feed
    good = {"type": b"message", "channel": backplane.job_log.channel.encode(),
            "data": b"job-a\ne1\n1\njob_status\n{}"}
    messages = [{"type": b"message", "channel": channel.encode(), "data": garbage}
                for channel in backplane.node._channels]
    backplane.node.hand_on([*messages, good])
    assert feed.delivered == [("job-a", "e1", [1])]
    assert "that is not the broker's was dropped" in caplog.text

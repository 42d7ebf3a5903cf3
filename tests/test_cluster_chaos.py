"""Faults under publish load, bounded in count and time, on a cluster of brokers in one
trio program sharing a real redis-server: the pub/sub connections killed by Redis
(``CLIENT KILL TYPE pubsub``), Redis itself killed (-9) and restarted on its AOF.

Each asserts: every acknowledged event reaches every subscriber, once, in seq order.
(A publish whose reply was lost may be stored without an ack: it arrives too, and
the publisher's retry arrives as a new event after it.)
"""

from __future__ import annotations

import trio

from broker.store import StoreError

from .cluster import Subscriber, nodes, wait_feed_up
from .services import redis_command, redis_server

EVENTS = 150


class Publisher:
    """Publishes EVENTS events through ``node``, retrying what was not acknowledged."""

    def __init__(self, node, job_id: str, name: str) -> None:
        self.node = node
        self.job_id = job_id
        self.name = name
        self.acked: dict[int, str] = {}
        self.refused = 0

    async def run(self) -> None:
        for i in range(EVENTS):
            while True:
                try:
                    seq = await self.node.publish(self.job_id, "job_status", {"status": f"{self.name}-{i}"})
                    self.acked[seq] = f"{self.name}-{i}"
                    break
                except StoreError:
                    self.refused += 1  # 503 over HTTP: the publisher retries
                    await trio.sleep(0.01)


def check(subscriber: Subscriber, publishers: list[Publisher]) -> None:
    seqs = subscriber.seqs
    assert seqs == sorted(set(seqs)), "duplicated or reordered"
    received = {e["seq"]: e["data"]["status"] for e in subscriber.events}
    for publisher in publishers:
        for seq, status in publisher.acked.items():
            assert received.get(seq) == status, f"acknowledged seq {seq} lost"
        mine = [int(received[s].split("-")[1]) for s in seqs if received[s].startswith(publisher.name + "-")]
        assert mine == sorted(mine), "a publisher's events reordered"
        # a publish whose reply was lost (Redis killed after storing it) is retried by its
        # publisher: the retry is a new event; only one of the two was acknowledged
        assert len(set(publisher.acked.values())) == len(publisher.acked) == EVENTS


async def run_under_load(tmp_path, pg_url, fault) -> tuple[list[Subscriber], list[Publisher], list]:
    """Two nodes, a subscriber and a publisher on each; ``fault(redis, nodes, publishers)``
    runs once a third of the events are acknowledged, while publishing goes on."""
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as cluster:
        subscribers = [Subscriber(node.url("/ws?token=demo-token"), "job-c") for node in cluster]
        publishers = [Publisher(node, "job-c", f"p{i}") for i, node in enumerate(cluster)]
        async with trio.open_nursery() as nursery:
            for subscriber in subscribers:
                nursery.start_soon(subscriber.run)
            with trio.fail_after(10):
                for subscriber in subscribers:
                    await subscriber.joined.wait()
            with trio.fail_after(60):
                async with trio.open_nursery() as load:
                    for publisher in publishers:
                        load.start_soon(publisher.run)
                    while sum(len(p.acked) for p in publishers) < len(publishers) * EVENTS // 3:
                        await trio.sleep(0.005)
                    await fault(redis, cluster, publishers)
            last = max(max(p.acked) for p in publishers)
            for subscriber in subscribers:
                with trio.fail_after(30):
                    while not subscriber.events or subscriber.events[-1]["seq"] < last:
                        await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        return subscribers, publishers, cluster


async def test_pubsub_connections_killed_by_redis_under_load(tmp_path, pg_url):
    async def kill_pubsub(redis, cluster, publishers) -> None:
        assert (await redis_command(redis.port, "CLIENT", "KILL", "TYPE", "pubsub")) == b":2\r\n"

    subscribers, publishers, cluster = await run_under_load(tmp_path, pg_url, kill_pubsub)
    assert all(node.broker.backplane.reconnects >= 1 for node in cluster)  # the fault did happen
    for subscriber in subscribers:
        check(subscriber, publishers)


async def test_redis_killed_and_restarted_on_its_aof_under_load(tmp_path, pg_url):
    async def restart(redis, cluster, publishers) -> None:
        redis.kill()
        with trio.fail_after(10):  # publishes meanwhile are refused (503), never acknowledged
            while not all(p.refused for p in publishers):
                await trio.sleep(0.005)
        await redis.start()
        for node in cluster:
            await wait_feed_up(node)

    subscribers, publishers, cluster = await run_under_load(tmp_path, pg_url, restart)
    acked = sorted(seq for p in publishers for seq in p.acked)
    assert len(acked) == 2 * EVENTS and acked == sorted(set(acked))
    for subscriber in subscribers:
        check(subscriber, publishers)

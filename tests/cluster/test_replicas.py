"""``[cluster] min_replicas`` on Redis run as production runs it (a master, an AOF replica
and Sentinel as real processes, tests/support/redis_ha.py): a publish is answered 200
only once the replica has it, and published live only then; without the replica (stopped,
or frozen with SIGSTOP so its link stays up but it acknowledges nothing) publishes are
answered 503 by the WAIT, never 200, and nobody receives them live. An idempotency
repeat, a login claim and a ban wait for the replica too. Scripts sent while a WAIT is
on its way share the next one, and are answered and published in send order.

The replica is frozen with SIGSTOP rather than paused from inside: ``CLIENT PAUSE`` does
not stop a replica's link and ``DEBUG SLEEP`` is off by default in Redis 7."""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import asynccontextmanager

import coredis
import trio
import trio_websocket

from broker.auth.tokens import issue_token
from broker.cluster import BackplaneUnavailable
from broker.cluster.redis import RedisBackplane
from broker.config.loader import ClusterConfig
from broker.protocols import JobEvent, job_event_parts
from broker.tools.httpclient import http_request
from tests.support.cluster import NoFeed, Subscriber, nodes
from tests.support.helpers import API_KEY, JWT_SECRET, expect_close, recv_json
from tests.support.redis_ha import redis_ha, redis_info_field, redis_pair

WAITING = {"min_replicas": 1, "replica_timeout": 0.5}


async def publish_http(port: int, job_id: str, status: str, key: str | None = None) -> tuple[int, dict]:
    event = {"jobId": job_id, "type": "job_status", "data": {"status": status}}
    if key is not None:
        event["idempotencyKey"] = key
    response = await http_request("POST", f"http://127.0.0.1:{port}/api/publish", body=json.dumps(event).encode(),
                                  headers={"Authorization": f"Bearer {API_KEY}"})
    return response.status, json.loads(response.body)


async def next_message(pubsub) -> bytes:
    """The next message published on the channel (subscribe confirmations skipped)."""
    with trio.fail_after(10):
        while True:
            message = await pubsub.get_message()
            if message is not None and message["type"] in ("message", b"message"):
                return message["data"]


@asynccontextmanager
async def frozen(server):
    """The Redis process stopped with SIGSTOP (connections up, nothing answered) inside."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


async def test_a_publish_is_answered_once_the_replica_has_it_and_refused_without_it(tmp_path, pg_url):
    async with redis_ha(tmp_path) as ha, nodes(tmp_path, ha.servers[0].url, pg_url, 1, cluster=WAITING) as (node,):
        master, replica = ha.servers
        async with coredis.Redis.from_url(master.url) as on_master, coredis.Redis.from_url(replica.url) as on_replica, \
                on_master.pubsub(channels=["broker:jobs", "test:marker"]) as live, trio.open_nursery() as nursery:
            subscriber = Subscriber(node.url("/ws?token=demo-token"), "job-r")
            nursery.start_soon(subscriber.run)
            with trio.fail_after(10):
                await subscriber.joined.wait()
            status, body = await publish_http(node.port, "job-r", "UP")
            assert status == 200 and body["seq"] == 1
            assert len(await on_replica.xrange("broker:job:job-r:log")) == 1  # on the replica before the 200
            assert (await next_message(live)).startswith(b"job-r\n")  # then published
            await subscriber.wait_for(1)

            replica.stop()
            for i in range(3):
                try:
                    seq = await node.publish("job-r", "job_status", {"status": f"DOWN-{i}"})
                except BackplaneUnavailable as exc:
                    assert "0 of 1 replicas acknowledged" in str(exc)  # the WAIT decided, not a timeout
                else:
                    raise AssertionError(f"acknowledged seq {seq} with no replica")
            status, _ = await publish_http(node.port, "job-r", "DOWN-http")
            assert status == 503
            assert len(await on_master.xrange("broker:job:job-r:log")) == 5  # stored on the master...
            await on_master.publish("test:marker", b"marker")  # one subscription: messages in publish order
            assert await next_message(live) == b"marker"  # ...never published
            assert subscriber.seqs == [1]

            await replica.start()  # its AOF, then the master's stream: it catches up
            with trio.fail_after(15):  # a publisher retrying on 503: 200 once the replica acknowledges again
                while (answer := await publish_http(node.port, "job-r", "BACK"))[0] != 200:
                    await trio.sleep(0.05)
            last = answer[1]["seq"]
            assert last >= 6
            await subscriber.wait_for(last)  # the refused ones come from the stream, at the hole
            assert subscriber.seqs == list(range(1, last + 1))
            nursery.cancel_scope.cancel()


async def test_an_idempotency_repeat_is_answered_only_once_the_first_event_is_replicated(tmp_path, pg_url):
    """Node b's repeat writes nothing new, yet its WAIT must cover node a's unreplicated
    first event (the script's INCRBY is replicated: b's WAIT waits past a's write). And
    the repeat's 200 brings that event to the members live: its first attempt was stored
    but answered 503 and never published, and no later event comes to show the hole."""
    async with redis_ha(tmp_path) as ha, nodes(tmp_path, ha.servers[0].url, pg_url, 2, cluster=WAITING) as (a, b), \
            trio.open_nursery() as nursery:
        with trio.fail_after(10):  # b's writer has a replicated write (a loaded machine may miss one WAIT: retried)
            while (await publish_http(b.port, "job-i", "WARM-UP", key="warm-up"))[0] != 200:
                await trio.sleep(0.05)
        watchers = [Subscriber(node.url("/ws?token=demo-token"), "job-i") for node in (a, b)]
        for watcher in watchers:
            nursery.start_soon(watcher.run)
            await watcher.wait_for(1)  # the warm-up, from the history
        async with frozen(ha.servers[1]):
            assert (await publish_http(a.port, "job-i", "ONCE", key="k-1"))[0] == 503
            assert (await publish_http(b.port, "job-i", "ONCE", key="k-1"))[0] == 503
            assert (await publish_http(a.port, "job-i", "ONCE", key="k-1"))[0] == 503
        assert [watcher.seqs for watcher in watchers] == [[1], [1]]  # stored, never published
        with trio.fail_after(10):
            while (answer := await publish_http(b.port, "job-i", "ONCE", key="k-1"))[0] != 200:
                await trio.sleep(0.05)
        assert answer[1]["seq"] == 2  # the first attempt's seq: stored once
        for watcher in watchers:  # on both nodes, with nothing published after it
            await watcher.wait_for(2, timeout=10)
            assert watcher.seqs == [1, 2] and watcher.events[1]["data"]["status"] == "ONCE"
        nursery.cancel_scope.cancel()


async def test_a_login_claim_and_a_ban_wait_for_the_replica(tmp_path, pg_url):
    async with redis_ha(tmp_path) as ha, nodes(tmp_path, ha.servers[0].url, pg_url, 1, cluster=WAITING) as (node,):
        def jwt_url(user: str) -> str:
            return node.url(f"/ws?token={issue_token(JWT_SECRET, user, 60)}")

        ban = f"http://127.0.0.1:{node.port}/api/users/mallory/disconnect"
        body = json.dumps({"banSeconds": 60}).encode()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with frozen(ha.servers[1]):
            async with trio_websocket.open_websocket_url(jwt_url("zoe")) as ws:
                refused = await recv_json(ws)
                assert refused["type"] == "error" and refused["code"] == "UNAVAILABLE"
                assert await expect_close(ws) == 1013  # not admitted: a failover could lose the entry
            async with coredis.Redis.from_url(ha.servers[0].url) as on_master:
                assert await on_master.hlen("broker:login:user:zoe") == 0  # and the master's entry taken back
            assert (await http_request("POST", ban, body=body, headers=headers)).status == 503
        with trio.fail_after(10):  # thawed, the replica catches up: a login is admitted again
            while True:
                async with trio_websocket.open_websocket_url(jwt_url("zoe")) as ws:
                    first = await recv_json(ws)
                if first["type"] == "connection_established":
                    break
                assert first["code"] == "UNAVAILABLE"
                await trio.sleep(0.05)
        with trio.fail_after(10):
            while (await http_request("POST", ban, body=body, headers=headers)).status != 200:
                await trio.sleep(0.05)
        async with coredis.Redis.from_url(ha.servers[1].url) as on_replica:
            assert await on_replica.exists(["broker:ban:mallory"]) == 1  # the replica has the ban


async def test_scripts_sent_while_a_wait_is_on_its_way_share_the_next_one_and_are_published_in_send_order(tmp_path):
    """The replica frozen while 100 batches go out back to back: the first script's WAIT
    waits for it (Redis holds the connection's next commands meanwhile); thawed, one
    more WAIT covers the 99 others. Two WAITs in all; every batch answered in send order
    and published after its WAIT, in seq order."""
    async with redis_pair(tmp_path) as (master, replica), on_master_pubsub(master) as live:
        backplane = RedisBackplane(ClusterConfig(redis_url=master.url, min_replicas=1, replica_timeout=5.0,
                                                 command_timeout=10.0))
        feed = NoFeed()
        async with backplane.open(feed, feed, feed, feed):
            answers: list[int] = []
            async with frozen(replica):
                pending = []
                for i in range(100):
                    parts = [job_event_parts(JobEvent("job-w", "job_status", {"status": f"B{i}"}), time.time())]
                    pending.append(await backplane.job_log.send_job_events(
                        "job-w", parts, 1000, 0, lambda i=i: answers.append(i)))
                assert not any(p.answered for p in pending)  # nothing answered before the replica has it
            with trio.fail_after(10):
                await pending[-1].wait()
            assert answers == list(range(100))
            assert [p.result()[1][0].seq for p in pending] == list(range(1, 101))
            published = [int((await next_message(live)).split(b"\n")[2]) for _ in range(100)]
            assert published == list(range(1, 101))  # each batch's first seq, in order
            waits = await redis_info_field(master.port, "commandstats", "cmdstat_wait")
            assert waits is not None and waits.startswith("calls=2,")


@asynccontextmanager
async def on_master_pubsub(master):
    async with coredis.Redis.from_url(master.url) as client, client.pubsub(channels=["broker:jobs"]) as pubsub:
        yield pubsub


async def test_a_refused_batch_is_published_once_a_later_wait_covers_it(tmp_path, pg_url):
    """A publish refused by its WAIT is stored on the master all the same. Once a later
    WAIT on the node's connection succeeds (here for another job) the replica has it too,
    and its members get it live: no later event of its job is needed to show the hole."""
    async with redis_ha(tmp_path) as ha, nodes(tmp_path, ha.servers[0].url, pg_url, 1, cluster=WAITING) as (node,), \
            trio.open_nursery() as nursery:
        watcher = Subscriber(node.url("/ws?token=demo-token"), "job-late")
        nursery.start_soon(watcher.run)
        with trio.fail_after(10):
            await watcher.joined.wait()
        async with frozen(ha.servers[1]):
            assert (await publish_http(node.port, "job-late", "REFUSED"))[0] == 503
        assert watcher.seqs == []
        with trio.fail_after(10):  # another job's publish, retried until the thawed replica acknowledges
            while (await publish_http(node.port, "job-other", "COVER", key="cover"))[0] != 200:
                await trio.sleep(0.05)
        await watcher.wait_for(1, timeout=10)
        assert watcher.seqs == [1] and watcher.events[0]["data"]["status"] == "REFUSED"
        nursery.cancel_scope.cancel()

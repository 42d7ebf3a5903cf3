"""A failover seen by job rooms: two nodes in this program on a real master and replica
(tests/support/redis_ha.py ``redis_pair``, roles changed by hand with ``REPLICAOF``).

The master's replica is promoted, the old master becomes its replica, then is promoted
back: the nodes, on the first master's address all along, write to a master that was
promoted, with no append in between on the other one. The first append there starts a
new epoch (``P:master`` in broker/cluster/lua/ holds the replication ID, which a
promotion changes, not the address, which came back). Members of a room get HISTORY_GAP
and then only the new epoch's events (never the old epoch's events a second time); a
client resuming with the old epoch gets HISTORY_GAP and the latest status; seqs go on."""

from __future__ import annotations

import json

import trio
import trio_websocket

from broker.cluster import BackplaneUnavailable
from broker.hub.rooms import RoomUnavailable
from broker.store import StoreError
from tests.support.cluster import Subscriber, nodes
from tests.support.helpers import recv_json, recv_until
from tests.support.redis_ha import redis_info_field, redis_pair, wait_replica_caught_up
from tests.support.services import redis_command


async def publish_until_stored(node, status: str) -> int:
    """Publish until acknowledged (503s while the master is a replica for a moment)."""
    with trio.fail_after(20):
        while True:
            try:
                return await node.publish("job-f", "job_status", {"status": status})
            except (BackplaneUnavailable, StoreError, RoomUnavailable):
                await trio.sleep(0.02)


async def test_a_failover_back_to_the_same_address_starts_a_new_epoch_members_get_only_new_events(tmp_path, pg_url):
    async with redis_pair(tmp_path) as (first, second), nodes(tmp_path, first.url, pg_url, 2) as (a, b):
        subscriber = Subscriber(b.url("/ws?token=demo-token"), "job-f")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber.run)
            with trio.fail_after(10):
                await subscriber.joined.wait()
            for i in range(1, 4):
                assert await a.publish("job-f", "job_status", {"status": f"S{i}"}) == i
            await subscriber.wait_for(3)
            old_epoch = subscriber.epoch
            await wait_replica_caught_up(first, second)
            # the replica promoted; the old master its replica; then promoted back
            assert await redis_command(second.port, "REPLICAOF", "NO", "ONE") == b"+OK\r\n"
            assert await redis_command(first.port, "REPLICAOF", "127.0.0.1", str(second.port)) == b"+OK\r\n"
            with trio.fail_after(10):
                while await redis_info_field(first.port, "replication", "master_link_status") != "up":
                    await trio.sleep(0.02)
            assert await redis_command(first.port, "REPLICAOF", "NO", "ONE") == b"+OK\r\n"
            assert await publish_until_stored(a, "AFTER") == 4  # seqs go on...
            await subscriber.wait_for(4)  # (Subscriber fails on an old event sent twice in one epoch)
            after = subscriber.events[-1]
            assert after["data"]["status"] == "AFTER" and after["epoch"] != old_epoch  # ...in a new epoch
            assert [e["seq"] for e in subscriber.events] == [1, 2, 3, 4]
            assert [e["code"] for e in subscriber.errors] == ["HISTORY_GAP"]
            nursery.cancel_scope.cancel()
        async with trio_websocket.open_websocket_url(a.url("/ws?token=demo-token")) as ws:
            await recv_json(ws)
            await ws.send_message(json.dumps({"type": "join_job", "jobId": "job-f", "lastSeq": 3,
                                              "lastEpoch": old_epoch}))
            gap = await recv_json(ws)
            assert gap["type"] == "error" and gap["code"] == "HISTORY_GAP"
            latest = await recv_json(ws)
            assert latest["data"]["status"] == "AFTER" and latest["seq"] == 4
            joined = await recv_until(ws, lambda m: m["type"] == "joined")
            assert joined["seq"] == 4 and joined["epoch"] == after["epoch"]

"""A failover seen by job rooms (two nodes in this program, one real redis-server): the
first append after it starts a new epoch while the stream keeps the old epoch's events
(``P:master`` in broker/cluster/lua.py). The failover is made by naming another master
in ``P:master``, as the promoted replica's copy of it does: what follows is the same.

Members of a room get HISTORY_GAP and then only the new epoch's events (never the old
epoch's events a second time); a client resuming with the old epoch gets HISTORY_GAP and
the latest status; publishing goes on, seqs continuing."""

from __future__ import annotations

import json

import trio
import trio_websocket

from tests.support.cluster import Subscriber, nodes
from tests.support.helpers import recv_json, recv_until
from tests.support.services import redis_command, redis_server


async def test_a_failover_starts_a_new_epoch_members_get_history_gap_then_only_new_events(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        subscriber = Subscriber(b.url("/ws?token=demo-token"), "job-f")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber.run)
            with trio.fail_after(10):
                await subscriber.joined.wait()
            for i in range(1, 4):
                assert await a.publish("job-f", "job_status", {"status": f"S{i}"}) == i
            await subscriber.wait_for(3)
            old_epoch = subscriber.epoch
            # the next append goes to a master other than the one the last went to
            assert await redis_command(redis.port, "SET", "broker:master", "10.9.9.9:6379") == b"+OK\r\n"
            assert await a.publish("job-f", "job_status", {"status": "AFTER"}) == 4  # seqs go on...
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

"""Job rooms across nodes: several brokers in one trio program (each its own port, own
store file) sharing one real redis-server started by the test (tests/support/services.py).

What must hold: a publish acknowledged by any node reaches every subscriber on every
node exactly once, in seq order; seq stays gap-free with publishers on every node;
replay and latest status work on any node; when Redis loses its state the epoch
changes and a resuming client is told (HISTORY_GAP), never given a silent restart.
"""

from __future__ import annotations

import json

import trio
import trio_websocket

from broker.tools.httpclient import http_request
from tests.support.cluster import Subscriber, nodes
from tests.support.helpers import API_KEY, recv_json, recv_until
from tests.support.services import redis_server


async def publish_http(port: int, job_id: str, status: str) -> tuple[int, dict]:
    body = json.dumps({"jobId": job_id, "type": "job_status", "data": {"status": status}}).encode()
    response = await http_request("POST", f"http://127.0.0.1:{port}/api/publish", body=body,
                                  headers={"Authorization": f"Bearer {API_KEY}"})
    return response.status, json.loads(response.body)


async def test_publishers_on_every_node_one_gap_free_order_for_every_subscriber(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 3) as cluster:
        async with trio.open_nursery() as nursery:
            subscribers = [Subscriber(node.url("/ws?token=demo-token"), "job-x") for node in cluster for _ in range(2)]
            for subscriber in subscribers:
                nursery.start_soon(subscriber.run)
            with trio.fail_after(10):
                for subscriber in subscribers:
                    await subscriber.joined.wait()
            acked: dict[int, str] = {}

            async def publisher(node, name: str) -> None:
                for i in range(40):
                    seq = await node.publish("job-x", "job_status", {"status": f"{name}-{i}"})
                    acked[seq] = f"{name}-{i}"

            async with trio.open_nursery() as publishers:
                for index, node in enumerate(cluster):
                    publishers.start_soon(publisher, node, f"p{index}")
            assert sorted(acked) == list(range(1, 121))  # gap-free across nodes
            for subscriber in subscribers:
                await subscriber.wait_for(120)
                assert subscriber.seqs == list(range(1, 121))
                assert [e["data"]["status"] for e in subscriber.events] == [acked[s] for s in range(1, 121)]
                assert {e["epoch"] for e in subscriber.events} == {subscriber.epoch}
            # each publisher's own events keep their order
            for name in ("p0", "p1", "p2"):
                mine = [int(acked[s].split("-")[1]) for s in sorted(acked) if acked[s].startswith(name + "-")]
                assert mine == sorted(mine)
            nursery.cancel_scope.cancel()


async def test_replay_and_latest_status_on_another_node(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        for i in range(1, 6):
            status, body = await publish_http(a.port, "job-r", f"S{i}")
            assert status == 200 and body["seq"] == i
        async with trio_websocket.open_websocket_url(b.url("/ws?token=demo-token")) as ws:
            await recv_json(ws)
            await ws.send_message('{"type":"join_job","jobId":"job-r"}')
            latest = await recv_json(ws)
            assert latest["seq"] == 5 and latest["data"]["status"] == "S5"
            joined = await recv_json(ws)
            assert joined["type"] == "joined" and joined["seq"] == 5 and joined["epoch"] == latest["epoch"]
            epoch = joined["epoch"]
        async with trio_websocket.open_websocket_url(b.url("/ws?token=demo-token")) as ws:
            await recv_json(ws)
            await ws.send_message(json.dumps({"type": "join_job", "jobId": "job-r", "lastSeq": 2, "lastEpoch": epoch}))
            replay = [await recv_json(ws) for _ in range(3)]
            assert [e["seq"] for e in replay] == [3, 4, 5]
            assert (await recv_json(ws))["type"] == "joined"
            # live events published on the other node continue the sequence here
            assert (await publish_http(a.port, "job-r", "S6"))[1]["seq"] == 6
            assert (await recv_json(ws))["seq"] == 6


async def test_lost_coordination_state_changes_the_epoch_and_resuming_clients_get_history_gap(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        for i in range(1, 4):
            await a.publish("job-e", "job_status", {"status": f"S{i}"})
        async with trio_websocket.open_websocket_url(b.url("/ws?token=demo-token")) as ws:
            await recv_json(ws)
            await ws.send_message('{"type":"join_job","jobId":"job-e"}')
            old_epoch = (await recv_until(ws, lambda m: m["type"] == "joined"))["epoch"]
        await redis.restart(wipe=True)  # Redis back, empty: everything it coordinated is gone
        with trio.fail_after(10):
            while a.broker.backplane.problem() is not None or b.broker.backplane.problem() is not None:
                await trio.sleep(0.02)
        assert await a.publish("job-e", "job_status", {"status": "AFTER"}) == 1  # seqs restart...
        async with trio_websocket.open_websocket_url(b.url("/ws?token=demo-token")) as ws:
            await recv_json(ws)
            await ws.send_message(json.dumps({"type": "join_job", "jobId": "job-e", "lastSeq": 3,
                                              "lastEpoch": old_epoch}))
            gap = await recv_json(ws)
            assert gap["type"] == "error" and gap["code"] == "HISTORY_GAP"  # ...and the client is told
            latest = await recv_json(ws)
            assert latest["data"]["status"] == "AFTER" and latest["seq"] == 1 and latest["epoch"] != old_epoch
            joined = await recv_json(ws)
            assert joined["type"] == "joined" and joined["epoch"] == latest["epoch"]


async def test_redis_unreachable_health_503_publish_503_then_recovers_and_fills_gaps(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        subscriber = Subscriber(b.url("/ws?token=demo-token"), "job-d")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber.run)
            with trio.fail_after(10):
                await subscriber.joined.wait()
            assert (await publish_http(a.port, "job-d", "BEFORE"))[0] == 200
            redis.kill()
            with trio.fail_after(10):
                while (await http_request("GET", f"http://127.0.0.1:{a.port}/health")).status != 503:
                    await trio.sleep(0.02)
            health = await http_request("GET", f"http://127.0.0.1:{a.port}/health")
            body = json.loads(health.body)
            assert body["status"] == "unavailable" and "redis unreachable" in body["reason"] and body["node"] == "n0"
            metrics = await http_request("GET", f"http://127.0.0.1:{a.port}/metrics")
            assert 'broker_node_info{node="n0"} 1.0' in metrics.text  # the node id in metrics too
            status, error = await publish_http(a.port, "job-d", "DURING")
            assert status == 503 and error["code"] == "UNAVAILABLE"  # never a 200 that is then lost
            await redis.start()  # AOF with appendfsync always: what was acknowledged is still there
            with trio.fail_after(15):
                while (await http_request("GET", f"http://127.0.0.1:{a.port}/health")).status != 200:
                    await trio.sleep(0.05)
            assert (await publish_http(a.port, "job-d", "AFTER")) [1]["seq"] == 2
            await subscriber.wait_for(2)
            assert subscriber.seqs == [1, 2]
            assert [e["data"]["status"] for e in subscriber.events] == ["BEFORE", "AFTER"]
            nursery.cancel_scope.cancel()


async def test_resuming_on_a_node_whose_feed_lags_catches_up_instead_of_reporting_a_gap(tmp_path, pg_url):
    """Found by the cluster load scenario: a client that saw seq N on one node and
    reconnects to a node that has not received N yet must get N+1..., not HISTORY_GAP."""
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        async with trio_websocket.open_websocket_url(b.url("/ws?token=demo-token")) as keeper:
            await recv_json(keeper)
            await keeper.send_message('{"type":"join_job","jobId":"job-l"}')  # B's room is running
            joined = await recv_until(keeper, lambda m: m["type"] == "joined")
            job_log = b.broker.backplane.job_log
            rooms = job_log.feed
            held: list = []

            class Lagging:  # B's feed lags: the job events it brings are held
                def deliver_remote(self, *event):
                    held.append(event)

                def resync_all(self):
                    rooms.resync_all()

            job_log.feed = Lagging()
            for i in range(1, 4):
                await a.publish("job-l", "job_status", {"status": f"S{i}"})
            async with trio_websocket.open_websocket_url(b.url("/ws?token=demo-token")) as ws:
                await recv_json(ws)
                await ws.send_message(json.dumps({"type": "join_job", "jobId": "job-l", "lastSeq": 3,
                                                  "lastEpoch": joined["epoch"]}))
                answer = await recv_json(ws)
                assert answer["type"] == "joined" and answer["seq"] == 3, answer
            job_log.feed = rooms
            for event in held:
                rooms.deliver_remote(*event)
            assert [(await recv_json(keeper))["seq"] for _ in range(3)] == [1, 2, 3]


async def test_doctor_reports_the_node_and_redis_reachability(tmp_path, pg_url):
    from broker.tools.doctor import diagnose

    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 1) as (a,):
        url = a.url("/ws")
        report = await diagnose(url, "demo-token")
        cluster = {step.name: step for step in report.steps}["cluster"]
        assert report.ok and cluster.ok and "node n0" in cluster.detail
        redis.kill()
        with trio.fail_after(10):
            while a.broker.backplane.problem() is None:
                await trio.sleep(0.02)
        report = await diagnose(url, "demo-token")
        cluster = {step.name: step for step in report.steps}["cluster"]
        assert not report.ok and not cluster.ok and "redis unreachable" in cluster.detail
        assert "redis_url" in cluster.fix

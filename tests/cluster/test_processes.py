"""Real `broker serve` processes sharing one redis-server, behind nginx (the documented
site config, round-robin, no stickiness): kill -9 or SIGTERM of a node under publish
load. Its subscribers (closed with 1001 on SIGTERM) reconnect through nginx, land on
another node and resume with lastSeq/lastEpoch: every acknowledged event arrives once,
in order."""

from __future__ import annotations

import json
import os
import signal

import pytest
import trio

from broker.tools.httpclient import http_request
from tests.support.cluster import Subscriber, node_process_handles
from tests.support.helpers import API_KEY, ROOT
from tests.support.processes import broker_cmd
from tests.support.services import nginx_front, redis_server

EVENTS = 200


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
async def test_node_stopped_under_load_its_clients_resume_on_another_node(tmp_path, stop, pg_url):
    async with redis_server(tmp_path) as redis:
        async with node_process_handles(tmp_path, redis.url, pg_url, ["n0", "n1"]) as processes:
            (victim, victim_port), (survivor, survivor_port) = processes
            acked: dict[int, int] = {}
            async with nginx_front(tmp_path / "nginx", [victim_port, survivor_port]) as front, \
                    trio.open_nursery() as nursery:
                # nginx's first connection goes to the first upstream: the victim
                subscriber = Subscriber(f"ws://127.0.0.1:{front}/ws?token=demo-token", "job-k")
                nursery.start_soon(subscriber.run)
                with trio.fail_after(10):
                    await subscriber.joined.wait()

                async def publish_all() -> None:
                    for i in range(EVENTS):
                        body = json.dumps({"jobId": "job-k", "type": "job_status", "data": {"status": f"e{i}"}})
                        response = await http_request("POST", f"http://127.0.0.1:{survivor_port}/api/publish",
                                                      body=body.encode(), headers={"Authorization": f"Bearer {API_KEY}"})
                        assert response.status == 200
                        acked[json.loads(response.body)["seq"]] = i

                with trio.fail_after(60):
                    async with trio.open_nursery() as load:
                        load.start_soon(publish_all)
                        while len(subscriber.events) < EVENTS // 4:
                            await trio.sleep(0.005)
                        victim.send_signal(stop)  # -9: no goodbye; SIGTERM: drain, close with 1001
                await subscriber.wait_for(EVENTS, timeout=30)
                nursery.cancel_scope.cancel()
            assert subscriber.connections == 2  # it was on the victim, and came back through nginx
            if stop == signal.SIGTERM:
                assert subscriber.close_codes == [1001]
            assert subscriber.seqs == list(range(1, EVENTS + 1))
            assert [int(e["data"]["status"][1:]) for e in subscriber.events] == [acked[s] for s in subscriber.seqs]
            assert not subscriber.errors


async def test_check_config_reports_redis_reachability_and_version(tmp_path, pg_url):

    async with redis_server(tmp_path) as redis:
        env = {**os.environ, "BROKER_CLUSTER_REDIS_URL": redis.url, "BROKER_STORE_URL": pg_url}
        ok = await trio.to_thread.run_sync(lambda: broker_cmd("check-config", "--config", str(ROOT / "config.toml"), env=env))
        assert ok.returncode == 0, ok.stderr
        assert "cluster: node (random at start); redis " in ok.stdout
        assert "appendonly=yes, appendfsync=always" in ok.stdout
        redis.kill()
        down = await trio.to_thread.run_sync(lambda: broker_cmd("check-config", "--config", str(ROOT / "config.toml"), env=env))
        assert down.returncode == 1 and "redis unreachable" in down.stderr

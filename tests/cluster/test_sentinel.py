"""Redis through Sentinel: nodes find the master Sentinel names and follow a failover.

A real master, an AOF replica and a Sentinel (quorum 1, down-after 1 s), real
PostgreSQL; the master is killed with kill -9. Each test says what holds after.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time

import trio

from broker import serve
from broker.cluster import BackplaneUnavailable
from broker.hub.rooms import RoomUnavailable
from broker.protocols.chat import private_conversation_id
from broker.store import StoreError
from broker.tools.doctor import diagnose
from broker.tools.httpclient import http_request
from tests.support.clients import ask, jobs_user, join
from tests.support.cluster import (
    Subscriber,
    node_config,
    nodes,
    redis_environment,
    sentinel_settings,
    start_node,
    wait_healthy,
)
from tests.support.helpers import ROOT, recv_until
from tests.support.processes import broker_cmd
from tests.support.redis_ha import redis_ha, redis_info_field
from tests.support.services import free_port, redis_command

log = logging.getLogger(__name__)


async def health(port: int) -> tuple[int, dict]:
    response = await http_request("GET", f"http://127.0.0.1:{port}/health", timeout=2)
    return response.status, json.loads(response.body)


async def wait_health(port: int, status: int, timeout: float = 30) -> dict:
    """Until the node on ``port`` answers /health with ``status``; its body."""
    with trio.fail_after(timeout):
        while True:
            code, body = await health(port)
            if code == status:
                return body
            await trio.sleep(0.02)  # polling the readiness probe, bounded by the deadline above


async def publish_until_stored(node, job_id: str, status: str, timeout: float = 30) -> int:
    """Publish until the node acknowledges it (503s while no master is reachable); the seq."""
    with trio.fail_after(timeout):
        while True:
            try:
                return await node.publish(job_id, "job_status", {"status": status})
            except (BackplaneUnavailable, StoreError, RoomUnavailable):  # all answered 503 over HTTP
                await trio.sleep(0.02)


async def test_two_nodes_follow_a_failover_and_keep_serving(tmp_path, pg_url, caplog):
    async with redis_ha(tmp_path) as ha, nodes(tmp_path, sentinel_settings(ha), pg_url, 2) as cluster:
        old = await ha.master()
        for node in cluster:
            assert node.broker.backplane.master_address == f"127.0.0.1:{old.port}"
            body = await wait_health(node.port, 200)
            assert body["redis"]["master"] == f"127.0.0.1:{old.port}"
            assert body["redis"]["sentinels"] == {ha.sentinels[0]: True}
        subscribers = [Subscriber(node.url("/ws?token=demo-token"), "job-s") for node in cluster]
        async with trio.open_nursery() as nursery:
            for subscriber in subscribers:
                nursery.start_soon(subscriber.run)
            with trio.fail_after(10):
                for subscriber in subscribers:
                    await subscriber.joined.wait()
            before = [await publish_until_stored(node, "job-s", f"before-{i}") for i, node in enumerate(cluster)]
            for subscriber in subscribers:
                await subscriber.wait_for(2)

            await ha.wait_replicas_caught_up(old)  # nothing acknowledged is lost (min_replicas is another test's)
            after: dict[int, int] = {}  # node index -> seq of its publish after the failover
            resumed: dict[int, float] = {}  # node index -> seconds from the kill to that publish's ack

            async def publish_through_the_failover(index: int) -> None:
                after[index] = await publish_until_stored(cluster[index], "job-s", f"after-{index}")
                resumed[index] = time.monotonic() - killed_at

            killed_at, killed_wall = time.monotonic(), time.time()
            old.kill()  # kill -9
            async with trio.open_nursery() as publishing:
                for index in range(len(cluster)):  # publishing from the kill on, retrying each 503
                    publishing.start_soon(publish_through_the_failover, index)
                for node in cluster:
                    body = await wait_health(node.port, 503)
                    assert body["status"] == "unavailable" and "redis" in body["reason"]
                new = await ha.wait_for_new_master(old)
                for node in cluster:
                    body = await wait_health(node.port, 200)
                    assert body["redis"]["master"] == f"127.0.0.1:{new.port}"
                    assert body["redis"]["failovers"] == 1
                    assert node.broker.backplane.master_address == f"127.0.0.1:{new.port}"
            moved = [r.created - killed_wall for r in caplog.records if "moved:" in r.getMessage()]
            log.warning("kill -9 of the master to the first publish acknowledged again: %s (nodes moved after %s)",
                        ", ".join(f"node {i} {resumed[i]:.2f} s" for i in sorted(resumed)),
                        ", ".join(f"{m:.2f} s" for m in moved))
            for subscriber in subscribers:
                await subscriber.wait_for(4)
                received = {e["seq"]: e["data"]["status"] for e in subscriber.events}
                for i, seq in enumerate(before):
                    assert received[seq] == f"before-{i}"
                for i, seq in after.items():
                    assert received[seq] == f"after-{i}"
            nursery.cancel_scope.cancel()

        # presence in a job and who is online, across the two nodes, on the new master
        a, b = cluster
        async with jobs_user(a, "alice") as alice:
            await join(alice, "job-p", presence=True)
            assert (await recv_until(alice, lambda m: m["type"] == "presence"))["users"] == ["alice"]
            async with jobs_user(b, "bob") as bob:
                await join(bob, "job-p")
                change = await recv_until(alice, lambda m: m["type"].startswith("presence_"))
                assert change == {"type": "presence_join", "jobId": "job-p", "userId": "bob"}
                assert (await ask(bob, jobId="job-p"))["users"] == ["alice", "bob"]
                conversation = private_conversation_id("alice", "bob")
                assert (await ask(bob, conversationId=conversation))["users"] == ["alice", "bob"]


async def test_a_node_started_after_the_master_died_finds_the_new_one(tmp_path, pg_url):
    async with redis_ha(tmp_path) as ha:
        old = await ha.master()
        old.kill()
        new = await ha.wait_for_new_master(old)
        dead_sentinel = f"127.0.0.1:{free_port()}"  # asked first, answers nothing: the next one is asked
        settings = {**sentinel_settings(ha), "redis_sentinels": (dead_sentinel, *ha.sentinels)}
        process, port = start_node(tmp_path, settings, pg_url, "late")  # the settings by environment variables
        try:
            await wait_healthy(port, process)
            body = await wait_health(port, 200)
            assert body["node"] == "late" and body["redis"]["master"] == f"127.0.0.1:{new.port}"
            assert body["redis"]["sentinels"] == {dead_sentinel: False, ha.sentinels[0]: True}
            status, answer = await publish_http(port, "job-late")
            assert status == 200 and answer["seq"] == 1
        finally:
            process.kill()
            process.wait()


async def publish_http(port: int, job_id: str) -> tuple[int, dict]:
    from tests.support.helpers import api_request

    return await api_request(port, "POST", "/api/publish", {"jobId": job_id, "type": "job_status",
                                                             "data": {"status": "ok"}})


async def test_the_failover_is_logged_once_per_node(tmp_path, pg_url, caplog):
    async with redis_ha(tmp_path) as ha:
        caplog.set_level(logging.INFO, logger="broker")
        async with nodes(tmp_path, sentinel_settings(ha), pg_url, 1) as (node,):
            old = await ha.master()
            old.kill()
            new = await ha.wait_for_new_master(old)
            await publish_until_stored(node, "job-l", "x")
            assert node.broker.backplane.master_address == f"127.0.0.1:{new.port}"
        moves = [r.getMessage() for r in caplog.records if "moved:" in r.getMessage()]
        assert moves == [f"redis master {ha.master_name!r} moved: 127.0.0.1:{old.port} -> 127.0.0.1:{new.port} "
                         f"(sentinel {ha.sentinels[0]}); reconnecting"]


async def test_passwords_work_and_wrong_ones_are_reported_without_the_secrets(tmp_path, pg_url, caplog):
    """Sentinel and the master each with a password: the right ones give a healthy
    node; a wrong one gives 503 saying why, and no password (right or wrong) is in the
    answer or in any log line."""
    sentinel_secret, master_secret = "sentinel-secret-4711", "master-secret-0815"
    caplog.set_level(logging.DEBUG)
    async with redis_ha(tmp_path) as ha:
        master = await ha.master()
        await redis_command(master.port, "CONFIG", "SET", "requirepass", master_secret)
        await redis_command(ha.sentinel.port, "ACL", "SETUSER", "default", "on", f">{sentinel_secret}")
        right = {**sentinel_settings(ha), "sentinel_password": sentinel_secret, "redis_password": master_secret}
        cases = [("right", right, 200), ("wrong-sentinel", {**right, "sentinel_password": "wrong-pass-1"}, 503),
                 ("wrong-master", {**right, "redis_password": "wrong-pass-2"}, 503)]
        for name, settings, status in cases:
            async with trio.open_nursery() as nursery:
                handle = await nursery.start(serve, node_config(tmp_path, settings, pg_url, name))
                body = await wait_health(handle.port, status)
                if status == 503:
                    with trio.fail_after(10):  # the reason names the refusal once the node has asked
                        while "invalid username-password pair" not in body.get("reason", ""):
                            await trio.sleep(0.05)
                            body = (await health(handle.port))[1]
                else:
                    assert body["redis"]["master"] == f"127.0.0.1:{master.port}"
                for secret in (sentinel_secret, master_secret, "wrong-pass-1", "wrong-pass-2"):
                    assert secret not in json.dumps(body)
                nursery.cancel_scope.cancel()
        for secret in (sentinel_secret, master_secret, "wrong-pass-1", "wrong-pass-2"):
            assert secret not in caplog.text


async def test_check_config_and_doctor_report_the_master_and_the_sentinels(tmp_path, pg_url):
    async with redis_ha(tmp_path) as ha:
        master = await ha.master()
        settings = sentinel_settings(ha)
        env = {**os.environ, **redis_environment(settings), "BROKER_STORE_URL": pg_url}

        def check_config() -> subprocess.CompletedProcess:
            return broker_cmd("check-config", "--config", str(ROOT / "config.toml"), env=env)

        ok = await trio.to_thread.run_sync(check_config)
        assert ok.returncode == 0, ok.stderr
        assert f"master 'broker-master' at 127.0.0.1:{master.port} (appendonly=yes" in ok.stdout
        assert f"sentinel {ha.sentinels[0]}: master 'broker-master' at 127.0.0.1:{master.port}" in ok.stdout

        async with nodes(tmp_path, settings, pg_url, 1) as (node,):
            report = await diagnose(f"ws://127.0.0.1:{node.port}/ws", token="demo-token")
            step = next(step for step in report.steps if step.name == "cluster")
            assert step.ok and f"master 127.0.0.1:{master.port} of 'broker-master' via Sentinel: 1 of 1 sentinels " \
                               f"answered ({ha.sentinels[0]})" in step.detail

        ha.sentinel.kill()
        down = await trio.to_thread.run_sync(check_config)
        assert down.returncode == 1 and "config OK" not in down.stdout
        assert f"sentinel {ha.sentinels[0]}: UNREACHABLE" in down.stderr and "BROKER_CLUSTER_REDIS_SENTINELS" in down.stderr


async def test_a_switch_moves_the_nodes_while_the_old_master_still_answers(tmp_path, pg_url):
    """SENTINEL FAILOVER: the old master lives on (then demoted to a replica, READONLY),
    so no connection fails: the nodes move on Sentinel's +switch-master, the publish
    writer reopens on the new master, and events published on either node reach both
    nodes' subscribers, in one epoch."""
    async with redis_ha(tmp_path) as ha, nodes(tmp_path, sentinel_settings(ha), pg_url, 2) as cluster:
        old = await ha.master()
        subscribers = [Subscriber(node.url("/ws?token=demo-token"), "job-f") for node in cluster]
        async with trio.open_nursery() as nursery:
            for subscriber in subscribers:
                nursery.start_soon(subscriber.run)
            with trio.fail_after(10):
                for subscriber in subscribers:
                    await subscriber.joined.wait()
            before = [await publish_until_stored(node, "job-f", f"before-{i}") for i, node in enumerate(cluster)]
            await ha.wait_replicas_caught_up(old)
            assert await redis_command(ha.sentinel.port, "SENTINEL", "FAILOVER", ha.master_name) == b"+OK\r\n"
            new = await ha.wait_for_new_master(old)
            with trio.fail_after(10):
                while any(node.broker.backplane.master_address != f"127.0.0.1:{new.port}" for node in cluster):
                    await trio.sleep(0.02)
            after = [await publish_until_stored(node, "job-f", f"after-{i}") for i, node in enumerate(cluster)]
            assert after[0] > max(before) and after[1] > after[0]  # one epoch: the new master has the history
            for subscriber in subscribers:
                await subscriber.wait_for(4)
                assert [e["data"]["status"] for e in subscriber.events] == ["before-0", "before-1", "after-0", "after-1"]
            # Sentinel demotes the old master (it answered all along): publishing goes on
            with trio.fail_after(30):
                while await redis_info_field(old.port, "replication", "role") != "slave":
                    await trio.sleep(0.05)
            later = [await publish_until_stored(node, "job-f", f"later-{i}") for i, node in enumerate(cluster)]
            assert later[0] > after[1]
            nursery.cancel_scope.cancel()

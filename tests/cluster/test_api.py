"""Server API on two real nodes (one redis-server, one PostgreSQL store): a user's
connections across nodes, disconnect and ban on every node (and on a node that
starts after the ban), every live node's stats, a job's epoch, system messages to
another node's users."""

from __future__ import annotations

import json

import pytest
import trio
import trio_websocket

from broker import serve
from tests.support.clients import user
from tests.support.cluster import node_config, nodes, wait_feed_up
from tests.support.helpers import api_request, expect_close, recv_until
from tests.support.services import redis_server

OPEN_LOGINS = {"chat": {"single_login": False}}  # a user may be connected to both nodes at once


async def wait_for(condition, timeout: float = 10) -> None:
    """Until ``condition()`` holds (state another node's message changes), under a deadline."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def wait_control(*handles) -> None:
    await wait_for(lambda: all(h.broker.control.following for h in handles))


async def test_a_user_connected_to_two_nodes_is_seen_on_both(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2, **OPEN_LOGINS) as (a, b):
        assert (await api_request(b.port, "GET", "/api/users/alice"))[1]["online"] is False
        async with user(a, "alice"), user(b, "alice"):
            for node in (a, b):
                status, body = await api_request(node.port, "GET", "/api/users/alice")
                assert status == 200 and body == {"userId": "alice", "online": True, "connections": 2,
                                                  "nodes": ["n0", "n1"], "banned": False}


async def test_disconnect_and_ban_reach_every_node_and_a_node_started_later(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2, **OPEN_LOGINS) as (a, b):
        await wait_control(a, b)
        async with user(a, "alice") as on_a, user(b, "alice") as on_b, user(b, "bob") as bob:
            status, body = await api_request(a.port, "POST", "/api/users/alice/disconnect", {"banSeconds": 300})
            assert status == 200 and body["connections"] == 2 and body["nodes"] == ["n0", "n1"]
            assert await expect_close(on_a) == 4009 and await expect_close(on_b) == 4009
            await bob.send_message(json.dumps({"type": "ping"}))  # another user on that node stays
            await recv_until(bob, lambda m: m.get("type") == "pong")
        for node in (a, b):  # b applied the ban in the step that closed alice there
            with pytest.raises(trio_websocket.ConnectionRejected) as refused:
                async with user(node, "alice"):
                    pass
            assert refused.value.status_code == 403
        async with trio.open_nursery() as nursery:  # a node that was not running then reads the ban
            late = await nursery.start(serve, node_config(tmp_path, redis.url, pg_url, "n2", **OPEN_LOGINS))
            await wait_feed_up(late)
            await wait_control(late)
            with pytest.raises(trio_websocket.ConnectionRejected) as refused:
                async with user(late, "alice"):
                    pass
            assert refused.value.status_code == 403
            assert await api_request(b.port, "DELETE", "/api/users/alice/ban") == (
                200, {"userId": "alice", "lifted": True})
            await wait_for(lambda: not any(n.broker.control.banned("alice") for n in (a, b, late)))
            for node in (a, late):
                async with user(node, "alice"):
                    pass
            nursery.cancel_scope.cancel()


async def test_stats_list_every_live_node(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        async with user(b, "carol"):
            async def both_listed():
                status, stats = await api_request(a.port, "GET", "/api/stats")
                assert status == 200 and stats["cluster"] is True and stats["node"]["node"] == "n0"
                return stats
            with trio.fail_after(15):
                while len((stats := await both_listed())["nodes"]) < 2 or stats["nodes"][1]["connections"] < 1:
                    await trio.sleep(0.1)  # each node writes its stats every 2 s
        assert [n["node"] for n in stats["nodes"]] == ["n0", "n1"]
        assert stats["nodes"][1]["users"] == 1


async def test_a_job_read_on_another_node_has_its_epoch_and_history(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        for index in range(3):
            await api_request(a.port, "POST", "/api/publish", {"jobId": "job-c", "type": "job_status",
                                                               "data": {"status": f"S{index}"}})
        status, job = await api_request(b.port, "GET", "/api/jobs/job-c")
        assert status == 200 and job["seq"] == 3 and job["status"] == "S2" and job["epoch"]
        status, page = await api_request(b.port, "GET", "/api/jobs/job-c/events?after=1&limit=1")
        assert [e["seq"] for e in page["events"]] == [2] and page["hasMore"] is True
        assert page["epoch"] == job["epoch"] and page["events"][0]["epoch"] == job["epoch"]
        status, gap = await api_request(b.port, "GET", "/api/jobs/job-c/events?after=1&epoch=0000")
        assert status == 410 and gap["code"] == "HISTORY_GAP" and gap["epoch"] == job["epoch"]


async def test_a_system_message_sent_on_one_node_reaches_a_user_on_the_other(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        async with user(b, "dave") as dave:
            status, sent = await api_request(a.port, "POST", "/api/chat/messages", {
                "sendId": "system", "chatType": 2, "recvId": "dave", "content": "from node a"})
            assert status == 200
            received = await recv_until(dave, lambda m: "chatType" in m)
            assert received["msgId"] == sent["msgId"] and received["sendId"] == "system"

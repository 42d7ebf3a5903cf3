"""Presence across nodes, one real redis-server: lists and the join/leave stream see
users on every node; a node killed with -9 drops out within ``node_ttl``."""

from __future__ import annotations

from broker.protocols.chat import private_conversation_id
from tests.support.clients import ask, jobs_user, join, jwt_ws
from tests.support.cluster import nodes, start_node, wait_healthy
from tests.support.helpers import recv_until
from tests.support.services import redis_server

TTL = 3.0


async def test_watchers_and_lists_see_users_on_every_node(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        async with jobs_user(a, "alice") as alice:
            await join(alice, "job-x", presence=True)
            assert (await recv_presence(alice))["users"] == ["alice"]
            async with jobs_user(b, "bob") as bob:
                await join(bob, "job-x")
                assert await recv_change(alice) == {"type": "presence_join", "jobId": "job-x", "userId": "bob"}
                assert await ask(bob, jobId="job-x") == {"type": "presence", "jobId": "job-x", "count": 2,
                                                         "users": ["alice", "bob"]}
                # a private conversation: who of its two members is online, wherever
                conversation = private_conversation_id("alice", "bob")
                assert (await ask(alice, conversationId=conversation))["users"] == ["alice", "bob"]
            assert await recv_change(alice) == {"type": "presence_leave", "jobId": "job-x", "userId": "bob"}
            assert (await ask(alice, conversationId=conversation))["users"] == ["alice"]


async def test_a_killed_node_drops_out_of_every_list_within_node_ttl(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 1, cluster={"node_ttl": TTL}) as (a,):
        process, port = start_node(tmp_path, redis.url, pg_url, "victim", {"BROKER_CLUSTER_NODE_TTL": str(TTL)})
        try:
            await wait_healthy(port, process)
            async with jobs_user(a, "alice") as alice:
                await join(alice, "job-k", presence=True)
                await recv_presence(alice)
                async with jwt_ws(port, "bob") as bob:
                    await join(bob, "job-k")
                    assert (await recv_change(alice))["type"] == "presence_join"
                    process.kill()  # -9: bob's node says goodbye to nobody
                    # gone within node_ttl (its liveness key expires at 0.6, the others look
                    # every 0.2 of it); the margin is for a loaded test machine
                    assert await recv_change(alice, timeout=TTL + 2) == {
                        "type": "presence_leave", "jobId": "job-k", "userId": "bob"}
                assert (await ask(alice, jobId="job-k"))["users"] == ["alice"]
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


async def recv_presence(ws) -> dict:
    return await recv_until(ws, lambda m: m["type"] == "presence")


async def recv_change(ws, timeout: float = 5) -> dict:
    return await recv_until(ws, lambda m: m["type"].startswith("presence_"), timeout=timeout)

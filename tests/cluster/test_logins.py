"""Logins across nodes (several brokers in one trio program, one real redis-server):
single login holds cluster-wide, per-user connection limits count every node."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from broker.auth.tokens import issue_token
from tests.support.cluster import nodes
from tests.support.helpers import JWT_SECRET, expect_close, recv_json, recv_until
from tests.support.services import redis_command, redis_server


def jwt_url(node, user: str) -> str:
    return node.url(f"/ws?token={issue_token(JWT_SECRET, user, 60)}")


async def test_newer_login_on_node_b_replaces_the_connection_on_node_a(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        async with trio_websocket.open_websocket_url(jwt_url(a, "alice")) as older:
            assert (await recv_json(older))["type"] == "connection_established"
            async with trio_websocket.open_websocket_url(jwt_url(b, "alice")) as newer:
                assert (await recv_json(newer))["type"] == "connection_established"
                replaced = await recv_until(older, lambda m: m["type"] == "error")
                assert replaced["code"] == "REPLACED"
                assert await expect_close(older) == 4001
                await newer.send_message('{"type":"ping"}')
                await recv_until(newer, lambda m: m["type"] == "pong")  # the newer one is untouched


async def test_two_logins_at_the_same_instant_on_two_nodes_exactly_one_survives(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        for round_ in range(3):
            user = f"bob-{round_}"
            outcomes: dict[str, str] = {}

            async def login(node, name: str, user: str = user, outcomes: dict[str, str] = outcomes) -> None:
                async with trio_websocket.open_websocket_url(jwt_url(node, user)) as ws:
                    assert (await recv_json(ws))["type"] == "connection_established"
                    with trio.move_on_after(1.5):  # the loser is told well within this
                        try:
                            message = await recv_until(ws, lambda m: m["type"] == "error", timeout=10)
                            outcomes[name] = message["code"]
                            await expect_close(ws)
                            return
                        except trio_websocket.ConnectionClosed:
                            outcomes[name] = "closed"
                            return
                    outcomes[name] = "alive"

            async with trio.open_nursery() as nursery:
                nursery.start_soon(login, a, "a")
                nursery.start_soon(login, b, "b")
            assert sorted(outcomes.values()) == ["REPLACED", "alive"], outcomes


LIMITED = {
    # a user without single login: [limits] max_connections_per_user
    "user": ({"limits": {"max_connections_per_user": 2}, "chat": {"single_login": False}},
             lambda node: jwt_url(node, "dana"), "too many connections for this user"),
    # a static token (one shared identity): its own max_connections
    "token": ({"auth": {"env_token_max_connections": 2}},
              lambda node: node.url("/ws?token=demo-token"), "too many connections on this token"),
}


@pytest.mark.parametrize("kind", sorted(LIMITED))
async def test_connection_limits_count_every_node(tmp_path, pg_url, kind):
    sections, url, message = LIMITED[kind]
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 3, **sections) as cluster:
        async with trio_websocket.open_websocket_url(url(cluster[0])) as first, \
                trio_websocket.open_websocket_url(url(cluster[1])) as second:
            assert (await recv_json(first))["type"] == "connection_established"
            assert (await recv_json(second))["type"] == "connection_established"
            async with trio_websocket.open_websocket_url(url(cluster[2])) as third:
                refused = await recv_json(third)
                assert refused["code"] == "RATE_LIMITED" and refused["message"] == message
                assert await expect_close(third) == 1008
        # both closed: their entries are released, the login may connect again anywhere
        with trio.fail_after(10):
            while True:
                async with trio_websocket.open_websocket_url(url(cluster[2])) as again:
                    if (await recv_json(again))["type"] == "connection_established":
                        break
                await trio.sleep(0.05)


async def test_a_replacement_announced_while_a_node_was_not_listening_is_applied_when_it_resubscribes(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 1) as (a,):
        async with trio_websocket.open_websocket_url(jwt_url(a, "carol")) as ws:
            established = await recv_json(ws)
            # what a login on another node does while this node's pub/sub is down: it takes
            # the user's entry over; its evict message is never seen here
            assert await redis_command(redis.port, "HDEL", "broker:login:user:carol", established["clientId"]) == b":1\r\n"
            assert await redis_command(redis.port, "HSET", "broker:login:user:carol", "client-elsewhere", "n9/0") == b":1\r\n"
            # two: the backplane's feed and the control feed (broker/cluster/redis_control.py)
            assert await redis_command(redis.port, "CLIENT", "KILL", "TYPE", "pubsub") == b":2\r\n"
            replaced = await recv_until(ws, lambda m: m["type"] == "error")
            assert replaced["code"] == "REPLACED"
            assert await expect_close(ws) == 4001


async def test_a_dead_nodes_logins_leave_redis_without_webhooks_too(tmp_path, pg_url):
    """A node killed with -9 leaves its login entries, its instance-logins set and its
    place in the instances set; the surviving nodes sweep them away within node_ttl
    whether or not an endpoint takes user events (before, only with user webhooks:
    Redis kept one set per killed node for good)."""
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 1,
                                                      cluster={"node_ttl": 1.0}) as (node,):
        dead = "n-dead/0badc0de"  # what a node killed with -9 leaves: no liveness key
        await redis_command(redis.port, "SADD", "broker:instances", dead)
        await redis_command(redis.port, "SADD", f"broker:instance-logins:{dead}", "user:zed")
        await redis_command(redis.port, "HSET", "broker:login:user:zed", "client-gone", dead)
        async with trio_websocket.open_websocket_url(jwt_url(node, "amy")) as ws:
            assert (await recv_json(ws))["type"] == "connection_established"
            with trio.fail_after(10):
                while await redis_command(redis.port, "EXISTS", f"broker:instance-logins:{dead}") != b":0\r\n" \
                        or await redis_command(redis.port, "EXISTS", "broker:login:user:zed") != b":0\r\n" \
                        or await redis_command(redis.port, "SISMEMBER", "broker:instances", dead) != b":0\r\n":
                    await trio.sleep(0.05)  # polling Redis for the sweep, under the deadline above
            # the live node's own entries stay
            assert await redis_command(redis.port, "HLEN", "broker:login:user:amy") == b":1\r\n"

"""Chat across nodes: two brokers sharing one redis-server and one PostgreSQL store. A message
committed on node A reaches its recipient connected to node B; a group changed through
node B's API applies to the conversation running on node A."""

from __future__ import annotations

import trio

from tests.support.clients import api, chat, user
from tests.support.cluster import nodes
from tests.support.helpers import recv_until
from tests.support.services import redis_server


def is_chat(message: dict) -> bool:
    return "chatType" in message and "msgId" in message


async def test_a_message_committed_on_one_node_reaches_the_recipient_on_another(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        async with user(a, "alice") as alice, user(b, "bob") as bob:
            await chat(alice, recvId="bob", chatType=2, content="across", contentType=1)
            ack = await recv_until(alice, lambda m: m.get("type") == "chat_ack")
            received = await recv_until(bob, is_chat)
            assert received["content"] == "across" and received["msgId"] == ack["msgId"]
            assert received["sendId"] == "alice"


async def test_a_group_changed_through_another_node_applies_to_the_running_conversation(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2) as (a, b):
        assert (await api(a, "POST", "/api/groups", {"groupId": "crew", "members": ["alice", "bob"]}))[0] == 201
        async with user(a, "alice") as alice, user(b, "bob") as bob, user(a, "carol") as carol:
            await chat(alice, conversationId="crew", chatType=1, content="one", contentType=1)
            assert (await recv_until(bob, is_chat))["content"] == "one"  # crew runs on node A
            assert (await api(b, "PUT", "/api/groups/crew/members", {"members": ["carol"]}))[0] == 200
            assert (await api(b, "DELETE", "/api/groups/crew/members/bob"))[0] == 200
            await chat(alice, conversationId="crew", chatType=1, content="two", contentType=1)
            assert (await recv_until(carol, is_chat))["content"] == "two"  # added on B, applied on A
            # removed on B, applied on A too: A's actor sends the group to alice and carol only
            assert a.broker.conversations.rooms.running("crew").members == {"alice", "carol"}


async def test_members_on_different_nodes_see_two_nodes_senders_in_one_order(tmp_path, pg_url):
    """Two senders on two nodes send interleaved bursts to one group: the members on
    either node receive the same sequence, the commit (msgId) order, each message once."""
    bursts, per_burst = 8, 10
    unlimited = {"message_rate": 1e6, "message_burst": 10**6}
    async with redis_server(tmp_path) as redis, nodes(tmp_path, redis.url, pg_url, 2, limits=unlimited) as (a, b):
        members = ["alice", "bob", "carol", "dave"]
        assert (await api(a, "POST", "/api/groups", {"groupId": "duo", "members": members}))[0] == 201
        async with user(a, "alice") as alice, user(b, "bob") as bob, \
                user(a, "carol") as carol, user(b, "dave") as dave:
            acked: list[int] = []

            async def send_bursts(ws, name):
                for burst in range(bursts):
                    for i in range(per_burst):
                        await chat(ws, conversationId="duo", chatType=1, content=f"{name}-{burst}-{i}", contentType=1)
                    for _ in range(per_burst):  # the burst is stored before the next one goes
                        reply = await recv_until(ws, lambda m: m.get("type") in ("chat_ack", "error"))
                        assert reply["type"] == "chat_ack", reply
                        acked.append(reply["msgId"])

            async def receive(ws, into):
                while len(into) < 2 * bursts * per_burst:
                    into.append((await recv_until(ws, is_chat))["msgId"])

            seen_by_carol: list[int] = []
            seen_by_dave: list[int] = []
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive, carol, seen_by_carol)
                    nursery.start_soon(receive, dave, seen_by_dave)
                    nursery.start_soon(send_bursts, alice, "alice")
                    nursery.start_soon(send_bursts, bob, "bob")
            assert seen_by_carol == seen_by_dave == sorted(acked)

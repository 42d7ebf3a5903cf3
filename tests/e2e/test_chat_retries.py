"""A chat send retried with the same clientMsgId is acknowledged again, never stored twice
(the browser client resends its un-acked outbox after every reconnect)."""

from broker.chat.retries import RecentSends
from broker.protocols.chat import private_conversation_id
from broker.store import chat_sql as chat_store
from tests.support.clients import user
from tests.support.helpers import recv_json, recv_until, send_json


def test_recent_sends_keeps_the_newest_entries_only():
    recent = RecentSends(limit=2)
    recent.remember("alice", "a", 1)
    recent.remember("alice", None, 2)  # no clientMsgId: nothing to recognise later
    recent.remember("bob", "a", 3)
    recent.remember("alice", "b", 4)
    assert len(recent) == 2
    assert recent.get("alice", "a") is None  # the oldest went first
    assert recent.get("bob", "a") == 3 and recent.get("alice", "b") == 4
    assert recent.get("alice", None) is None


async def test_retry_after_reconnect_is_acked_with_the_first_msg_id_and_stored_once(broker):
    message = {"conversationId": "", "recvId": "bob", "chatType": 2, "content": "once", "clientMsgId": "c-1"}
    async with user(broker, "bob") as bob:
        async with user(broker, "alice") as alice:
            await send_json(alice, message)
            first = await recv_until(alice, lambda m: m.get("type") == "chat_ack")
        # the ack may have been lost with the connection: the client sends again
        async with user(broker, "alice") as alice:
            await send_json(alice, message)
            again = await recv_until(alice, lambda m: m.get("type") == "chat_ack")
            await send_json(alice, {**message, "clientMsgId": "c-2", "content": "next"})
            other = await recv_until(alice, lambda m: m.get("type") == "chat_ack")
        assert again["msgId"] == first["msgId"] and again["clientMsgId"] == "c-1"
        assert other["msgId"] > first["msgId"]
        delivered = [await recv_json(bob), await recv_json(bob)]
        assert [m["content"] for m in delivered] == ["once", "next"]
    conversation = private_conversation_id("alice", "bob")
    stored, _ = await chat_store.history(broker.broker.store, conversation, None, 10)
    assert [m.count(b'"once"') for m in stored] == [1, 0]


async def test_same_client_msg_id_from_another_sender_is_a_different_message(broker):
    async with user(broker, "alice") as alice, user(broker, "bob") as bob:
        await send_json(alice, {"recvId": "bob", "chatType": 2, "content": "a", "clientMsgId": "same"})
        from_alice = await recv_until(alice, lambda m: m.get("type") == "chat_ack")
        await send_json(bob, {"recvId": "alice", "chatType": 2, "content": "b", "clientMsgId": "same"})
        from_bob = await recv_until(bob, lambda m: m.get("type") == "chat_ack")
        assert from_bob["msgId"] != from_alice["msgId"]


async def test_retry_in_the_same_batch_as_its_first_copy(broker):
    async with user(broker, "alice") as alice, user(broker, "bob") as bob:
        message = {"recvId": "bob", "chatType": 2, "content": "twice", "clientMsgId": "burst"}
        await send_json(alice, message)
        await send_json(alice, message)
        await send_json(alice, {**message, "clientMsgId": "after", "content": "after"})
        acks = [await recv_until(alice, lambda m: m.get("type") == "chat_ack") for _ in range(3)]
        # acks come in any order (a retry in the batch of its first copy is acked after the batch)
        by_id: dict[str, set[int]] = {}
        for ack in acks:
            by_id.setdefault(ack["clientMsgId"], set()).add(ack["msgId"])
        assert len(by_id["burst"]) == 1 and len(by_id["after"]) == 1
        assert min(by_id["burst"]) < min(by_id["after"])
        # bob gets the message once: the next delivery is the one sent after it
        assert [(await recv_json(bob))["content"] for _ in range(2)] == ["twice", "after"]

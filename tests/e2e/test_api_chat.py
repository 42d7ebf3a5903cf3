"""Server API, chat routes, one node end to end: messages sent by the backend as a
user or as "system" (stored, acknowledged, delivered, idempotent with clientMsgId)
and a conversation's history, newest first (docs/PROTOCOL.md section 8.4)."""


import trio_websocket

from broker.auth.tokens import issue_token
from broker.protocols.chat import private_conversation_id
from tests.support.clients import user
from tests.support.helpers import JWT_SECRET, api_request, recv_until


def is_chat(message):
    return "chatType" in message


async def test_a_system_message_to_a_user_is_stored_acknowledged_and_delivered(broker):
    async with user(broker, "alice") as alice:
        status, sent = await api_request(broker.port, "POST", "/api/chat/messages", {
            "sendId": "system", "chatType": 2, "recvId": "alice", "content": "your report is ready"})
        assert status == 200 and sent["conversationId"] == private_conversation_id("system", "alice")
        received = await recv_until(alice, is_chat)
        assert received["sendId"] == "system" and received["content"] == "your report is ready"
        assert received["msgId"] == sent["msgId"] and received["conversationId"] == sent["conversationId"]


async def test_a_system_message_reaches_an_offline_user_when_it_connects(broker):
    status, sent = await api_request(broker.port, "POST", "/api/chat/messages", {
        "sendId": "system", "chatType": 2, "recvId": "bob", "content": "while you were away"})
    assert status == 200
    headers = [(b"Authorization", f"Bearer {issue_token(JWT_SECRET, 'bob', 3600)}".encode())]
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=headers) as bob:
        replayed = await recv_until(bob, is_chat)
        assert replayed["msgId"] == sent["msgId"] and replayed["sendId"] == "system"


async def test_system_may_send_to_any_group_and_users_only_to_theirs(broker):
    await api_request(broker.port, "POST", "/api/groups", {"groupId": "crew", "members": ["alice", "bob"]})
    async with user(broker, "alice") as alice, user(broker, "bob") as bob:
        status, sent = await api_request(broker.port, "POST", "/api/chat/messages", {
            "sendId": "system", "chatType": 1, "conversationId": "crew", "content": "maintenance at 6"})
        assert status == 200 and sent["conversationId"] == "crew"
        for member in (alice, bob):
            assert (await recv_until(member, is_chat))["msgId"] == sent["msgId"]
        status, sent = await api_request(broker.port, "POST", "/api/chat/messages", {
            "sendId": "alice", "chatType": 1, "conversationId": "crew", "content": "ok"})
        assert status == 200
        assert (await recv_until(bob, is_chat))["sendId"] == "alice"
    status, refused = await api_request(broker.port, "POST", "/api/chat/messages", {
        "sendId": "mallory", "chatType": 1, "conversationId": "crew", "content": "hi"})
    assert status == 403 and refused["code"] == "FORBIDDEN"
    status, refused = await api_request(broker.port, "POST", "/api/chat/messages", {
        "sendId": "system", "chatType": 1, "conversationId": "nogroup", "content": "hi"})
    assert status == 403 and refused["code"] == "FORBIDDEN"


async def test_a_retry_with_the_same_client_msg_id_is_stored_once(broker):
    message = {"sendId": "system", "chatType": 2, "recvId": "carol", "content": "once", "clientMsgId": "m-1"}
    first = await api_request(broker.port, "POST", "/api/chat/messages", message)
    again = await api_request(broker.port, "POST", "/api/chat/messages", message)
    assert first == again and first[0] == 200 and first[1]["clientMsgId"] == "m-1"
    conversation = first[1]["conversationId"]
    status, page = await api_request(broker.port, "GET", f"/api/conversations/{conversation}/messages")
    assert status == 200 and [m["content"] for m in page["messages"]] == ["once"]


async def test_history_pages_newest_first(broker):
    ids = []
    for index in range(5):
        status, sent = await api_request(broker.port, "POST", "/api/chat/messages", {
            "sendId": "system", "chatType": 2, "recvId": "dave", "content": f"m{index}"})
        ids.append(sent["msgId"])
    conversation = private_conversation_id("system", "dave")
    status, page = await api_request(broker.port, "GET", f"/api/conversations/{conversation}/messages?limit=2")
    assert status == 200 and page["hasMore"] is True and page["conversationId"] == conversation
    assert [m["msgId"] for m in page["messages"]] == [ids[4], ids[3]]
    status, page = await api_request(broker.port, "GET",
                                     f"/api/conversations/{conversation}/messages?limit=2&before={ids[3]}")
    assert [m["msgId"] for m in page["messages"]] == [ids[2], ids[1]] and page["hasMore"] is True
    status, page = await api_request(broker.port, "GET",
                                     f"/api/conversations/{conversation}/messages?before={ids[1]}")
    assert [m["content"] for m in page["messages"]] == ["m0"] and page["hasMore"] is False


async def test_history_of_a_missing_group_is_404_and_of_a_bad_id_400(broker):
    status, body = await api_request(broker.port, "GET", "/api/conversations/nogroup/messages")
    assert status == 404 and body["code"] == "NOT_FOUND"
    status, body = await api_request(broker.port, "GET", "/api/conversations/p:9:x/messages")
    assert status == 400 and body["code"] == "BAD_REQUEST"
    status, body = await api_request(broker.port, "GET", "/api/conversations/all/messages?limit=0")
    assert status == 400


async def test_bad_messages_are_400_or_413(broker, config):
    for body in ({"chatType": 2, "recvId": "x", "content": "no sender"},
                 {"sendId": "", "chatType": 2, "recvId": "x", "content": "empty sender"},
                 {"sendId": "a", "chatType": 3, "recvId": "x", "content": "bad type"},
                 {"sendId": "a", "chatType": 2, "content": "no recvId"},
                 {"sendId": "a", "chatType": 2, "recvId": "a", "content": "to oneself"},
                 {"sendId": "a", "chatType": 2, "recvId": "x", "content": ""},
                 {"sendId": "a", "chatType": 2, "recvId": "x", "content": "javascript:alert(1)", "contentType": 2},
                 {"sendId": "a", "chatType": 2, "recvId": "x", "content": "extra", "msgId": 5}):
        status, answer = await api_request(broker.port, "POST", "/api/chat/messages", body)
        assert status == 400 and answer["code"] == "BAD_REQUEST", body
    too_long = "x" * (config.chat.max_content_length + 1)
    status, answer = await api_request(broker.port, "POST", "/api/chat/messages", {
        "sendId": "a", "chatType": 2, "recvId": "x", "content": too_long})
    assert status == 413 and answer["code"] == "MESSAGE_TOO_BIG"

"""Chat end to end: real broker, real clients, real SQLite."""

import json
import threading

import pytest
import trio
import trio_websocket

from broker import serve
from broker.protocols.chat import private_conversation_id
from broker.store import chat_sql as chat_store
from broker.tools.httpclient import http_request
from tests.support.clients import api, chat, token, user
from tests.support.helpers import (
    RawClient,
    expect_close,
    make_config,
    on_each_store,
    recv_json,
    send_json,
)


@on_each_store
async def test_private_round_trip_with_spoofed_send_id_ignored(broker):
    async with user(broker, "alice") as alice, user(broker, "bob") as bob:
        await chat(alice, conversationId="", recvId="bob", chatType=2, content="你好", contentType=1, sendId="mallory")
        received = await recv_json(bob)
        ack = await recv_json(alice)
        assert received["sendId"] == "alice" and received["content"] == "你好" and received["recvId"] == "bob"
        assert received["chatType"] == 2 and received["contentType"] == 1 and received["timestamp"].endswith("Z")
        assert ack["type"] == "chat_ack" and ack["msgId"] == received["msgId"]
        assert ack["conversationId"] == received["conversationId"]
        # the same conversation id for the pair, whoever sends
        await chat(bob, conversationId="", recvId="alice", chatType=2, content="hi", contentType=1)
        reply = await recv_json(alice)
        assert reply["conversationId"] == received["conversationId"] and reply["msgId"] > received["msgId"]
        # acknowledged means stored
        payloads, _ = await chat_store.history(broker.broker.store, received["conversationId"], None, 10)
        assert [json.loads(p)["content"] for p in payloads] == ["你好", "hi"]


@on_each_store
async def test_offline_delivery_exactly_once_in_order(broker):
    async with user(broker, "alice") as alice:
        for i in range(5):
            await chat(alice, recvId="bob", chatType=2, content=f"m{i}", contentType=1)
        acks = [await recv_json(alice) for _ in range(5)]
    assert [a["type"] for a in acks] == ["chat_ack"] * 5
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=[
            (b"Authorization", f"Bearer {token('bob')}".encode())]) as bob:
        assert (await recv_json(bob))["type"] == "connection_established"
        replay = [await recv_json(bob) for _ in range(5)]
        assert [m["content"] for m in replay] == [f"m{i}" for i in range(5)]
        assert [m["msgId"] for m in replay] == [a["msgId"] for a in acks]
        # sent only once the client's pong confirmed the replay: the cursors have moved
        assert await recv_json(bob) == {"type": "offline_complete", "count": 5, "truncated": False}
    async with user(broker, "bob") as bob:
        assert bob.offline == {"type": "offline_complete", "count": 0, "truncated": False}, bob.offline


@on_each_store
async def test_a_read_confirms_delivery_even_without_a_pong(broker):
    async with user(broker, "alice") as alice:
        await chat(alice, recvId="bob", chatType=2, content="x", contentType=1)
        ack = await recv_json(alice)
    async with user(broker, "bob") as bob:
        assert bob.offline["count"] == 1
        await chat(bob, type="read", conversationId=ack["conversationId"], msgId=ack["msgId"])
    async with user(broker, "bob") as bob:
        assert bob.offline["count"] == 0


async def test_offline_cap_then_history_paging(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, chat={"offline_cap": 3}))
    async with user(broker, "alice") as alice:
        for i in range(7):
            await chat(alice, recvId="bob", chatType=2, content=f"m{i}", contentType=1)
        acks = [await recv_json(alice) for _ in range(7)]
    conversation = acks[0]["conversationId"]
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=[
            (b"Authorization", f"Bearer {token('bob')}".encode())]) as bob:
        await recv_json(bob)
        newest = [await recv_json(bob) for _ in range(3)]
        assert [m["content"] for m in newest] == ["m4", "m5", "m6"]
        assert await recv_json(bob) == {"type": "offline_complete", "count": 3, "truncated": True}
        await send_json(bob, {"type": "history", "conversationId": conversation,
                              "beforeMsgId": newest[0]["msgId"], "limit": 3})
        page = await recv_json(bob)
        assert page["type"] == "history" and page["hasMore"] is True
        assert [m["content"] for m in page["messages"]] == ["m1", "m2", "m3"]
        await send_json(bob, {"type": "history", "conversationId": conversation,
                              "beforeMsgId": page["messages"][0]["msgId"], "limit": 3})
        last = await recv_json(bob)
        assert [m["content"] for m in last["messages"]] == ["m0"] and last["hasMore"] is False


@on_each_store
async def test_group_members_only_and_broadcast_to_all(broker):
    status, created = await api(broker, "POST", "/api/groups", {"groupId": "group_001", "members": ["alice", "bob", "carol"]})
    assert status == 201 and created["members"] == ["alice", "bob", "carol"]
    async with user(broker, "alice") as alice, user(broker, "bob") as bob, user(broker, "carol") as carol, \
            user(broker, "dave") as dave:
        await chat(carol, conversationId="group_001", chatType=1, content="大家好", contentType=1)
        for ws in (alice, bob):
            message = await recv_json(ws)
            assert message["conversationId"] == "group_001" and message["sendId"] == "carol"
            assert "recvId" not in message
        assert (await recv_json(carol))["type"] == "chat_ack"
        # dave can neither send nor read the group
        await chat(dave, conversationId="group_001", chatType=1, content="let me in", contentType=1)
        refused = await recv_json(dave)
        assert refused["type"] == "error" and refused["code"] == "FORBIDDEN"
        await send_json(dave, {"type": "history", "conversationId": "group_001"})
        assert (await recv_json(dave))["code"] == "FORBIDDEN"
        # "" means "all": every online user but the sender
        await chat(dave, conversationId="", chatType=1, content="hello everyone", contentType=1)
        for ws in (alice, bob, carol):
            message = await recv_json(ws)
            assert message["conversationId"] == "all" and message["content"] == "hello everyone"
        assert (await recv_json(dave))["type"] == "chat_ack"
        # alice and bob got nothing from dave's refused group message
        await send_json(alice, {"type": "ping"})
        assert (await recv_json(alice))["type"] == "pong"


async def test_removed_member_stops_receiving(broker):
    await api(broker, "POST", "/api/groups", {"groupId": "g2", "members": ["alice", "bob"]})
    status, result = await api(broker, "DELETE", "/api/groups/g2/members/bob")
    assert status == 200 and result["members"] == ["alice"]
    async with user(broker, "alice") as alice, user(broker, "bob") as bob:
        await chat(bob, conversationId="g2", chatType=1, content="still here?", contentType=1)
        assert (await recv_json(bob))["code"] == "FORBIDDEN"
        await chat(alice, conversationId="g2", chatType=1, content="only me", contentType=1)
        assert (await recv_json(alice))["type"] == "chat_ack"
        await send_json(bob, {"type": "ping"})
        assert (await recv_json(bob))["type"] == "pong"


async def test_single_login_replaces_older_connection_and_store_delivers_its_pending(broker):
    # bob's first connection never answers pings: nothing it receives is confirmed
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    old_bob = RawClient(stream, answer_pings=False)
    assert (await old_bob.handshake("/ws", [(b"authorization", f"Bearer {token('bob')}".encode())]))[0] == 101
    assert (await old_bob.next_json())["type"] == "connection_established"
    assert (await old_bob.next_json())["type"] == "offline_complete"
    async with user(broker, "alice") as alice:
        for i in range(3):
            await chat(alice, recvId="bob", chatType=2, content=f"p{i}", contentType=1)
        for _ in range(3):
            await recv_json(alice)
        for i in range(3):
            assert (await old_bob.next_json())["content"] == f"p{i}"  # on the old socket, unconfirmed
        async with trio_websocket.open_websocket_url(broker.url(), extra_headers=[
                (b"Authorization", f"Bearer {token('bob')}".encode())]) as new_bob:
            replaced = await old_bob.next_json()
            assert replaced["type"] == "error" and replaced["code"] == "REPLACED"
            assert (await old_bob.expect_close())[0] == 4001
            assert (await recv_json(new_bob))["type"] == "connection_established"
            pending = [await recv_json(new_bob) for _ in range(3)]
            assert [m["content"] for m in pending] == ["p0", "p1", "p2"]
            assert (await recv_json(new_bob))["type"] == "offline_complete"
            # live messages now go to the new connection
            await chat(alice, recvId="bob", chatType=2, content="live", contentType=1)
            assert (await recv_json(new_bob))["content"] == "live"


async def test_read_receipts_reach_the_other_party(broker):
    await api(broker, "POST", "/api/groups", {"groupId": "g3", "members": ["alice", "bob", "carol"]})
    async with user(broker, "alice") as alice, user(broker, "bob") as bob, user(broker, "carol") as carol:
        await chat(alice, recvId="bob", chatType=2, content="read me", contentType=1)
        message = await recv_json(bob)
        await recv_json(alice)  # ack
        await send_json(bob, {"type": "read", "conversationId": message["conversationId"], "msgId": message["msgId"]})
        receipt = await recv_json(alice)
        assert receipt["type"] == "read_receipt" and receipt["userId"] == "bob" and receipt["msgId"] == message["msgId"]
        cursors = await chat_store.cursors(broker.broker.store, "bob")
        assert cursors[message["conversationId"]][1] == message["msgId"]
        # group: every other member gets the receipt
        await chat(alice, conversationId="g3", chatType=1, content="all read this", contentType=1)
        group_message = await recv_json(bob)
        await recv_json(carol)
        await recv_json(alice)
        await send_json(carol, {"type": "read", "conversationId": "g3", "msgId": group_message["msgId"]})
        for ws in (alice, bob):
            receipt = await recv_json(ws)
            assert receipt["type"] == "read_receipt" and receipt["userId"] == "carol"


@pytest.mark.parametrize(
    "message, code",
    [
        ({"recvId": "bob", "chatType": 2, "content": "https://cdn.example.com/cat.png", "contentType": 2}, None),
        ({"recvId": "bob", "chatType": 2, "content": "hello", "contentType": 7}, "BAD_REQUEST"),
        ({"recvId": "bob", "chatType": 2, "content": "javascript:alert(1)", "contentType": 2}, "BAD_REQUEST"),
        ({"recvId": "bob", "chatType": 2, "content": "x" * 5000, "contentType": 1}, "MESSAGE_TOO_BIG"),
        ({"recvId": "alice", "chatType": 2, "content": "me", "contentType": 1}, "BAD_REQUEST"),
        ({"recvId": "bob", "conversationId": "p:1:x:y", "chatType": 2, "content": "x", "contentType": 1}, "BAD_REQUEST"),
    ],
)
async def test_content_validation(broker, message, code):
    async with user(broker, "alice") as alice:
        await send_json(alice, message)
        answer = await recv_json(alice)
        if code is None:
            assert answer["type"] == "chat_ack"
        else:
            assert answer["type"] == "error" and answer["code"] == code


async def test_rate_limit_errors_then_4008(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(
        tmp_path, limits={"message_rate": 5, "message_burst": 5, "rate_limit_strikes": 3}))
    async with user(broker, "alice") as alice, user(broker, "bob") as bob:
        for _ in range(8):
            await send_json(alice, {"type": "ping"})
        answers = [await recv_json(alice) for _ in range(7)]
        assert [a["type"] for a in answers[:5]] == ["pong"] * 5
        assert [a.get("code") for a in answers[5:]] == ["RATE_LIMITED"] * 2
        assert await expect_close(alice) == 4008
        await send_json(bob, {"type": "ping"})
        assert (await recv_json(bob))["type"] == "pong"


async def test_origin_allow_list(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, limits={"allowed_origins": ("https://app.example.com",)}))
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with user(broker, "alice", Origin="https://evil.example"):
            pass
    assert info.value.status_code == 403 and b"origin not allowed" in info.value.body
    async with user(broker, "alice", Origin="https://app.example.com"):
        pass
    async with user(broker, "bob", Origin=f"http://127.0.0.1:{broker.port}"):  # same origin
        pass


async def test_connection_limits_refused_before_upgrade(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(
        tmp_path, chat={"single_login": False},
        limits={"max_connections_per_ip": 3, "max_connections_per_user": 1, "max_connections": 10}))
    async with user(broker, "u0"):
        with pytest.raises(trio_websocket.ConnectionRejected) as per_user:
            async with user(broker, "u0"):
                pass
        assert per_user.value.status_code == 429 and b"this user" in per_user.value.body
        async with user(broker, "u1"), user(broker, "u2"):
            with pytest.raises(trio_websocket.ConnectionRejected) as per_ip:
                async with user(broker, "u3"):
                    pass
            assert per_ip.value.status_code == 429 and b"address" in per_ip.value.body


async def test_group_api(broker):
    assert (await api(broker, "POST", "/api/groups", {"groupId": "team", "name": "Team", "members": ["a", "b"]}))[0] == 201
    status, body = await api(broker, "POST", "/api/groups", {"groupId": "team", "members": []})
    assert status == 409 and body["type"] == "error"
    status, body = await api(broker, "PUT", "/api/groups/team/members", {"members": ["c"]})
    assert status == 200 and body["members"] == ["a", "b", "c"]
    assert await api(broker, "GET", "/api/groups/team") == (200, {"groupId": "team", "name": "Team", "members": ["a", "b", "c"]})
    assert await api(broker, "GET", "/api/users/c/groups") == (200, {"userId": "c", "groups": ["team"]})
    assert (await api(broker, "DELETE", "/api/groups/team"))[0] == 200
    status, body = await api(broker, "GET", "/api/groups/team")
    assert status == 404 and body["code"] == "NOT_FOUND"
    assert (await api(broker, "PUT", "/api/groups/nope/members", {"members": ["x"]}))[0] == 404
    assert (await api(broker, "POST", "/api/groups", {"groupId": "all", "members": []}))[0] == 400
    unauthorized = await http_request("GET", f"http://127.0.0.1:{broker.port}/api/groups/team")
    assert unauthorized.status == 401


async def test_group_embedding_api(broker):
    chat = broker.groups
    assert await chat.create_group("emb", ["x", "y"]) == ["x", "y"]
    assert await chat.add_members("emb", ["z"]) == ["x", "y", "z"]
    assert (await chat.group("emb"))["members"] == ["x", "y", "z"]
    assert await chat.groups_of("z") == ["emb"]


@on_each_store
async def test_new_group_member_gets_no_old_messages_as_offline_mail(broker):
    await api(broker, "POST", "/api/groups", {"groupId": "g4", "members": ["alice"]})
    async with user(broker, "alice") as alice:
        await chat(alice, conversationId="g4", chatType=1, content="before bob", contentType=1)
        await recv_json(alice)
        await api(broker, "PUT", "/api/groups/g4/members", {"members": ["bob"]})
        await chat(alice, conversationId="g4", chatType=1, content="after bob", contentType=1)
        await recv_json(alice)
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=[
            (b"Authorization", f"Bearer {token('bob')}".encode())]) as bob:
        assert (await recv_json(bob))["type"] == "connection_established"
        assert (await recv_json(bob))["content"] == "after bob"
        assert await recv_json(bob) == {"type": "offline_complete", "count": 1, "truncated": False}
        await send_json(bob, {"type": "history", "conversationId": "g4"})
        page = await recv_json(bob)  # the earlier message is history, readable by a member
        assert [m["content"] for m in page["messages"]] == ["before bob", "after bob"]


async def test_users_connecting_at_once_each_get_their_own_offline_messages(broker):
    """Their replay queries are answered together (one store read batch); each user
    still gets exactly its own messages, in order, and a user with none gets none."""
    users = [f"u{i}" for i in range(16)]
    await api(broker, "POST", "/api/groups", {"groupId": "storm", "members": ["alice", *users[:8]]})
    expected = {name: [] for name in users}
    async with user(broker, "alice") as alice:
        for i, name in enumerate(users):
            for j in range(i % 3):  # every third user has nothing waiting
                await chat(alice, recvId=name, chatType=2, content=f"{name}-{j}", contentType=1)
                await recv_json(alice)
                expected[name].append(f"{name}-{j}")
        await chat(alice, conversationId="storm", chatType=1, content="to the group", contentType=1)
        await recv_json(alice)
    for name in users[:8]:
        expected[name].append("to the group")
    received = {}

    async def connect(name):
        async with trio_websocket.open_websocket_url(broker.url(), extra_headers=[
                (b"Authorization", f"Bearer {token(name)}".encode())]) as ws:
            assert (await recv_json(ws))["type"] == "connection_established"
            frames = []
            while (frame := await recv_json(ws)).get("type") != "offline_complete":
                frames.append(frame)
            received[name] = ([f["content"] for f in frames], frame)

    async with trio.open_nursery() as nursery:
        for name in users:
            nursery.start_soon(connect, name)
    assert received == {name: (contents, {"type": "offline_complete", "count": len(contents), "truncated": False})
                        for name, contents in expected.items()}
    async with user(broker, users[1]) as again:  # confirmed: not delivered twice
        assert again.offline["count"] == 0


async def test_per_address_limit_uses_forwarded_for_behind_a_trusted_proxy(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(
        tmp_path, server={"trusted_proxies": ("127.0.0.1",)}, limits={"max_connections_per_ip": 1}))
    url = broker.url() + "?token=demo-token"
    first = [(b"X-Forwarded-For", b"203.0.113.7")]
    async with trio_websocket.open_websocket_url(url, extra_headers=first) as ws:
        await recv_json(ws)
        async with trio_websocket.open_websocket_url(url, extra_headers=[(b"X-Forwarded-For", b"198.51.100.2")]) as other:
            await recv_json(other)  # another client behind the same proxy is admitted
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(url, extra_headers=first):
                pass
        assert info.value.status_code == 429


async def answers(ws, frames, chunk=100):
    """Send ``frames`` and collect one answer each (in chunks, so neither side's buffers fill)."""
    collected = []
    for start in range(0, len(frames), chunk):
        for frame in frames[start:start + chunk]:
            await send_json(ws, frame)
        collected += [await recv_json(ws) for _ in frames[start:start + chunk]]
    return collected


@pytest.mark.slow
async def test_thousands_of_bogus_conversation_ids_start_no_actors(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, limits={"message_rate": 1e6, "message_burst": 10**6}))
    rooms = broker.broker.conversations.rooms
    async with user(broker, "alice") as alice:
        frames = []
        for i in range(250):  # well-formed ids of conversations that are not there (or not alice's)
            frames.append({"type": "read", "conversationId": f"bogus-{i}", "msgId": 1})
            frames.append({"type": "history", "conversationId": f"bogus-{i}"})
            frames.append({"type": "read", "conversationId": private_conversation_id("alice", f"z{i}"), "msgId": 1})
            frames.append({"conversationId": f"bogus-{i}", "chatType": 1, "content": "let me in", "clientMsgId": str(i)})
        got = await answers(alice, frames)
        assert all(a["type"] == "error" for a in got)
        codes = [a["code"] for a in got]
        assert codes == ["FORBIDDEN", "FORBIDDEN", "BAD_REQUEST", "FORBIDDEN"] * 250
        assert got[3]["clientMsgId"] == "0" and got[3]["conversationId"] == "bogus-0"
        assert len(rooms) == 0
        # ids that are not conversation ids at all are refused before anything is looked up
        malformed = [{"type": t, "conversationId": f"bogus-{i}\n", "msgId": 1} for i in range(1000) for t in ("read", "history")]
        assert {a["code"] for a in await answers(alice, malformed)} == {"BAD_REQUEST"}
        assert len(rooms) == 0


async def test_read_beyond_the_last_message_is_refused_without_receipt_or_cursor(broker):
    async with user(broker, "alice") as alice, user(broker, "bob") as bob:
        await chat(alice, recvId="bob", chatType=2, content="one", contentType=1)
        message = await recv_json(bob)
        await recv_json(alice)  # ack
        conversation = message["conversationId"]
        before = (await chat_store.cursors(broker.broker.store, "bob"))[conversation]
        for msg_id in (message["msgId"] + 1, 2**53):
            await send_json(bob, {"type": "read", "conversationId": conversation, "msgId": msg_id})
            refused = await recv_json(bob)
            assert refused["type"] == "error" and refused["code"] == "BAD_REQUEST" and "beyond" in refused["message"]
        assert (await chat_store.cursors(broker.broker.store, "bob"))[conversation] == before
        await send_json(alice, {"type": "ping"})
        assert (await recv_json(alice))["type"] == "pong"  # no read_receipt came first
        # the last message itself may be read
        await send_json(bob, {"type": "read", "conversationId": conversation, "msgId": message["msgId"]})
        assert (await recv_json(alice))["type"] == "read_receipt"


async def test_conversation_actors_are_capped_with_a_clear_error(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, chat={"max_rooms": 2}))
    async with user(broker, "alice") as alice:
        for peer in ("bob", "carol"):
            await chat(alice, recvId=peer, chatType=2, content="hi", contentType=1)
            assert (await recv_json(alice))["type"] == "chat_ack"
        await chat(alice, recvId="dave", chatType=2, content="hi", contentType=1)
        refused = await recv_json(alice)
        assert refused["type"] == "error" and refused["code"] == "UNAVAILABLE"
        assert "too many active conversation rooms" in refused["message"]
        # conversations with a running actor go on
        await chat(alice, recvId="bob", chatType=2, content="again", contentType=1)
        assert (await recv_json(alice))["type"] == "chat_ack"


async def test_a_large_offline_backlog_gets_through_a_client_that_reads(tmp_path, nursery):
    """Five users send 300 messages of 4096 characters to an offline user: once every
    connection ended in 4003 after ~280 of them, never offline_complete. The replay
    now waits for the client's confirmation of each window."""
    broker = await nursery.start(serve, make_config(
        tmp_path, limits={"message_rate": 1e6, "message_burst": 10**6}))
    senders, per_sender, content = 5, 300, "x" * 4096
    for index in range(senders):
        async with user(broker, f"s{index}") as sender:
            for start in range(0, per_sender, 100):
                for i in range(start, start + 100):
                    await chat(sender, recvId="bob", chatType=2, content=content, contentType=1, clientMsgId=str(i))
                for _ in range(100):
                    assert (await recv_json(sender))["type"] == "chat_ack"
    cap = broker.config.chat.offline_cap
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=[
            (b"Authorization", f"Bearer {token('bob')}".encode())]) as bob:
        assert (await recv_json(bob))["type"] == "connection_established"
        replay = [await recv_json(bob, timeout=20) for _ in range(cap)]
        assert await recv_json(bob) == {"type": "offline_complete", "count": cap, "truncated": True}
        msg_ids = [m["msgId"] for m in replay]
        assert msg_ids == sorted(msg_ids) and len(set(msg_ids)) == cap
        assert msg_ids[-1] == broker.broker.conversations.last_msg_id  # the newest ones
        await send_json(bob, {"type": "ping"})
        assert (await recv_json(bob))["type"] == "pong"  # still connected
    assert broker.metrics.evictions.labels("slow_consumer")._value.get() == 0
    # every window was confirmed: the delivery cursors stand at the newest message replayed
    newest = {}
    for message in replay:
        newest[message["conversationId"]] = message["msgId"]
    cursors = await chat_store.cursors(broker.broker.store, "bob")
    assert {conversation: cursors[conversation][0] for conversation in newest} == newest


async def test_a_client_that_stops_reading_during_the_offline_replay_is_a_slow_consumer(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(
        tmp_path, limits={"message_rate": 1e6, "message_burst": 10**6}, websocket={"heartbeat_timeout": 0.5}))
    async with user(broker, "alice") as alice:
        for _ in range(200):
            await chat(alice, recvId="bob", chatType=2, content="y" * 4096, contentType=1)
        for _ in range(200):
            assert (await recv_json(alice))["type"] == "chat_ack"
    stream = await trio.open_tcp_stream("127.0.0.1", broker.port)
    # a client that stopped reading: to the broker it is one that answers no ping (what it
    # sent fits in the socket buffers); this one records what arrives to count it
    bob = RawClient(stream, answer_pings=False)
    with trio.fail_after(10):
        assert (await bob.handshake("/ws", [(b"authorization", f"Bearer {token('bob')}".encode())]))[0] == 101
        received, partial = [], ""
        while True:
            event = await bob.next_event()
            if type(event).__name__ == "CloseConnection":
                break
            partial += event.data  # wsproto hands over a large message in pieces
            if event.message_finished:
                received.append(json.loads(partial))
                partial = ""
    assert (event.code, event.reason) == (4003, "slow consumer: offline messages not confirmed")
    assert bob.pings == 1  # one window, one ping, no second window
    assert received[0]["type"] == "connection_established"
    window = [m for m in received[1:] if "msgId" in m]
    assert 0 < len(window) <= broker.config.chat.replay_window and len(window) == len(received) - 1
    assert sum(len(json.dumps(m, ensure_ascii=False)) for m in window) <= broker.config.websocket.outbox_max_bytes // 4
    # nothing was confirmed: it is all delivered again on the next connection
    async with user(broker, "bob") as again:
        assert again.offline["count"] == 200


async def test_history_pages_are_cut_by_bytes_as_well_as_count(tmp_path, nursery):
    """history with limit 200 once produced a 4.9 MB frame: every frame now stays
    within max_outgoing_frame_bytes, and paging still reaches every message once."""
    broker = await nursery.start(serve, make_config(
        tmp_path, limits={"message_rate": 1e6, "message_burst": 10**6}, websocket={"max_outgoing_frame_bytes": 65536}))
    frame_limit = broker.config.websocket.outgoing_frame_limit
    async with user(broker, "alice") as alice:
        for i in range(60):
            await chat(alice, recvId="bob", chatType=2, content=f"{i:03d}" + "é" * 4000, contentType=1)
        acks = [await recv_json(alice) for _ in range(60)]  # ~8 KB each: ~480 KB in all
    conversation = acks[0]["conversationId"]
    async with user(broker, "bob") as bob:
        pages, before = [], None
        while True:
            request = {"type": "history", "conversationId": conversation, "limit": 200}
            if before is not None:
                request["beforeMsgId"] = before
            await send_json(bob, request)
            with trio.fail_after(5):
                raw = await bob.get_message()
            assert len(raw.encode("utf-8")) <= frame_limit
            page = json.loads(raw)
            pages.append(page)
            if not page["hasMore"]:
                break
            before = page["messages"][0]["msgId"]
    assert len(pages) > 1 and all(page["messages"] for page in pages)
    contents = [m["content"][:3] for page in reversed(pages) for m in page["messages"]]
    assert contents == [f"{i:03d}" for i in range(60)]


async def test_a_chat_message_that_would_not_fit_a_frame_is_refused(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, websocket={"max_outgoing_frame_bytes": 16384}))
    async with user(broker, "alice") as alice:
        # 4096 characters, each sent as a 6-byte JSON escape: ~24 KB as delivered
        await chat(alice, recvId="bob", chatType=2, content="\u0001" * 4096, contentType=1, clientMsgId="big")
        refused = await recv_json(alice)
        assert refused["type"] == "error" and refused["code"] == "MESSAGE_TOO_BIG" and refused["clientMsgId"] == "big"
        await chat(alice, recvId="bob", chatType=2, content="x" * 4096, contentType=1)
        assert (await recv_json(alice))["type"] == "chat_ack"


async def test_a_login_with_nothing_waiting_costs_no_store_read(broker):
    store = broker.broker.store
    before = store.read_batches
    async with user(broker, "newcomer") as newcomer:
        assert newcomer.offline == {"type": "offline_complete", "count": 0, "truncated": False}
    assert store.read_batches == before
    async with user(broker, "alice") as alice:
        await chat(alice, recvId="bob", chatType=2, content="while away", contentType=1)
        await recv_json(alice)
    async with user(broker, "bob") as bob:  # mail waiting: the query and the replay
        assert bob.offline["count"] == 1
    async with user(broker, "bob") as bob:  # confirmed: one query finds nothing ...
        assert bob.offline["count"] == 0
    before = store.read_batches
    async with user(broker, "bob") as bob:  # ... and the next login needs none
        assert bob.offline["count"] == 0
    assert store.read_batches == before


async def test_a_message_committed_while_the_user_logs_in_arrives_live_exactly_once(broker):
    """The message's commit is in flight when bob logs in: the store does not know of it
    yet, so bob is live at once, and the conversation delivers it to him after the commit."""
    store = broker.broker.store
    entered, release = threading.Event(), threading.Event()
    transaction = store._transaction

    def held_transaction(statements):
        if any("chat_messages" in sql for sql, _ in statements) and not release.is_set():
            entered.set()
            release.wait(10)
        return transaction(statements)

    store._transaction = held_transaction
    try:
        await _login_during_commit(broker, entered, release)
    finally:
        release.set()


async def _login_during_commit(broker, entered, release):
    async with user(broker, "alice") as alice:
        await chat(alice, recvId="bob", chatType=2, content="during login", contentType=1)
        with trio.fail_after(5):
            await trio.to_thread.run_sync(entered.wait)
        async with user(broker, "bob") as bob:
            assert bob.offline == {"type": "offline_complete", "count": 0, "truncated": False}
            release.set()
            message = await recv_json(bob)
            assert message["content"] == "during login"
            ack = await recv_json(alice)
            assert ack["type"] == "chat_ack" and ack["msgId"] == message["msgId"]
            await send_json(bob, {"type": "read", "conversationId": message["conversationId"],
                                  "msgId": message["msgId"]})
            assert (await recv_json(alice))["type"] == "read_receipt"  # the read position is stored
        async with user(broker, "bob") as bob:  # not again
            assert bob.offline == {"type": "offline_complete", "count": 0, "truncated": False}
            await send_json(bob, {"type": "ping"})
            assert (await recv_json(bob))["type"] == "pong"

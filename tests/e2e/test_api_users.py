"""Server API, user routes, one node end to end: where a user is connected,
disconnect (4009 by default), ban (403 before the upgrade, FORBIDDEN then 1008 after
an auth frame) and lifting it (docs/PROTOCOL.md section 8.3)."""

import json

import pytest
import trio
import trio_websocket

from broker import serve
from broker.auth.tokens import issue_token
from broker.cluster.control import Bans
from tests.support.helpers import JWT_SECRET, api_request, expect_close, make_config, recv_json, recv_until


def bearer(user):
    return [(b"Authorization", f"Bearer {issue_token(JWT_SECRET, user, 3600)}".encode())]


async def connect(nursery, broker, user):
    ws = await trio_websocket.connect_websocket_url(nursery, broker.url(), extra_headers=bearer(user))
    established = await recv_json(ws)
    assert established["type"] == "connection_established"
    return ws


async def test_a_user_offline_then_online_on_this_node(broker, nursery):
    assert await api_request(broker.port, "GET", "/api/users/alice") == (
        200, {"userId": "alice", "online": False, "connections": 0, "nodes": [], "banned": False})
    ws = await connect(nursery, broker, "alice")
    status, body = await api_request(broker.port, "GET", "/api/users/alice")
    assert status == 200 and body["online"] is True and body["connections"] == 1
    assert body["nodes"] == [broker.broker.backplane.node_id]
    await ws.aclose()


async def test_disconnect_closes_every_connection_of_the_user_with_4009(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, chat={"single_login": False}))
    first, second, other = await connect(nursery, broker, "bob"), await connect(nursery, broker, "bob"), await connect(nursery, broker, "carol")
    status, body = await api_request(broker.port, "POST", "/api/users/bob/disconnect")
    assert status == 200 and body == {"userId": "bob", "code": 4009, "connections": 2,
                                      "nodes": [broker.broker.backplane.node_id], "bannedForSeconds": None}
    assert await expect_close(first) == 4009 and await expect_close(second) == 4009
    assert first.closed.reason == "disconnected by the application"
    await trio_websocket_ping(other)  # another user's connection is untouched
    again = await connect(nursery, broker, "bob")  # no ban: it may come back
    await again.aclose()
    await other.aclose()


async def trio_websocket_ping(ws):
    await ws.send_message(json.dumps({"type": "ping"}))
    await recv_until(ws, lambda m: m.get("type") == "pong")


async def test_a_code_and_reason_of_the_application(broker, nursery):
    ws = await connect(nursery, broker, "dave")
    status, _ = await api_request(broker.port, "POST", "/api/users/dave/disconnect",
                                  {"code": 4321, "reason": "account closed ✓"})
    assert status == 200
    assert await expect_close(ws) == 4321 and ws.closed.reason == "account closed ✓"


async def test_a_ban_refuses_new_connections_until_lifted(broker, nursery):
    ws = await connect(nursery, broker, "eve")
    status, body = await api_request(broker.port, "POST", "/api/users/eve/disconnect", {"banSeconds": 600})
    assert status == 200 and body["bannedForSeconds"] == 600
    assert await expect_close(ws) == 4009
    assert (await api_request(broker.port, "GET", "/api/users/eve"))[1]["banned"] is True
    with pytest.raises(trio_websocket.ConnectionRejected) as refused:  # token in the request: 403 before the upgrade
        async with trio_websocket.open_websocket_url(broker.url(), extra_headers=bearer("eve")):
            pass
    assert refused.value.status_code == 403 and b"banned" in refused.value.body
    # token in the first frame: FORBIDDEN, then 1008
    async with trio_websocket.open_websocket_url(broker.url()) as late:
        await late.send_message(json.dumps({"type": "auth", "token": issue_token(JWT_SECRET, "eve", 3600)}))
        error = await recv_json(late)
        assert error["type"] == "error" and error["code"] == "FORBIDDEN"
        assert await expect_close(late) == 1008
    other = await connect(nursery, broker, "frank")  # others are not banned
    await other.aclose()
    assert await api_request(broker.port, "DELETE", "/api/users/eve/ban") == (200, {"userId": "eve", "lifted": True})
    assert await api_request(broker.port, "DELETE", "/api/users/eve/ban") == (200, {"userId": "eve", "lifted": False})
    back = await connect(nursery, broker, "eve")
    await back.aclose()


async def test_bad_disconnect_bodies_are_400(broker, nursery):
    for body in ({"code": 1000}, {"code": 5000}, {"code": "4009"}, {"banSeconds": 0}, {"banSeconds": True},
                 {"reason": "x" * 101}, {"other": 1}, [1]):
        status, answer = await api_request(broker.port, "POST", "/api/users/gina/disconnect", body)
        assert status == 400 and answer["code"] == "BAD_REQUEST", body
    status, answer = await api_request(broker.port, "POST", "/api/users/gina/disconnect", raw=b"{not json")
    assert status == 400


async def test_a_jwt_may_not_be_the_system_sender(broker, nursery):
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=bearer("system")) as ws:
        assert (await recv_json(ws))["code"] == "UNAUTHORIZED"
        assert await expect_close(ws) == 1008


async def test_a_ban_ends_by_itself(autojump_clock):
    bans = Bans()
    bans.ban("alice", 30)
    assert bans.banned("alice") and not bans.banned("bob")
    await trio.sleep(29.9)
    assert bans.banned("alice") and bans.users() == ["alice"]
    await trio.sleep(0.2)
    assert not bans.banned("alice") and bans.users() == []


async def test_the_python_client_stops_for_good_on_4009(broker, nursery):
    from broker.client.broker_client import ClientClosed, ReconnectPolicy, open_client

    with trio.fail_after(10):
        async with open_client(broker.url(), issue_token(JWT_SECRET, "henry", 3600),
                               reconnect=ReconnectPolicy(first_delay=0.01, max_attempts=5), seed=1) as client:
            await wait_online(broker, "henry")
            await api_request(broker.port, "POST", "/api/users/henry/disconnect")
            with pytest.raises(ClientClosed) as closed:
                async for _ in client:
                    pass
    assert closed.value.code == 4009 and client.connects == 1


async def wait_online(broker, user_id):
    """Until the broker has ``user_id`` logged in (the client connects in the background)."""
    while not (await api_request(broker.port, "GET", f"/api/users/{user_id}"))[1]["online"]:
        await trio.sleep(0.01)

"""Individual users (JWTs) and static tokens are separate namespaces, end to end.

A static token is a shared service identity (every browser of a job dashboard may use
the same one): a JWT whose ``sub`` is that token's principal name neither replaces
its sessions nor counts with them nor receives their chat; per-user limits are for
users, and a static token has its own, optional, per-token limit.
"""

from contextlib import asynccontextmanager

import pytest
import trio_websocket

from broker import serve
from broker.auth.tokens import issue_token
from broker.config.loader import StaticToken
from tests.support.helpers import DEMO_TOKEN, JWT_SECRET, make_config, recv_json, recv_until, send_json

STATIC_PRINCIPAL = "ws-client"  # the default env_token_user


@asynccontextmanager
async def connect(broker, token):
    """An established broker session for ``token`` (JWT or static)."""
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=headers) as ws:
        established = await recv_json(ws)
        assert established["type"] == "connection_established", established
        ws.user_id = established["userId"]
        if token.count(".") == 2:  # a user: offline delivery first
            await recv_until(ws, lambda m: m.get("type") == "offline_complete")
        yield ws


def jwt_for(user):
    return issue_token(JWT_SECRET, user, 3600)


async def still_open(ws):
    """The session answers a ping with a pong, and nothing (no REPLACED) came first."""
    await send_json(ws, {"type": "ping"})
    assert (await recv_json(ws))["type"] == "pong"


async def test_a_jwt_named_like_a_static_principal_evicts_no_static_session(broker):
    async with connect(broker, DEMO_TOKEN) as viewer1, connect(broker, DEMO_TOKEN) as viewer2:
        assert viewer1.user_id == viewer2.user_id == STATIC_PRINCIPAL  # unchanged for clients
        async with connect(broker, jwt_for(STATIC_PRINCIPAL)) as user:
            assert user.user_id == STATIC_PRINCIPAL
            # the JWT's login ran (synchronously) before its connection_established:
            # a REPLACED for the viewers would be queued ahead of their pong
            await still_open(viewer1)
            await still_open(viewer2)
            # single login still holds inside the user namespace
            async with connect(broker, jwt_for(STATIC_PRINCIPAL)) as newer:
                replaced = await recv_json(user)
                assert replaced["code"] == "REPLACED"
                await still_open(newer)
            await still_open(viewer1)


async def test_chat_to_a_user_never_reaches_a_static_token_of_that_name(broker):
    async with connect(broker, DEMO_TOKEN) as viewer, connect(broker, jwt_for(STATIC_PRINCIPAL)) as user, \
            connect(broker, jwt_for("alice")) as alice:
        await send_json(alice, {"conversationId": "", "recvId": STATIC_PRINCIPAL, "chatType": 2,
                                "content": "for the user", "contentType": 1})
        delivered = await recv_json(user)
        assert delivered["content"] == "for the user" and delivered["sendId"] == "alice"
        assert (await recv_json(alice))["type"] == "chat_ack"  # stored and delivered: the viewer's turn was then
        await still_open(viewer)
        # a shared token cannot speak or read as the user of the same name
        for command in ({"conversationId": "", "recvId": "alice", "chatType": 2, "content": "hi", "contentType": 1},
                        {"type": "history", "conversationId": "all"},
                        {"type": "read", "conversationId": "all", "msgId": delivered["msgId"]}):
            await send_json(viewer, command)
            refused = await recv_json(viewer)
            assert refused["type"] == "error" and refused["code"] == "FORBIDDEN", refused
        # a broadcast from the user reaches the static session (a different login), not the user itself
        await send_json(user, {"conversationId": "", "chatType": 1, "content": "to all", "contentType": 1})
        assert (await recv_json(viewer))["content"] == "to all"
        assert (await recv_json(alice))["content"] == "to all"
        assert (await recv_json(user))["type"] == "chat_ack"


async def test_per_user_limit_is_for_users_a_static_token_takes_more(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(
        tmp_path, chat={"single_login": False}, limits={"max_connections_per_user": 3}))
    async with connect(broker, DEMO_TOKEN) as v1, connect(broker, DEMO_TOKEN) as v2, \
            connect(broker, DEMO_TOKEN) as v3, connect(broker, DEMO_TOKEN) as v4, connect(broker, DEMO_TOKEN) as v5:
        for viewer in (v1, v2, v3, v4, v5):  # five viewers on one token, past the per-user limit of 3
            await still_open(viewer)
        async with connect(broker, jwt_for("bob")), connect(broker, jwt_for("bob")), connect(broker, jwt_for("bob")):
            with pytest.raises(trio_websocket.ConnectionRejected) as refused:
                async with connect(broker, jwt_for("bob")):
                    pass
            assert refused.value.status_code == 429 and b"this user" in refused.value.body
            # bob's three sessions do not count against a static principal called bob, nor the reverse
            async with connect(broker, DEMO_TOKEN) as v6:
                await still_open(v6)


async def test_a_per_token_limit_refuses_when_set(tmp_path, nursery):
    config = make_config(tmp_path, auth={
        "env_token_max_connections": 2,
        "static_tokens": (StaticToken("dashboard-token-1", "dashboard", ("*",), max_connections=1),),
    })
    broker = await nursery.start(serve, config)
    async with connect(broker, DEMO_TOKEN), connect(broker, DEMO_TOKEN):
        with pytest.raises(trio_websocket.ConnectionRejected) as refused:
            async with connect(broker, DEMO_TOKEN):
                pass
        assert refused.value.status_code == 429 and b"on this token" in refused.value.body
        # the limit is per token: another token (and its principal) is counted on its own
        async with connect(broker, "dashboard-token-1") as dashboard:
            assert dashboard.user_id == "dashboard"
            # a token sent in the auth frame is counted after the upgrade: RATE_LIMITED, then 1008
            async with trio_websocket.open_websocket_url(broker.url()) as late:
                await send_json(late, {"type": "auth", "token": "dashboard-token-1"})
                refused_frame = await recv_json(late)
                assert refused_frame["code"] == "RATE_LIMITED" and "on this token" in refused_frame["message"]
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await late.get_message()
                assert closed.value.reason.code == 1008
        # and a JWT user named like the token's principal is not limited by it
        async with connect(broker, jwt_for(STATIC_PRINCIPAL)) as user:
            await still_open(user)

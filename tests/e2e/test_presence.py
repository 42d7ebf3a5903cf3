"""Presence on one node (end to end, real sockets): who is in a job room, who of a
conversation's members is online, and the presence_join / presence_leave stream."""

from __future__ import annotations

import trio_websocket

from tests.support.clients import api, ask, jobs_user, join
from tests.support.helpers import recv_until, send_json


async def test_presence_of_a_job_lists_its_users_bounded_and_checks_permission(broker):
    async with (jobs_user(broker, "alice") as alice, jobs_user(broker, "bob") as bob,
                jobs_user(broker, "eve", jobs=["other-*"]) as eve):
        await join(alice, "job-p")
        await join(bob, "job-p")
        assert (await ask(eve, jobId="job-p"))["code"] == "FORBIDDEN"
        answer = await ask(alice, jobId="job-p")
        assert answer == {"type": "presence", "jobId": "job-p", "count": 2, "users": ["alice", "bob"]}
        await send_json(bob, {"type": "leave_job", "jobId": "job-p"})
        await recv_until(bob, lambda m: m["type"] == "left")
        assert (await ask(alice, jobId="job-p"))["users"] == ["alice"]
        assert await ask(alice, jobId="job-empty") == {"type": "presence", "jobId": "job-empty", "count": 0, "users": []}


async def test_list_is_bounded_and_count_is_not(tmp_path, nursery):
    from broker import serve
    from tests.support.helpers import make_config

    small = await nursery.start(serve, make_config(tmp_path, jobs={"presence_list_max": 2}))
    async with jobs_user(small, "u1") as a, jobs_user(small, "u2") as b, jobs_user(small, "u3") as c:
        for ws in (a, b, c):
            await join(ws, "job-b")
        assert await ask(a, jobId="job-b") == {"type": "presence", "jobId": "job-b", "count": 3, "users": ["u1", "u2"]}


async def test_watchers_get_the_list_then_joins_and_leaves_of_users(broker):
    async with jobs_user(broker, "alice") as alice:
        assert (await join(alice, "job-w", presence=True))["type"] == "joined"
        assert await recv_until(alice, lambda m: m["type"] == "presence") == {
            "type": "presence", "jobId": "job-w", "count": 1, "users": ["alice"]}
        async with jobs_user(broker, "bob") as bob:
            await join(bob, "job-w")
            assert await recv_until(alice, lambda m: m["type"].startswith("presence_")) == {
                "type": "presence_join", "jobId": "job-w", "userId": "bob"}
        assert await recv_until(alice, lambda m: m["type"].startswith("presence_")) == {
            "type": "presence_leave", "jobId": "job-w", "userId": "bob"}


async def test_a_second_connection_of_a_user_is_no_new_arrival(broker):
    async with trio_websocket.open_websocket_url(broker.url("/ws?token=demo-token")) as first:
        await recv_until(first, lambda m: m["type"] == "connection_established")
        await join(first, "job-s", presence=True)
        assert (await recv_until(first, lambda m: m["type"] == "presence"))["users"] == ["ws-client"]
        async with trio_websocket.open_websocket_url(broker.url("/ws?token=demo-token")) as second:
            await recv_until(second, lambda m: m["type"] == "connection_established")
            await join(second, "job-s")
            await send_json(second, {"type": "leave_job", "jobId": "job-s"})
            await recv_until(second, lambda m: m["type"] == "left")
        async with jobs_user(broker, "zed") as zed:  # the next change the watcher sees is zed's
            await join(zed, "job-s")
            assert await recv_until(first, lambda m: m["type"].startswith("presence_")) == {
                "type": "presence_join", "jobId": "job-s", "userId": "zed"}


async def test_presence_of_a_conversation_is_its_members_online(broker):

    assert (await api(broker, "POST", "/api/groups", {"groupId": "crew", "members": ["alice", "bob", "carol"]}))[0] == 201
    async with jobs_user(broker, "alice") as alice, jobs_user(broker, "bob"), jobs_user(broker, "dave") as dave:
        assert await ask(alice, conversationId="crew") == {
            "type": "presence", "conversationId": "crew", "count": 2, "users": ["alice", "bob"]}
        assert (await ask(dave, conversationId="crew"))["code"] == "FORBIDDEN"
        assert (await ask(alice, conversationId="all"))["code"] == "BAD_REQUEST"
        assert (await ask(alice, jobId="j", conversationId="crew"))["code"] == "BAD_REQUEST"
        await send_json(alice, {"type": "presence"})
        assert (await recv_until(alice, lambda m: m["type"] == "error"))["code"] == "BAD_REQUEST"

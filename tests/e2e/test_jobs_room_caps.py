"""One identity cannot take the job room cap (issue 20 section 3): distinct jobs watched
per identity (a user, or a static token per address), and the share of rooms kept for
publishes. Before, 101 connections on the shared demo token joining 100 jobs each
started 10 000 rooms and every backend publish to a new job got 503."""

import contextlib

import trio
import trio_websocket

from broker import serve
from broker.auth.tokens import Principal
from broker.jobs.watchers import JobWatchers, identity_of
from tests.support.clients import join, token
from tests.support.helpers import make_config, recv_json, send_json


def test_a_static_token_is_counted_per_address_and_a_user_once():
    shared = Principal("demo", "static", ("*",), token_name="env_token")
    assert identity_of(shared, "10.0.0.1") != identity_of(shared, "10.0.0.2")
    alice = Principal("alice", "jwt", ("*",))
    assert identity_of(alice, "10.0.0.1") == identity_of(alice, "10.0.0.2")


def test_an_identity_watches_at_most_its_bound_of_distinct_jobs():
    watchers = JobWatchers(max_jobs_per_identity=2)
    me, other = ("user", "me"), ("user", "other")
    assert watchers.reserve(me, "a") and watchers.reserve(me, "b")
    assert watchers.reserve(me, "a")  # a second connection on a job it watches: no new job
    assert not watchers.reserve(me, "c")
    assert watchers.reserve(other, "c")  # others are not affected
    watchers.release(me, "a")
    assert not watchers.reserve(me, "c")  # "a" is still watched by its other connection
    watchers.release(me, "a")
    assert watchers.reserve(me, "c") and watchers.watching(me) == 2


async def connect(stack, broker, headers=()):
    """A connection that lives as long as the test's exit stack (demo token, or ``headers``)."""
    url = broker.url() if headers else broker.url() + "?token=demo-token"
    ws = await stack.enter_async_context(trio_websocket.open_websocket_url(url, extra_headers=list(headers)))
    assert (await recv_json(ws))["type"] == "connection_established"
    return ws


async def test_connections_on_one_token_from_one_address_share_the_bound(nursery, tmp_path):
    broker = await nursery.start(serve, make_config(tmp_path, jobs={"max_jobs_per_identity": 3}))
    async with contextlib.AsyncExitStack() as stack:
        first, second = await connect(stack, broker), await connect(stack, broker)
        for job in ("j1", "j2", "j3"):
            assert (await join(first, job))["type"] == "joined"
        refused = await join(second, "j4")
        assert refused["code"] == "BAD_REQUEST" and "max_jobs_per_identity" in refused["message"]
        assert (await join(second, "j2"))["type"] == "joined"  # a job the identity already watches
        await send_json(first, {"type": "leave_job", "jobId": "j1"})
        assert (await recv_json(first))["type"] == "left"
        assert (await join(second, "j4"))["type"] == "joined"  # j1's place came back
        await first.aclose()
        with trio.fail_after(5):  # the session ends on the server side, and with it its jobs
            while len(broker.broker.hub) > 1:
                await trio.sleep(0.01)
        assert (await join(second, "j5"))["type"] == "joined"  # j3, watched by none now, came back


async def test_users_are_bounded_each_on_their_own(nursery, tmp_path):
    broker = await nursery.start(serve, make_config(tmp_path, jobs={"max_jobs_per_identity": 1}))
    async with contextlib.AsyncExitStack() as stack:
        alice = await connect(stack, broker, [(b"Authorization", f"Bearer {token('alice', ['*'])}".encode())])
        bob = await connect(stack, broker, [(b"Authorization", f"Bearer {token('bob', ['*'])}".encode())])
        assert (await join(alice, "a1"))["type"] == "joined"
        assert (await join(alice, "a2"))["code"] == "BAD_REQUEST"
        assert (await join(bob, "b1"))["type"] == "joined"


async def test_joins_never_take_the_rooms_kept_for_publishes(nursery, tmp_path):
    broker = await nursery.start(serve, make_config(tmp_path, jobs={"max_rooms": 10, "publish_room_share": 0.2}))
    async with contextlib.AsyncExitStack() as stack:
        clients = [await connect(stack, broker) for _ in range(3)]
        answers = [await join(clients[i % 3], f"job-{i}") for i in range(10)]
        assert [a["type"] for a in answers] == ["joined"] * 8 + ["error"] * 2
        assert answers[-1]["code"] == "UNAVAILABLE" and "kept for publishes" in answers[-1]["message"]
        for i in range(2):  # the backend still reaches new jobs
            assert await broker.publish(f"backend-{i}", "job_status", {"status": "RUNNING"}) == 1

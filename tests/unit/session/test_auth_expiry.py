"""Token expiry and in-band refresh on an open connection (docs/PROTOCOL.md section 2),
exact in virtual time (autojump_clock) over in-memory streams through the real front end.

The wall clock the broker maps a token's ``exp`` from starts at ``WALL``, and runs
with the virtual clock: every deadline is a whole number of virtual seconds."""

import json
import time
import types
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from wsproto.events import CloseConnection

from actors import open_supervisor
from broker.app import Broker, replay_pacing
from broker.auth.tokens import issue_token
from broker.chat.conversations import Conversations
from broker.chat.service import Chat
from broker.cluster import LocalBackplane
from broker.jobs.job_rooms import JobRooms
from broker.protocols import JobEvent
from tests.support.helpers import DEMO_TOKEN, JWT_SECRET, MemoryStore, RawClient, make_config

WALL = float(int(time.time()))


@pytest.fixture(autouse=True)
def pinned_wall_clock(monkeypatch):
    global WALL
    WALL = float(int(time.time()))  # per test: tokens are minted from it and PyJWT checks exp on the real clock
    # the wall clock runs with the virtual one, from WALL at virtual time 0
    monkeypatch.setattr("broker.session.connection.time", types.SimpleNamespace(time=lambda: WALL + trio.current_time()))


def wall_token(sub="alice", ttl=300, **claims):
    return issue_token(JWT_SECRET, sub, ttl, claims, now=WALL)


class NoMailStore(MemoryStore):
    """Jobs in memory; no user has chat mail waiting (users go live at login)."""

    def no_mail_waiting(self, user_id):
        return True


@asynccontextmanager
async def virtual_broker(tmp_path, **sections):
    sections.setdefault("websocket", {"idle_timeout": 100_000, "heartbeat_interval": 10_000})
    broker = Broker(make_config(tmp_path, **sections))
    async with open_supervisor("rooms") as rooms:
        broker.store = NoMailStore()
        config = broker.config
        backplane = LocalBackplane(broker.store, broker.hub)
        broker.job_rooms = JobRooms(rooms, backplane.job_log, backplane.presence, config.jobs, broker.metrics)
        broker.conversations = Conversations(rooms, broker.store, broker.hub, config.chat, broker.metrics,
                                             config.websocket.outgoing_frame_limit)
        broker.chat = Chat(broker.conversations, replay_pacing(config))
        yield broker
        rooms.stop_all()


async def connect(nursery, broker, bearer):
    server_end, client_end = trio.testing.memory_stream_pair()
    before = set(broker.hub.sessions())
    nursery.start_soon(broker.http_front().handle_tcp, server_end)
    client = RawClient(client_end)
    assert (await client.handshake("/ws", [(b"authorization", f"Bearer {bearer}".encode())]))[0] == 101
    (session,) = set(broker.hub.sessions()) - before
    assert (await client.next_json())["type"] == "connection_established"
    if bearer != DEMO_TOKEN:  # a user: live at once, nothing waiting
        assert (await client.next_json())["type"] == "offline_complete"
    return session, client


async def next_of(client, kind):
    while True:
        message = await client.next_json()
        if message["type"] == kind:
            return message


async def until_close(client):
    """Every message up to the close, and the close's (code, reason), answered."""
    messages = []
    while True:
        received = await client.next_event()
        if isinstance(received, CloseConnection):
            await client.stream.send_all(client.ws.send(received.response()))
            return messages, (received.code, received.reason)
        messages.append(json.loads(received.data))


def event(job_id, text):
    return JobEvent(job_id, "job_status", {"jobId": job_id, "status": text})


async def test_warned_at_exp_minus_refresh_before_then_closed_4005_at_exp_plus_leeway(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path) as broker, trio.open_nursery() as nursery:
        start = trio.current_time()
        _, client = await connect(nursery, broker, wall_token(ttl=300))
        expiring = await client.next_json()
        assert expiring == {"type": "token_expiring", "expiresAt": format_time(WALL + 300)}
        assert trio.current_time() - start == 300 - 60
        error = await client.next_json()
        assert (error["type"], error["code"]) == ("error", "TOKEN_EXPIRED")
        assert await client.expect_close() == (4005, "token expired: get a new token, then reconnect")
        assert trio.current_time() - start == 300 + 30  # [auth] jwt_leeway


def format_time(epoch):
    from broker.protocols import format_expiry

    return format_expiry(epoch)


async def test_a_short_token_is_warned_at_half_its_life(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path, auth={"jwt_secret": JWT_SECRET, "jwt_leeway": 0}) as broker, \
            trio.open_nursery() as nursery:
        start = trio.current_time()
        _, client = await connect(nursery, broker, wall_token(ttl=40))
        assert (await client.next_json())["type"] == "token_expiring"
        assert trio.current_time() - start == 20
        assert (await client.next_json())["code"] == "TOKEN_EXPIRED"
        assert (await client.expect_close())[0] == 4005
        assert trio.current_time() - start == 40


async def test_an_in_band_refresh_extends_the_connection(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path) as broker, trio.open_nursery() as nursery:
        start = trio.current_time()
        session, client = await connect(nursery, broker, wall_token(ttl=300))
        assert (await client.next_json())["type"] == "token_expiring"
        await client.send_json({"type": "auth", "token": wall_token(ttl=900)})
        assert await client.next_json() == {"type": "token_refreshed", "expiresAt": format_time(WALL + 900)}
        await client.send_json({"type": "auth", "token": "not-a-token"})  # refused: the last good one holds
        assert (await client.next_json())["code"] == "UNAUTHORIZED"
        assert (await client.next_json())["type"] == "token_expiring"
        assert trio.current_time() - start == 900 - 60
        assert (await client.next_json())["code"] == "TOKEN_EXPIRED"
        assert (await client.expect_close())[0] == 4005
        assert trio.current_time() - start == 900 + 30


async def test_a_refresh_for_another_user_is_forbidden_and_closes_1008(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path) as broker, trio.open_nursery() as nursery:
        _, client = await connect(nursery, broker, wall_token("alice"))
        await client.send_json({"type": "auth", "token": wall_token("mallory", ttl=900)})
        error = await client.next_json()
        assert (error["type"], error["code"]) == ("error", "FORBIDDEN")
        assert (await client.expect_close())[0] == 1008


async def test_a_refresh_leaves_the_jobs_the_new_claims_no_longer_allow(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path) as broker, trio.open_nursery() as nursery:
        _, client = await connect(nursery, broker, wall_token(jobs=["job-a", "job-b"]))
        for job in ("job-a", "job-b"):
            await client.send_json({"type": "join_job", "jobId": job})
            assert (await next_of(client, "joined"))["jobId"] == job
        await client.send_json({"type": "auth", "token": wall_token(ttl=900, jobs=["job-a"])})
        left = await client.next_json()
        assert (left["type"], left["jobId"], left["code"]) == ("left", "job-b", "FORBIDDEN")
        assert (await client.next_json())["type"] == "token_refreshed"
        await broker.job_rooms.publish(event("job-b", "secret"))
        await broker.job_rooms.publish(event("job-a", "fine"))
        assert (await client.next_json())["data"]["status"] == "fine"  # nothing of job-b came before it
        await client.send_json({"type": "join_job", "jobId": "job-b"})
        assert (await client.next_json())["code"] == "FORBIDDEN"


async def test_nothing_published_after_expiry_reaches_the_connection(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path, auth={"jwt_secret": JWT_SECRET, "jwt_leeway": 0}) as broker, \
            trio.open_nursery() as nursery:
        start = trio.current_time()
        session, client = await connect(nursery, broker, wall_token(ttl=100, jobs=["job-1"]))
        await client.send_json({"type": "join_job", "jobId": "job-1"})
        await next_of(client, "joined")
        await broker.job_rooms.publish(event("job-1", "before"))
        assert (await next_of(client, "job_status"))["data"]["status"] == "before"
        # the room's fan-out at exactly the expiry, before the reader's timer has run
        frame = b"\x81\x05after"
        assert session.send_frame_nowait(frame, now=start + 100) is False
        assert session.closed
        messages, close = await until_close(client)
        assert close[0] == 4005
        assert [m["type"] for m in messages] == ["error"] and messages[0]["code"] == "TOKEN_EXPIRED"


async def test_a_publish_just_after_expiry_is_not_delivered(tmp_path, autojump_clock):
    async with virtual_broker(tmp_path, auth={"jwt_secret": JWT_SECRET, "jwt_leeway": 5}) as broker, \
            trio.open_nursery() as nursery:
        start = trio.current_time()
        _, client = await connect(nursery, broker, wall_token(ttl=100, jobs=["job-1"]))
        await client.send_json({"type": "join_job", "jobId": "job-1"})
        await next_of(client, "joined")

        async def publish_after_expiry():
            await trio.sleep_until(start + 105.001)
            await broker.job_rooms.publish(event("job-1", "after expiry"))

        nursery.start_soon(publish_after_expiry)
        seen, close = await until_close(client)
        assert close[0] == 4005 and trio.current_time() >= start + 105
        assert [m.get("type") for m in seen] == ["token_expiring", "error"] and seen[1]["code"] == "TOKEN_EXPIRED"
        await trio.sleep(1)  # the publish came after the close: it found no member
        assert trio.current_time() > start + 105.001


async def test_static_tokens_never_expire(tmp_path, autojump_clock):
    quiet = {"idle_timeout": 1e6, "heartbeat_interval": 1e6}
    async with virtual_broker(tmp_path, websocket=quiet) as broker, trio.open_nursery() as nursery:
        session, client = await connect(nursery, broker, DEMO_TOKEN)
        await trio.sleep(50_000)
        assert not session.closed
        await client.send_json({"type": "auth", "token": wall_token()})  # a static identity cannot be refreshed
        assert (await client.next_json())["code"] == "BAD_REQUEST"
        session.evict(1000, "test over", "test")

"""user.online / user.offline in a cluster, to a real HTTP receiver: two nodes sharing one
redis-server and one PostgreSQL store. A user's first connections at the same instant
on both nodes make one user.online, its last disconnects one user.offline; the event is
in the outbox before the client is told it is connected; a sweeper that fails between
the sweep and its outbox write loses nothing (the next sweep sends it, with the same
webhook-id); and after Redis lost its data a node killed with -9 still gets its users
their user.offline."""

from __future__ import annotations

import base64
import contextlib

import coredis
import pytest
import trio
import trio_websocket

from broker.auth.tokens import issue_token
from broker.cluster.redis import RedisBackplane
from broker.config.loader import WebhookEndpoint
from broker.config.sections import ClusterConfig
from broker.store import StoreError, outbox_sql
from broker.webhooks.events import transition_webhook_id
from tests.support.cluster import FAST_WEBHOOK_ENV, NoFeed, config_with_webhook, node_process_handles, nodes
from tests.support.helpers import JWT_SECRET, recv_json
from tests.support.services import redis_server
from tests.support.webhook_receiver import webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"cluster-users-0123456789ab").decode()
USER_EVENTS = ("user.online", "user.offline")


def sections(receiver, **cluster):
    return {"webhooks": {"poll_interval": 0.1, "retry_base": 0.05, "retry_max": 0.2},
            "webhook": (WebhookEndpoint(url=receiver.url, name="app", events=USER_EVENTS, secrets=(SECRET,)),),
            "cluster": cluster}


def jwt_url(node, user: str) -> str:
    return node.url(f"/ws?token={issue_token(JWT_SECRET, user, 600)}")


def presence_of(receiver, user: str) -> list[tuple[str, int]]:
    return [(e["type"], e["data"]["seq"]) for e in receiver.delivered(USER_EVENTS) if e["data"]["userId"] == user]


async def outbox_empty(node) -> None:
    with trio.fail_after(10):
        while (await node.broker.store.read([outbox_sql.depth_query()]))[0]:
            await trio.sleep(0.05)


@pytest.mark.parametrize("single_login", [False, True], ids=["several-connections", "single-login"])
async def test_first_logins_and_last_disconnects_at_the_same_instant_on_two_nodes_make_one_event_each(
        tmp_path, pg_url, single_login):
    rounds = 30
    async with webhook_receiver() as receiver, redis_server(tmp_path) as redis, \
            nodes(tmp_path, redis.url, pg_url, 2, chat={"single_login": single_login},
                  **sections(receiver)) as (a, b):
        for round_ in range(rounds):
            both_in = trio.Event()
            answered: list[str] = []

            async def connect(node, answered=answered, both_in=both_in):
                async with trio_websocket.open_websocket_url(jwt_url(node, "racer")) as ws:
                    first = await recv_json(ws)
                    # single login: the loser may be replaced before it was told it is connected
                    assert first["type"] == "connection_established" or first.get("code") == "REPLACED", first
                    answered.append(first["type"])
                    if len(answered) == 2:
                        both_in.set()
                    await both_in.wait()  # then both close at once

            async with trio.open_nursery() as nursery:
                nursery.start_soon(connect, a)
                nursery.start_soon(connect, b)
            with trio.fail_after(10):
                await receiver.wait_for(lambda r, n=round_ + 1: len(r.delivered(("user.offline",))) >= n)
            assert [kind for kind, _ in presence_of(receiver, "racer")] == ["user.online", "user.offline"] * (round_ + 1)
        await outbox_empty(a)
    presence = presence_of(receiver, "racer")
    assert [kind for kind, _ in presence] == ["user.online", "user.offline"] * rounds  # one each per round, in order
    seqs = [seq for _, seq in presence]
    assert seqs == list(range(seqs[0], seqs[0] + 2 * rounds))  # the backplane's numbering, nothing skipped
    ids = [r.webhook_id for r in receiver.requests]
    assert len(ids) == len(set(ids)) == 2 * rounds  # each event sent once, by one node
    assert ids == [transition_webhook_id("racer", seq) for seq in seqs]


async def test_user_online_is_in_the_outbox_before_connection_established(tmp_path, pg_url, monkeypatch):
    held = trio.Event()
    routed_when_written: list[tuple[str, bool, bool]] = []  # (user, online, routed when its row committed)

    async def hold(request):  # nothing is delivered (so nothing leaves the outbox) until the test ends
        await held.wait()
        return 204, []

    async with webhook_receiver(hold) as receiver, redis_server(tmp_path) as redis, \
            nodes(tmp_path, redis.url, pg_url, 2, **sections(receiver)) as (a, b):
        for node in (a, b):
            def look(transitions, hub=node.broker.hub, record=node.broker.outbox.record_transitions):
                async def record_and_look():
                    await record(transitions)  # committed: was the session routed (told it is connected) yet?
                    last = transitions[-1]
                    routed_when_written.append((last.user_id, last.online, bool(hub.sessions_of(last.user_id))))
                return record_and_look()
            monkeypatch.setattr(node.broker.outbox, "record_transitions", look)
        try:
            for index, node in enumerate((a, b, a, b)):
                user = f"early-{index}"
                async with trio_websocket.open_websocket_url(jwt_url(node, user)) as ws:
                    assert (await recv_json(ws))["type"] == "connection_established"
                    assert [routed for who, online, routed in routed_when_written if who == user and online] == [False]
                    (rows,) = await node.broker.store.read([(
                        "SELECT event_type, webhook_id FROM webhook_outbox WHERE event_key = ?", (f"user:{user}",))])
                    assert [kind for kind, _ in rows] == ["user.online"], rows
        finally:
            held.set()


@pytest.mark.parametrize("failure", ["write fails", "written, never acknowledged"])
async def test_a_sweeper_that_fails_after_the_sweep_leaves_the_event_to_the_next_sweep(
        tmp_path, pg_url, monkeypatch, failure):
    async with webhook_receiver() as receiver, redis_server(tmp_path) as redis, \
            nodes(tmp_path, redis.url, pg_url, 1, **sections(receiver, node_ttl=1.0)) as (survivor,):
        outbox = survivor.broker.outbox
        record = outbox.record_transitions
        calls: list[list[str]] = []

        async def fail_once(transitions):
            calls.append([t.user_id for t in transitions])
            if len(calls) == 1:
                if failure != "write fails":
                    await record(transitions)  # committed, then the sweeper dies before its acknowledgement
                raise StoreError("the sweeper's store write failed")
            await record(transitions)

        monkeypatch.setattr(outbox, "record_transitions", fail_once)
        # a node that claims a user (its user.online decided) and dies before writing it
        victim = RedisBackplane(ClusterConfig(redis_url=redis.url, node_id="victim", node_ttl=1.0))
        victim.logins.track_users = True
        feed = NoFeed()
        async with victim.open(feed, feed, feed, feed):
            with trio.fail_after(10):
                while victim.problem() is not None:
                    await trio.sleep(0.01)
            (online,) = (await victim.logins.claim_login("user:ghost", "v1", False, None)).transitions
        async with coredis.Redis.from_url(redis.url) as client:
            await client.delete([f"broker:node:{victim.instance}"])  # as after kill -9
        with trio.fail_after(15):  # the survivor's sweeps: the dead node's user, then the redo after the lease
            await receiver.wait_for(lambda r: len(r.delivered(USER_EVENTS)) >= 2)
        await outbox_empty(survivor)
        with trio.fail_after(10):
            async with coredis.Redis.from_url(redis.url) as client:
                while await client.zcard("broker:user-transitions"):  # acknowledged once written
                    await trio.sleep(0.05)
    assert len(calls) >= 2  # the failed one, then the next sweep's
    assert presence_of(receiver, "ghost") == [("user.online", online.seq), ("user.offline", online.seq + 1)]
    assert [r.webhook_id for r in receiver.requests] == [transition_webhook_id("ghost", online.seq + i)
                                                         for i in range(2)]  # each once, with its one id


async def test_after_redis_restarted_empty_a_node_killed_with_minus_9_gets_its_users_offline(tmp_path, pg_url):
    async with webhook_receiver() as receiver, redis_server(tmp_path) as redis:
        config = config_with_webhook(tmp_path, receiver.url, ["user.online", "user.offline"], SECRET)
        async with node_process_handles(tmp_path, redis.url, pg_url, ["victim", "survivor"], FAST_WEBHOOK_ENV,
                                        config) as processes:
            (victim, victim_port), _ = processes
            headers = [(b"Authorization", f"Bearer {issue_token(JWT_SECRET, 'alice', 600)}".encode())]
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{victim_port}/ws",
                                                         extra_headers=headers) as alice:
                assert (await recv_json(alice))["type"] == "connection_established"
                with trio.fail_after(10):
                    await receiver.wait_for(lambda r: r.delivered(("user.online",)))
                await redis.restart(wipe=True)  # Redis back, empty: entries, sets, user states gone
                async with coredis.Redis.from_url(redis.url) as client:
                    with trio.fail_after(20):  # the victim resubscribes and writes back what a sweep reads
                        while True:
                            sets = await client.keys("broker:instance-logins:victim/*")
                            if sets and b"user:alice" in await client.smembers(next(iter(sets))):
                                break
                            await trio.sleep(0.05)
                victim.kill()  # SIGKILL: no release, no goodbye
                victim.wait()
                with trio.fail_after(10), contextlib.suppress(trio_websocket.ConnectionClosed):
                    while True:
                        await alice.get_message()
            with trio.fail_after(20):  # swept within node_ttl (2 s) of the kill by the survivor
                await receiver.wait_for(lambda r: r.delivered(("user.offline",)))
    assert [e["type"] for e in receiver.delivered() if e["data"]["userId"] == "alice"] == \
        ["user.online", "user.offline"]

"""Webhooks in a cluster: two nodes sharing one redis-server and one PostgreSQL store
send each event once (a lease taken with FOR UPDATE SKIP LOCKED), and an event taken
by a node that dies is sent by the other once the lease has run out."""

from __future__ import annotations

import base64

import trio

from broker import serve
from broker.config.loader import WebhookEndpoint
from broker.store import outbox_sql
from tests.support.clients import chat, user
from tests.support.cluster import node_config, nodes, wait_feed_up
from tests.support.helpers import recv_until
from tests.support.services import redis_server
from tests.support.webhook_receiver import webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"cluster-secret-0123456789ab").decode()


def webhook_sections(receiver, events=("*",), **settings):
    return {"webhooks": {"poll_interval": 0.1, "retry_base": 0.05, "retry_max": 0.2, **settings},
            "webhook": (WebhookEndpoint(url=receiver.url, name="app", events=events, secrets=(SECRET,)),)}


async def test_two_nodes_send_each_event_once_and_a_users_presence_in_order(tmp_path, pg_url):
    async with webhook_receiver() as receiver, redis_server(tmp_path) as redis, \
            nodes(tmp_path, redis.url, pg_url, 2, **webhook_sections(receiver)) as (a, b):
        async with user(a, "alice") as alice, user(b, "bob") as bob, user(b, "carol") as carol:
            for i in range(30):  # two conversations, stored through both nodes
                await chat(alice, recvId="bob", chatType=2, content=f"ab{i}", contentType=1)
                await chat(carol, recvId="alice", chatType=2, content=f"ca{i}", contentType=1)
            for sender in (alice, carol):
                acks = 0
                with trio.fail_after(10):
                    while acks < 30:
                        acks += (await recv_until(sender, lambda m: m.get("type") == "chat_ack")) is not None
            del bob
        with trio.fail_after(20):
            await receiver.wait_for(lambda r: len(r.delivered(("chat.message",))) >= 60
                                    and len(r.delivered(("user.offline",))) >= 3)
        senders = (a.broker.webhook_sender, b.broker.webhook_sender)
        with trio.fail_after(10):  # every answer is back and its event deleted
            while (await a.broker.store.read([outbox_sql.depth_query()]))[0]:
                await trio.sleep(0.05)
        assert sum(s.delivered for s in senders) == len(receiver.requests)
    ids = [r.webhook_id for r in receiver.requests]
    assert len(ids) == len(set(ids))  # a healthy receiver got every event once: one node sent it
    messages = receiver.delivered(("chat.message",))
    for prefix in ("ab", "ca"):
        assert [m["data"]["content"] for m in messages if m["data"]["content"].startswith(prefix)] == \
            [f"{prefix}{i}" for i in range(30)]
    presence = [(e["type"], e["data"]["userId"]) for e in receiver.delivered(("user.online", "user.offline"))]
    for name in ("alice", "bob", "carol"):
        assert [kind for kind, who in presence if who == name] == ["user.online", "user.offline"]


async def test_an_event_taken_by_a_node_that_stops_is_sent_by_the_other_once_its_lease_ends(tmp_path, pg_url):
    first_attempt = trio.Event()

    async def hang_first(request):
        if not first_attempt.is_set():
            first_attempt.set()
            await trio.sleep_forever()  # node a's request: a stops while holding the lease
        return 200, []

    async with webhook_receiver(hang_first) as receiver, redis_server(tmp_path) as redis, \
            trio.open_nursery() as nursery:
        sections = webhook_sections(receiver, events=("chat.message",), timeout=1.0, lease=3.0)
        a_scope = trio.CancelScope()

        async def run_a(task_status=trio.TASK_STATUS_IGNORED):
            with a_scope:
                await serve(node_config(tmp_path, redis.url, pg_url, "a", **sections), task_status=task_status)

        a = await nursery.start(run_a)
        await wait_feed_up(a)
        async with user(a, "alice") as alice:
            await chat(alice, recvId="bob", chatType=2, content="once", contentType=1)
            await recv_until(alice, lambda m: m.get("type") == "chat_ack")
        with trio.fail_after(10):
            await first_attempt.wait()  # a holds the only event, leased
        ((holder, lease_until),) = (await a.broker.store.read([
            ("SELECT claimed_by, lease_until FROM webhook_outbox", ())]))[0]
        assert holder == a.broker.backplane.instance
        async with nodes(tmp_path, redis.url, pg_url, 1, **sections) as (b,):
            a_scope.cancel()  # a is gone: no outcome written, its lease runs out
            with trio.fail_after(20):
                await receiver.wait_for(lambda r: len(r.requests) >= 2)
                while (await b.broker.store.read([outbox_sql.depth_query()]))[0]:
                    await trio.sleep(0.05)
            assert b.broker.webhook_sender.delivered == 1
    assert len({r.webhook_id for r in receiver.requests}) == 1
    assert receiver.requests[-1].event["data"]["content"] == "once"


async def test_user_offline_when_the_node_holding_the_last_connection_is_killed(tmp_path, pg_url):
    import contextlib

    import trio_websocket

    from broker.auth.tokens import issue_token
    from tests.support.cluster import FAST_WEBHOOK_ENV, config_with_webhook, node_process_handles
    from tests.support.helpers import JWT_SECRET, recv_json

    async with webhook_receiver() as receiver, redis_server(tmp_path) as redis:
        config = config_with_webhook(tmp_path, receiver.url, ["user.online", "user.offline"], SECRET)
        # lease 3 s: the victim may die before its 2xx for user.online is stored; the survivor
        # sends it again (same webhook-id) when the lease ends, then user.offline after it
        async with node_process_handles(tmp_path, redis.url, pg_url, ["victim", "survivor"], FAST_WEBHOOK_ENV,
                                        config) as processes:
            (victim, victim_port), _ = processes
            headers = [(b"Authorization", f"Bearer {issue_token(JWT_SECRET, 'alice', 600)}".encode())]
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{victim_port}/ws",
                                                         extra_headers=headers) as alice:
                await recv_json(alice)
                with trio.fail_after(10):
                    await receiver.wait_for(lambda r: r.delivered(("user.online",)))
                victim.kill()  # SIGKILL: no release, no goodbye
                victim.wait()
                with trio.fail_after(10), contextlib.suppress(trio_websocket.ConnectionClosed):
                    while True:
                        await alice.get_message()
            with trio.fail_after(20):  # recorded within node_ttl (2 s) of the kill; sent after the lease
                await receiver.wait_for(lambda r: r.delivered(("user.offline",)))
    events = [(e["type"], e["data"]["userId"]) for e in receiver.delivered()]
    assert events == [("user.online", "alice"), ("user.offline", "alice")]

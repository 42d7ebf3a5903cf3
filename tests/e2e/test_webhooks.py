"""Webhooks end to end: a real broker, real clients and a real HTTP receiver on
loopback; the receiver verifies with the ``standardwebhooks`` package, as an
application would."""

import base64
from contextlib import asynccontextmanager

import pytest
import standardwebhooks
import trio
import trio_websocket

from broker import serve
from broker.auth.tokens import issue_token
from tests.support.clients import api, user
from tests.support.helpers import JWT_SECRET, expect_close, make_config, recv_json, recv_until, send_json
from tests.support.webhook_receiver import webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"first-secret-0123456789abcdef").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"second-secret-0123456789abcdef").decode()


def webhook_config(tmp_path, *endpoints, **webhooks):
    return make_config(tmp_path, auth={"jwt_default_jobs": ("*",)},
                       webhooks={"poll_interval": 0.2, "retry_base": 0.05, "retry_max": 0.2, **webhooks}
                       ).replace(webhook=tuple(endpoints))


def endpoint(receiver, name="app", events=("*",), secrets=(SECRET,)):
    from broker.config.loader import WebhookEndpoint

    return WebhookEndpoint(url=receiver.url, name=name, events=tuple(events), secrets=tuple(secrets))


@asynccontextmanager
async def running(config):
    async with trio.open_nursery() as nursery:
        broker = await nursery.start(serve, config)
        yield broker
        nursery.cancel_scope.cancel()


def count(types, n):
    return lambda receiver: len(receiver.delivered(types)) >= n


async def test_chat_message_is_signed_per_standard_webhooks_with_every_secret(tmp_path):
    async with webhook_receiver() as receiver, \
            running(webhook_config(tmp_path, endpoint(receiver, secrets=(SECRET, NEW_SECRET)))) as broker:
        async with user(broker, "alice") as alice, user(broker, "bob") as bob:
            await send_json(alice, {"recvId": "bob", "chatType": 2, "content": "hello", "contentType": 1})
            seen_by_bob = await recv_json(bob)
            with trio.fail_after(10):
                await receiver.wait_for(count(("chat.message",), 1))
    (request,) = [r for r in receiver.requests if r.event["type"] == "chat.message"]
    # an existing verifier accepts it with either secret (rotation), and refuses a wrong one
    for secret in (SECRET, NEW_SECRET):
        assert standardwebhooks.Webhook(secret).verify(request.body, request.headers) == request.event
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    wrong = "whsec_" + base64.b64encode(b"not-the-secret-0123456789").decode()
    try:
        standardwebhooks.Webhook(wrong).verify(request.body, request.headers)
    except standardwebhooks.WebhookVerificationError:
        pass
    else:
        raise AssertionError("a wrong secret verified")
    event = request.event
    assert event["data"] == seen_by_bob  # the whole message, as its recipient received it
    assert event["timestamp"].endswith("Z") and request.headers["webhook-id"].startswith("msg_")


@pytest.mark.slow  # two seconds of real-time waiting here
async def test_user_online_offline_chat_read_and_job_occupancy_in_order(tmp_path):
    async with webhook_receiver() as receiver, running(webhook_config(tmp_path, endpoint(receiver))) as broker:
        async with user(broker, "alice") as alice:
            async with user(broker, "bob") as bob:
                await send_json(alice, {"recvId": "bob", "chatType": 2, "content": "hi", "contentType": 1})
                message = await recv_json(bob)
                await send_json(bob, {"type": "read", "conversationId": message["conversationId"],
                                      "msgId": message["msgId"]})
                await recv_until(alice, lambda m: m.get("type") == "read_receipt")
                await send_json(alice, {"type": "join_job", "jobId": "job-7"})
                await recv_until(alice, lambda m: m.get("type") == "joined")
                await send_json(alice, {"type": "leave_job", "jobId": "job-7"})
                with trio.fail_after(10):
                    await receiver.wait_for(count(("job.vacated",), 1))
            with trio.fail_after(10):
                await receiver.wait_for(lambda r: any(e["type"] == "user.offline" and e["data"]["userId"] == "bob"
                                                      for e in r.delivered()))
    events = receiver.delivered()
    kinds = [(e["type"], e["data"].get("userId") or e["data"].get("jobId")) for e in events]
    for user_id in ("alice", "bob"):
        assert [k for k in kinds if k[1] == user_id and k[0].startswith("user.")][:1] == [("user.online", user_id)]
    bob_events = [k for k in kinds if k[1] == "bob" and k[0].startswith("user.")]
    assert bob_events == [("user.online", "bob"), ("user.offline", "bob")]
    assert [k for k in kinds if k[1] == "job-7"] == [("job.occupied", "job-7"), ("job.vacated", "job-7")]
    (read,) = [e for e in events if e["type"] == "chat.read"]
    assert read["data"] == {"conversationId": message["conversationId"], "userId": "bob", "msgId": message["msgId"]}


async def test_only_the_events_an_endpoint_asked_for(tmp_path):
    async with webhook_receiver() as everything, webhook_receiver() as messages_only:
        config = webhook_config(tmp_path, endpoint(everything, name="all"),
                                endpoint(messages_only, name="messages", events=("chat.message",)))
        async with running(config) as broker, user(broker, "alice") as alice, user(broker, "bob") as bob:
            await send_json(alice, {"recvId": "bob", "chatType": 2, "content": "x", "contentType": 1})
            await recv_json(bob)
            with trio.fail_after(10):
                await messages_only.wait_for(count(None, 1))
                await everything.wait_for(count(("chat.message",), 1))
    assert [e["type"] for e in messages_only.delivered()] == ["chat.message"]
    assert {"user.online", "chat.message"} <= {e["type"] for e in everything.delivered()}


@pytest.mark.slow  # a real Retry-After wait
async def test_retried_with_the_same_webhook_id_until_2xx_and_retry_after_is_honoured(tmp_path):
    answers = iter([(503, []), (429, [("Retry-After", "1")]), (500, [])])

    async def flaky(request):
        return next(answers, (200, []))

    async with webhook_receiver(flaky) as receiver, \
            running(webhook_config(tmp_path, endpoint(receiver, events=("user.online",)))) as broker:
        async with user(broker, "alice"):
            with trio.fail_after(20):
                await receiver.wait_for(lambda r: len(r.requests) >= 4)
            await trio.sleep(0.5)  # nothing more comes once a 2xx has ended it
    assert len(receiver.requests) == 4
    assert len({r.webhook_id for r in receiver.requests}) == 1
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.requests]
    assert stamps[2] - stamps[1] >= 1  # the 429's Retry-After: 1 s before the next attempt
    for request in receiver.requests:  # each attempt signed for its own timestamp
        standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)


async def test_a_conversations_messages_arrive_in_order_while_one_is_retried(tmp_path):
    failed_once: set[str] = set()

    async def first_attempt_fails(request):
        if request.event["data"].get("content") == "m0" and request.webhook_id not in failed_once:
            failed_once.add(request.webhook_id)
            return 503, []
        return 204, []

    async with webhook_receiver(first_attempt_fails) as receiver, \
            running(webhook_config(tmp_path, endpoint(receiver, events=("chat.message",)))) as broker:
        async with user(broker, "alice") as alice, user(broker, "bob"):
            for i in range(5):
                await send_json(alice, {"recvId": "bob", "chatType": 2, "content": f"m{i}", "contentType": 1})
            with trio.fail_after(10):
                await receiver.wait_for(count(("chat.message",), 5))
    arrivals = [r.event["data"]["content"] for r in receiver.requests]
    assert arrivals == ["m0", "m0", "m1", "m2", "m3", "m4"]  # m1 waited for m0's retry


async def test_refused_event_is_dead_lettered_listed_and_resent_with_its_id(tmp_path, caplog):
    refuse = True

    async def gone_then_back(request):
        return (410, []) if refuse else (200, [])

    async with webhook_receiver(gone_then_back) as receiver, \
            running(webhook_config(tmp_path, endpoint(receiver, events=("user.online",)))) as broker:
        async with user(broker, "alice"):
            with trio.fail_after(10):
                await receiver.wait_for(lambda r: len(r.requests) >= 1)
                while True:
                    status, body = await api(broker, "GET", "/api/webhooks/failed")
                    if body["failed"]:
                        break
                    await trio.sleep(0.05)
            assert status == 200
            (dead,) = body["failed"]
            assert dead["type"] == "user.online" and dead["endpoint"] == "app" and dead["lastError"] == "HTTP 410"
            assert dead["webhookId"] == receiver.requests[0].webhook_id
            assert broker.metrics.webhook_dead.labels("app")._value.get() == 1
            stats = broker.broker.webhook_stats()  # what /api/stats shows
            assert stats["deadLettered"] == 1 and stats["failedAttempts"] == 1 and stats["endpoints"][0]["name"] == "app"
            assert b'broker_webhook_dead_letters_total{endpoint="app"} 1.0' in broker.metrics.render()
            with trio.fail_after(10):  # /api/stats: the sender's count (every poll_interval) sees it too
                while (await api(broker, "GET", "/api/stats"))[1]["node"]["webhooks"]["deadLetters"] != 1:
                    await trio.sleep(0.05)
            assert (await api(broker, "GET", "/api/stats"))[1]["node"]["webhooks"]["failures"] == 1
            assert (await api(broker, "GET", f"/api/webhooks/failed?after={dead['id']}"))[1]["failed"] == []
            document = (await api(broker, "GET", "/api/openapi.json"))[1]
            assert {"/api/webhooks/failed", "/api/webhooks/failed/{id}/retry"} <= set(document["paths"])
            refuse = False
            status, answer = await api(broker, "POST", f"/api/webhooks/failed/{dead['id']}/retry")
            assert status == 200 and answer["status"] == "pending"
            with trio.fail_after(10):
                await receiver.wait_for(lambda r: len(r.requests) >= 2)
            assert receiver.requests[1].webhook_id == dead["webhookId"]
            assert (await api(broker, "POST", f"/api/webhooks/failed/{dead['id']}/retry"))[0] == 404
            with trio.fail_after(10):
                while (await api(broker, "GET", "/api/webhooks/failed"))[1]["failed"]:
                    await trio.sleep(0.05)
    assert "dead-lettered: HTTP 410" in caplog.text  # one log line per dead letter
    assert SECRET not in caplog.text and SECRET[6:] not in caplog.text and receiver.url not in caplog.text


async def test_a_hanging_receiver_delays_no_chat_ack_and_no_other_endpoint(tmp_path):
    hanging = trio.Event()

    async def hang(request):
        hanging.set()
        await trio.sleep_forever()

    async with webhook_receiver(hang) as stuck, webhook_receiver() as healthy:
        config = webhook_config(tmp_path, endpoint(stuck, name="stuck", events=("chat.message",)),
                                endpoint(healthy, name="healthy", events=("chat.message",)), timeout=3600.0,
                                lease=7200.0)
        async with running(config) as broker, user(broker, "alice") as alice, user(broker, "bob"):
            await send_json(alice, {"recvId": "bob", "chatType": 2, "content": "first", "contentType": 1})
            with trio.fail_after(10):
                await hanging.wait()  # the stuck receiver holds its request from now on
            with trio.fail_after(10):  # acks come while it hangs (its timeout is an hour away)
                for i in range(20):
                    await send_json(alice, {"recvId": "bob", "chatType": 2, "content": f"m{i}", "contentType": 1})
                acks = 0
                while acks < 21:
                    acks += (await recv_json(alice))["type"] == "chat_ack"
                await healthy.wait_for(count(("chat.message",), 21))  # the other endpoint is not held up
            assert len(stuck.requests) == 1  # one in flight for the conversation: the rest wait their turn


async def test_user_online_is_in_the_outbox_before_connection_established_and_each_login_once(tmp_path, monkeypatch):
    held = trio.Event()
    routed_when_written: list[bool] = []

    async def hold(request):  # nothing is delivered (so nothing leaves the outbox) until the test ends
        await held.wait()
        return 204, []

    async with webhook_receiver(hold) as receiver, \
            running(webhook_config(tmp_path, endpoint(receiver, events=("user.online", "user.offline")))
                    .replace(chat={"single_login": False})) as broker:
        outbox = broker.broker.outbox
        record = outbox.record_transitions

        async def record_and_look(transitions):
            await record(transitions)  # committed: was the session routed (so told it is connected) already?
            routed_when_written.append(bool(broker.broker.hub.sessions_of("dora")))

        monkeypatch.setattr(outbox, "record_transitions", record_and_look)
        try:
            async with user(broker, "dora") as first:
                del first  # user() read its connection_established
                assert routed_when_written == [False]
                (rows,) = await broker.broker.store.read([
                    ("SELECT event_type FROM webhook_outbox WHERE event_key = 'user:dora'", ()),
                ])
                assert rows == [("user.online",)]
                async with trio.open_nursery() as nursery:  # more connections at once: the user is online already
                    for _ in range(3):
                        nursery.start_soon(_connect_and_close, broker, "dora")
            with trio.fail_after(5):
                while True:
                    (rows,) = await broker.broker.store.read([
                        ("SELECT event_type FROM webhook_outbox WHERE event_key = 'user:dora' ORDER BY id", ()),
                    ])
                    if len(rows) == 2:
                        break
                    await trio.sleep(0.02)
            assert rows == [("user.online",), ("user.offline",)]
        finally:
            held.set()


async def _connect_and_close(broker, user_id):
    async with user(broker, user_id):
        pass


async def test_single_login_on_one_node_the_newer_login_wins_while_user_online_is_written(tmp_path, monkeypatch):
    async with webhook_receiver() as receiver, \
            running(webhook_config(tmp_path, endpoint(receiver, events=("user.online", "user.offline")))) as broker:
        outbox = broker.broker.outbox
        record = outbox.record_transitions
        older_writing, newer_in, older_closed = trio.Event(), trio.Event(), trio.Event()

        async def held_until_the_newer_login_is_in(transitions):
            if transitions[-1].online:
                older_writing.set()
                await newer_in.wait()  # the first login's user.online is being written...
            await record(transitions)

        monkeypatch.setattr(outbox, "record_transitions", held_until_the_newer_login_is_in)
        token = issue_token(JWT_SECRET, "erin", 60)
        older_answer: list[dict] = []

        async def older():
            async with trio_websocket.open_websocket_url(broker.url(f"/ws?token={token}")) as ws:
                older_answer.append(await recv_json(ws))
                assert await expect_close(ws) == 4001
            older_closed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(older)
            with trio.fail_after(5):
                await older_writing.wait()
            # ...when a newer login claims, is routed and is told it is connected
            async with trio_websocket.open_websocket_url(broker.url(f"/ws?token={token}")) as newer:
                assert (await recv_json(newer))["type"] == "connection_established"
                newer_in.set()
                with trio.fail_after(5):
                    await older_closed.wait()
                await send_json(newer, {"type": "ping"})
                assert (await recv_until(newer, lambda m: m["type"] == "pong"))["type"] == "pong"  # it kept the route
        assert older_answer[0]["code"] == "REPLACED"
        with trio.fail_after(10):
            await receiver.wait_for(count(("user.offline",), 1))
    assert [e["type"] for e in receiver.delivered()] == ["user.online", "user.offline"]

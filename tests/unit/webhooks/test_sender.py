"""The webhook sender in virtual time (autojump_clock): the outbox's real SQL on an
in-memory SQLite run in the trio thread (a worker thread would race the jumping
clock) and httpx's in-process MockTransport as the receiver, so backoff, Retry-After,
timeouts and max_age are checked exactly."""

import base64
import random

import httpx
import pytest
import trio

from broker.config.loader import WebhookEndpoint, WebhooksConfig
from broker.observability.metrics import Metrics
from broker.store import outbox_sql
from broker.webhooks import LocalClaims, Outbox, Sender
from broker.webhooks.events import json_data, user_key
from broker.webhooks.policy import backoff, retry_after, worth_retrying
from broker.webhooks.sender import LOOK_GAP
from tests.support.stores import InlineOutboxSqlite

SECRET = "whsec_" + base64.b64encode(b"virtual-time-secret-0123456789").decode()


def sender_for(handler, seed=7, endpoints=("app",), **settings):
    config = WebhooksConfig(**{"retry_base": 1.0, "retry_max": 60.0, "max_age": 600.0, "poll_interval": 1000.0,
                               "timeout": 10.0, "lease": 20.0, **settings})
    store = InlineOutboxSqlite()
    outbox = Outbox([WebhookEndpoint(url=f"http://{name}.test/hook", name=name, secrets=(SECRET,))
                     for name in endpoints], config, store, Metrics(), clock=trio.current_time)
    sender = Sender(outbox, LocalClaims(store), transport=httpx.MockTransport(handler), rng=random.Random(seed))
    return store, outbox, sender


async def online(outbox, user="alice"):
    await outbox.record("user.online", user_key(user), json_data({"userId": user}))


async def test_backoff_is_exponential_with_full_jitter_until_max_age_then_dead_letter(autojump_clock):
    attempts = []

    async def unavailable(request):
        attempts.append((trio.current_time(), request.headers["webhook-id"]))
        return httpx.Response(503)

    store, outbox, sender = sender_for(unavailable)
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        start = trio.current_time()
        await online(outbox)
        with trio.fail_after(10_000):
            while not (await store.read([outbox_sql.dead_letters_query(0, 10)]))[0]:
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    rng = random.Random(7)  # the sender's draws, in order
    # at once if the sender had not looked yet; else woken by the commit, after gathering others for LOOK_GAP
    assert attempts[0][0] in (pytest.approx(start), pytest.approx(start + LOOK_GAP))
    expected = [attempts[0][0]]
    while True:
        delay = rng.uniform(0, min(60.0, 1.0 * 2 ** (len(expected) - 1)))
        if expected[-1] + delay - start > 600:
            break
        expected.append(expected[-1] + delay)
    assert [t for t, _ in attempts] == pytest.approx(expected, abs=1e-6)
    assert len({webhook_id for _, webhook_id in attempts}) == 1
    (dead,) = await outbox.dead_letters()
    assert dead["attempts"] == len(expected) and "max_age" in dead["lastError"]


async def test_retry_after_is_waited_exactly(autojump_clock):
    attempts = []

    async def busy_then_ok(request):
        attempts.append(trio.current_time())
        return httpx.Response(429, headers={"Retry-After": "42"}) if len(attempts) == 1 else httpx.Response(200)

    store, outbox, sender = sender_for(busy_then_ok)
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        await online(outbox)
        with trio.fail_after(100):
            while len(attempts) < 2 or (await store.read([outbox_sql.depth_query()]))[0]:
                await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert attempts[1] - attempts[0] == pytest.approx(42.0)


async def test_a_hanging_receiver_times_out_after_timeout_and_is_tried_again(autojump_clock):
    attempts = []

    async def hang_once(request):
        attempts.append(trio.current_time())
        if len(attempts) == 1:
            await trio.sleep_forever()
        return httpx.Response(204)

    store, outbox, sender = sender_for(hang_once, timeout=10.0, retry_base=0.001)
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        await online(outbox)
        with trio.fail_after(100):
            while len(attempts) < 2 or (await store.read([outbox_sql.depth_query()]))[0]:
                await trio.sleep(0.5)  # until the second attempt's 204 has deleted the event
        nursery.cancel_scope.cancel()
    assert 10.0 <= attempts[1] - attempts[0] <= 10.001  # the timeout, then a jitter of at most 1 ms
    (timed_out,) = [e for e in outbox.metrics.webhook_attempts.collect()[0].samples
                    if e.labels["outcome"] == "failed" and e.name.endswith("_total")]
    assert timed_out.value == 1


async def test_concurrency_is_bounded_and_one_event_per_key_is_in_flight(autojump_clock):
    in_flight, most, seen = 0, 0, []

    async def slow(request):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        seen.append(request.headers["webhook-id"])
        await trio.sleep(5)
        in_flight -= 1
        return httpx.Response(200)

    store, outbox, sender = sender_for(slow, max_concurrency=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        for user in ("a", "b", "c", "d", "e", "f"):
            await online(outbox, user)
            await outbox.record("user.offline", user_key(user), json_data({"userId": user}))
        with trio.fail_after(1000):
            while len(seen) < 12 or in_flight:
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert most == 3
    # 12 events of 6 keys, 3 at a time, each key's two one after the other: 4 rounds of 5 s
    assert trio.current_time() >= 20


async def test_outbox_bound_drops_new_events_and_counts_them(autojump_clock):
    async def never(request):
        await trio.sleep_forever()

    store, outbox, sender = sender_for(never, outbox_max=3)
    for user in ("a", "b", "c", "d", "e"):
        await online(outbox, user)
    assert outbox.metrics.webhook_dropped.labels("app")._value.get() == 2
    assert (await store.read([outbox_sql.depth_query()]))[0] == [("app", 0, 3)]


async def test_events_of_an_endpoint_no_longer_configured_are_dead_lettered(autojump_clock):
    async def ok(request):
        return httpx.Response(200)

    store, outbox, sender = sender_for(ok)
    await store.write([outbox_sql.insert_statement([("gone", "user:a", "msg_1", "user.online", b"{}", 0.0)])])
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        with trio.fail_after(100):
            while not await outbox.dead_letters():
                await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    (dead,) = await outbox.dead_letters()
    assert dead["endpoint"] == "gone" and dead["lastError"] == "endpoint no longer configured"


def test_which_answers_are_retried():
    assert worth_retrying(None) and worth_retrying(429) and worth_retrying(503) and worth_retrying(408)
    assert not worth_retrying(400) and not worth_retrying(410) and not worth_retrying(301)


def test_full_jitter_stays_within_its_cap():
    rng = random.Random(1)
    for attempt in range(30):
        for _ in range(50):
            assert 0 <= backoff(attempt, 0.5, 30.0, rng) <= min(30.0, 0.5 * 2**attempt)


def test_retry_after_as_seconds_or_http_date():
    assert retry_after("120", 0.0) == 120.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == pytest.approx(10.0)
    assert retry_after("soon", 0.0) is None and retry_after(None, 0.0) is None

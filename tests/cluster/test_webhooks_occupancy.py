"""``job.occupied`` / ``job.vacated`` on two nodes sharing one redis-server and one
PostgreSQL store, with a real HTTP receiver: a job's watchers on every node count
together (the same user on two nodes too), rooms changing at the same instant on
two nodes give exactly one event per change, and a node killed with kill -9 while
holding the last watchers is vacated once by the survivor."""

from __future__ import annotations

import base64
import contextlib

import trio
import trio_websocket

from broker.config.loader import WebhookEndpoint
from broker.store import outbox_sql
from tests.support.clients import jobs_user, join
from tests.support.cluster import nodes, wait_feed_up
from tests.support.helpers import recv_until, send_json
from tests.support.services import redis_command, redis_server
from tests.support.webhook_receiver import webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"occupancy-secret-0123456789").decode()
JOB_EVENTS = ("job.occupied", "job.vacated")


def webhook_sections(receiver):
    return {"chat": {"single_login": False},  # a user may be connected to both nodes at once
            "webhooks": {"poll_interval": 0.1, "retry_base": 0.05, "retry_max": 0.2},
            "webhook": (WebhookEndpoint(url=receiver.url, name="app", events=JOB_EVENTS, secrets=(SECRET,)),)}


def job_events(receiver, job_id: str) -> list[str]:
    return [e["type"] for e in receiver.delivered(JOB_EVENTS) if e["data"]["jobId"] == job_id]


async def settled(*handles) -> None:
    """Until no node counts a room with members and every recorded event is sent."""
    with trio.fail_after(20):
        while any(h.broker.backplane.occupancy.occupied for h in handles) or \
                (await handles[0].broker.store.read([outbox_sql.depth_query()]))[0]:
            await trio.sleep(0.05)


async def leave(ws, job_id: str) -> None:
    await send_json(ws, {"type": "leave_job", "jobId": job_id})
    await recv_until(ws, lambda m: m.get("type") == "left")


async def test_the_same_user_on_two_nodes_occupies_once_and_vacates_when_the_second_leaves(tmp_path, pg_url):
    async with webhook_receiver() as receiver, redis_server(tmp_path) as redis, \
            nodes(tmp_path, redis.url, pg_url, 2, **webhook_sections(receiver)) as (a, b):
        async with jobs_user(a, "alice") as on_a, jobs_user(b, "alice") as on_b:
            joined = await join(on_a, "job-1", presence=True)
            assert joined["type"] == "joined", joined
            with trio.fail_after(10):
                await receiver.wait_for(lambda r: job_events(r, "job-1") == ["job.occupied"])
            assert (await join(on_b, "job-1"))["type"] == "joined"  # no presence: a watcher all the same
            await leave(on_a, "job-1")
            with trio.fail_after(10):  # a's room emptied and was decided: b still has alice
                while "job-1" in a.broker.backplane.occupancy.occupied or \
                        "job-1" not in b.broker.backplane.occupancy.occupied:
                    await trio.sleep(0.02)
            assert not (await a.broker.store.read([outbox_sql.depth_query()]))[0]  # nothing recorded meanwhile
            assert job_events(receiver, "job-1") == ["job.occupied"]
            await leave(on_b, "job-1")
            with trio.fail_after(10):
                await receiver.wait_for(lambda r: len(job_events(r, "job-1")) == 2)
        await settled(a, b)
    assert job_events(receiver, "job-1") == ["job.occupied", "job.vacated"]


async def test_two_users_joining_and_leaving_at_the_same_instant_on_two_nodes_give_one_event_each(tmp_path, pg_url):
    rounds = 12
    async with webhook_receiver() as receiver, redis_server(tmp_path) as redis, \
            nodes(tmp_path, redis.url, pg_url, 2, **webhook_sections(receiver)) as (a, b), \
            jobs_user(a, "bob") as bob, jobs_user(b, "carol") as carol:
        for round_ in range(rounds):
            async with trio.open_nursery() as together:  # both joins sent at once
                for ws in (bob, carol):
                    together.start_soon(join, ws, "job-2")
            with trio.fail_after(10):
                await receiver.wait_for(lambda r, n=round_ + 1: job_events(r, "job-2").count("job.occupied") == n)
            async with trio.open_nursery() as together:
                for ws in (bob, carol):
                    together.start_soon(leave, ws, "job-2")
            with trio.fail_after(10):
                await receiver.wait_for(lambda r, n=round_ + 1: job_events(r, "job-2").count("job.vacated") == n)
        await settled(a, b)
    assert job_events(receiver, "job-2") == ["job.occupied", "job.vacated"] * rounds


async def test_after_redis_restarted_empty_the_nodes_write_their_rooms_back(tmp_path, pg_url):
    async with webhook_receiver() as receiver, redis_server(tmp_path) as redis, \
            nodes(tmp_path, redis.url, pg_url, 2, **webhook_sections(receiver)) as (a, b), \
            jobs_user(a, "erin") as erin, jobs_user(b, "frank") as frank:
        for ws in (erin, frank):
            assert (await join(ws, "job-4"))["type"] == "joined"
        with trio.fail_after(10):
            await receiver.wait_for(lambda r: job_events(r, "job-4") == ["job.occupied"])
            while await redis_command(redis.port, "HLEN", "broker:watchers:job-4") != b":2\r\n":
                await trio.sleep(0.02)
        await redis.restart(wipe=True)  # everything Redis knew is gone
        for node in (a, b):
            await wait_feed_up(node)
        with trio.fail_after(10):  # both rooms written back on resubscribe, nothing announced
            while await redis_command(redis.port, "HLEN", "broker:watchers:job-4") != b":2\r\n":
                await trio.sleep(0.02)
        await leave(erin, "job-4")  # frank still watches on b
        with trio.fail_after(10):
            while "job-4" in a.broker.backplane.occupancy.occupied:
                await trio.sleep(0.02)
        await leave(frank, "job-4")
        with trio.fail_after(10):
            await receiver.wait_for(lambda r: len(job_events(r, "job-4")) == 2)
        await settled(a, b)
    assert job_events(receiver, "job-4") == ["job.occupied", "job.vacated"]


async def test_vacated_once_when_the_node_holding_the_last_watcher_is_killed(tmp_path, pg_url):
    from broker.auth.tokens import issue_token
    from tests.support.cluster import FAST_WEBHOOK_ENV, config_with_webhook, node_process_handles
    from tests.support.helpers import JWT_SECRET, recv_json

    async with webhook_receiver() as receiver, redis_server(tmp_path) as redis:
        config = config_with_webhook(tmp_path, receiver.url, ["job.occupied", "job.vacated"], SECRET)
        # lease 3 s: the victim may die before its 2xx for job.occupied is stored; the survivor
        # sends it again (same webhook-id) when the lease ends, then job.vacated after it
        env = {**FAST_WEBHOOK_ENV, "BROKER_CHAT_SINGLE_LOGIN": "false"}
        async with node_process_handles(tmp_path, redis.url, pg_url, ["victim", "survivor"], env,
                                        config) as processes:
            (victim, victim_port), (_, survivor_port) = processes
            jwt = issue_token(JWT_SECRET, "dave", 600, {"jobs": "*"})
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{survivor_port}/ws?token={jwt}") as early:
                await recv_json(early)  # the survivor's room of job-3 comes and goes before the victim's
                assert (await join(early, "job-3"))["type"] == "joined"
                with trio.fail_after(10):
                    await receiver.wait_for(lambda r: job_events(r, "job-3") == ["job.occupied"])
                async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{victim_port}/ws?token={jwt}") as ws:
                    await recv_json(ws)
                    assert (await join(ws, "job-3"))["type"] == "joined"
                    with trio.fail_after(10):  # the victim's room is counted (its script ran)
                        while await redis_command(redis.port, "HLEN", "broker:watchers:job-3") != b":2\r\n":
                            await trio.sleep(0.02)
                    await leave(early, "job-3")  # the victim's watcher is the last one now
                    victim.kill()  # SIGKILL: no leave, no goodbye
                    victim.wait()
                    with trio.fail_after(10), contextlib.suppress(trio_websocket.ConnectionClosed):
                        while True:
                            await ws.get_message()
            with trio.fail_after(20):  # swept within node_ttl (2 s) of the kill
                await receiver.wait_for(lambda r: len(job_events(r, "job-3")) == 2)
            with trio.move_on_after(2):  # a second sweeper would record it again: none does
                await receiver.wait_for(lambda r: len(job_events(r, "job-3")) > 2)
    assert job_events(receiver, "job-3") == ["job.occupied", "job.vacated"]

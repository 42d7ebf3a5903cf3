"""The backplane's Redis scripts on a real redis-server.

A cluster node loads its Redis scripts when it connects: a fresh Redis (no script
cached) never makes coredis log "Retry attempt 1 due to error: No matching script" at
node start, and every script is in Redis before the first client uses it.

The append script publishes only when given a channel (with ``min_replicas`` the node
publishes the same message after WAIT), and fences failovers: an append on a promoted
replica (a master with another replication ID than the last append's) starts a new
epoch, one on a master restarted on its AOF does not; the load script never moves the
epoch."""

from __future__ import annotations

import hashlib
import json
import secrets

import attrs
import coredis
import trio
import trio_websocket

from broker.auth.tokens import issue_token
from broker.cluster import lua
from broker.cluster.redis_jobs import _appended, notify_message
from broker.tools.httpclient import http_request
from tests.support.cluster import node_processes
from tests.support.helpers import API_KEY, JWT_SECRET, recv_until
from tests.support.redis_ha import redis_pair, wait_replica_caught_up
from tests.support.services import redis_command, redis_server

SCRIPTS = (lua.LOAD, lua.CLAIM_LOGIN, lua.RELEASE_LOGIN, lua.RECONCILE_LOGINS, lua.PRESENCE_SET,
           lua.PRESENCE_READ, lua.USERS_ONLINE)


async def test_node_start_logs_no_missing_script_retry(tmp_path, pg_url):
    async with redis_server(tmp_path) as redis:
        assert await redis_command(redis.port, "SCRIPT", "FLUSH") == b"+OK\r\n"  # as after a Redis restart
        async with node_processes(tmp_path, redis.url, pg_url, ["s1"], extra_env={"BROKER_LOG_LEVEL": "INFO"}) \
                as (port,):
            # loaded at connect, before any client used them (their first use would load them too)
            shas = [hashlib.sha1(script.encode()).hexdigest() for script in SCRIPTS]
            async with coredis.Redis.from_url(redis.url) as client:
                assert await client.script_exists(shas) == (True,) * len(SCRIPTS)
            # what a node does first: a user logs in (claim script), joins (load script), an event arrives
            token = issue_token(JWT_SECRET, "alice", 60, {"jobs": ["*"]})
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
                await ws.send_message(json.dumps({"type": "join_job", "jobId": "job-s"}))
                await recv_until(ws, lambda m: m.get("type") == "joined")
                published = await http_request(
                    "POST", f"http://127.0.0.1:{port}/api/publish", headers={"Authorization": f"Bearer {API_KEY}"},
                    body=json.dumps({"jobId": "job-s", "type": "job_status", "data": {"status": "RUNNING"}}).encode())
                assert published.status == 200, published.text
                event = await recv_until(ws, lambda m: m.get("type") == "job_status")
                assert event["seq"] == 1
        log = (tmp_path / "s1.log").read_text()
        assert "subscribed to" in log  # the log is the node's, at INFO
        assert "No matching script" not in log and "Retry attempt" not in log, log


# -- the append script's two modes and the epoch fence (lua.APPEND, lua.LOAD) --------

JOB_KEYS = ["t:epoch", "t:job:j:seq", "t:job:j:log", "t:job:j:status", "t:master"]


def events(*labels: str):
    import time

    from broker.protocols import JobEvent, job_event_parts

    return [job_event_parts(JobEvent("j", "job_status", {"status": label}), time.time()) for label in labels]


async def append(client, parts, channel: str = "t:jobs"):
    args = ["fresh-" + secrets.token_hex(4), 100, channel, "j", "t:idem:j|", 60_000]
    for event in parts:
        args += [event.type, event.head, event.tail, event.idempotency_key or ""]
    return await client.register_script(lua.APPEND)(keys=JOB_KEYS, args=args)


async def load(client):
    return await client.register_script(lua.LOAD)(keys=JOB_KEYS[:4], args=["fresh-" + secrets.token_hex(4), 100, ""])


async def next_message(pubsub) -> bytes:
    """The next published message's data (subscribe confirmations skipped)."""
    with trio.fail_after(5):
        while True:
            message = await pubsub.get_message()
            if message is not None and message["type"] in ("message", b"message"):
                return message["data"]


async def test_append_publishes_only_with_a_channel_and_the_node_sends_the_message_the_script_would(tmp_path):
    async with redis_server(tmp_path) as redis, coredis.Redis.from_url(redis.url) as client:
        async with client.pubsub(channels=["t:jobs"], ignore_subscribe_messages=True) as pubsub:
            first = events("A", "B")
            answer = await append(client, first)
            published = await next_message(pubsub)
            epoch, stored = _appended(answer, first)
            # what redis_jobs publishes after a WAIT is byte for byte the script's message
            assert notify_message("j", epoch, [e for e in stored if not isinstance(e, int)]) == published
            answer = await append(client, events("C"), channel="")  # min_replicas: stored, not published
            assert int(answer[1]) == 3
            await client.publish("t:jobs", b"marker")
            assert await next_message(pubsub) == b"marker"  # nothing came before it
        entries = await client.xrange("t:job:j:log")
        assert [entry.identifier for entry in entries] == [b"1-0", b"2-0", b"3-0"]  # all three stored


async def test_a_deferred_repeat_hands_back_its_first_event_for_the_caller_to_publish(tmp_path):
    """Without a channel (min_replicas) a repeat's first event may never have been
    published (its WAIT failed): the script returns it, so the caller publishes it once
    its own WAIT succeeds. With a channel the first attempt published it: nothing back."""
    from broker.cluster.redis_jobs import _again

    async with redis_server(tmp_path) as redis, coredis.Redis.from_url(redis.url) as client:
        first = events("A", "B")
        first[1] = attrs.evolve(first[1], idempotency_key="k-b")
        await append(client, first, channel="")  # stored (seqs 1, 2), not published
        repeat = events("B")
        repeat[0] = attrs.evolve(repeat[0], idempotency_key="k-b")
        answer = await append(client, repeat, channel="")
        (again,) = _again(answer)
        assert again.seq == 2 and again.type == "job_status" and b'"status":"B"' in again.payload
        assert notify_message("j", answer[0].decode(), [again]).split(b"\n")[2:] == [b"2", b"job_status", again.payload]
        assert _again(await append(client, repeat)) == []  # with a channel: published the first time


async def test_an_append_on_a_promoted_replica_starts_a_new_epoch_and_seqs_go_on(tmp_path):
    async with redis_pair(tmp_path) as (master, replica), coredis.Redis.from_url(master.url) as on_master, \
            coredis.Redis.from_url(replica.url) as on_replica:
        epoch = (await append(on_master, events("A")))[0]
        assert (await append(on_master, events("B")))[0] == epoch  # the same master: the same epoch
        await on_master.delete(["t:master"])  # written by a broker from before the fence: no master known
        assert (await append(on_master, events("C")))[0] == epoch  # remembered now, no failover assumed
        await wait_replica_caught_up(master, replica)
        assert await redis_command(replica.port, "REPLICAOF", "NO", "ONE") == b"+OK\r\n"  # a failover
        assert (await load(on_replica))[0] == epoch  # a read never moves the epoch
        answer = await append(on_replica, events("D"))
        new_epoch, first = answer[0], int(answer[1])
        assert new_epoch != epoch and first == 4  # (epoch, seq) never names two events; seqs continue
        assert (await append(on_replica, events("E")))[0] == new_epoch
        loaded = await load(on_replica)
        assert loaded[0] == new_epoch and int(loaded[1]) == 5 and len(loaded[2]) == 5


async def test_a_master_restarted_on_its_aof_keeps_its_epoch(tmp_path):
    async with redis_server(tmp_path) as redis:
        async with coredis.Redis.from_url(redis.url) as client:
            epoch = (await append(client, events("A")))[0]
        await redis.restart()  # kill -9, then the same port and AOF: a new replication ID, not promoted
        async with coredis.Redis.from_url(redis.url) as client:
            answer = await append(client, events("B"))
            assert answer[0] == epoch and int(answer[1]) == 2

"""The backplane's Redis scripts on a real redis-server.

A cluster node loads its Redis scripts when it connects: a fresh Redis (no script
cached) never makes coredis log "Retry attempt 1 due to error: No matching script" at
node start, and every script is in Redis before the first client uses it.

The append script publishes only when given a channel (with ``min_replicas`` the node
publishes the same message after WAIT), and fences failovers: an append to a new
master address starts a new epoch, a restart on the same address does not; the load
script never moves the epoch (a read may go out on a connection to the old master)."""

from __future__ import annotations

import hashlib
import json
import secrets

import coredis
import trio
import trio_websocket

from broker.auth.tokens import issue_token
from broker.cluster import lua
from broker.cluster.redis_jobs import _appended, notify_message
from broker.tools.httpclient import http_request
from tests.support.cluster import node_processes
from tests.support.helpers import API_KEY, JWT_SECRET, recv_until
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


async def append(client, parts, master: str = "10.0.0.1:6379", channel: str = "t:jobs"):
    args = ["fresh-" + secrets.token_hex(4), master, 100, channel, "j", "t:idem:j|", 60_000]
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


async def test_a_new_master_starts_a_new_epoch_and_seqs_go_on(tmp_path):
    async with redis_server(tmp_path) as redis, coredis.Redis.from_url(redis.url) as client:
        answer = await append(client, events("A"))
        epoch = answer[0]
        assert (await append(client, events("B")))[0] == epoch  # the same master: the same epoch
        assert (await load(client))[0] == epoch
        await client.delete(["t:master"])  # written by a broker from before the fence: no master known
        assert (await append(client, events("C")))[0] == epoch  # remembered now, no failover assumed
        assert await client.get("t:master") == b"10.0.0.1:6379"
        # a failover: the promoted replica (another address) writes next
        answer = await append(client, events("D"), master="10.0.0.2:6379")
        new_epoch, first = answer[0], int(answer[1])
        assert new_epoch != epoch and first == 4  # (epoch, seq) never names two events; seqs continue
        assert await client.get("t:master") == b"10.0.0.2:6379"
        loaded = await load(client)
        assert loaded[0] == new_epoch and int(loaded[1]) == 4 and len(loaded[2]) == 4
        await client.set("t:master", "10.0.0.9:6379")
        assert (await load(client))[0] == new_epoch  # a read never moves the epoch
        await client.set("t:master", "10.0.0.2:6379")
        # a write still naming the old address (a node that has not followed yet) is a change too
        assert (await append(client, events("E")))[0] not in (epoch, new_epoch)


async def test_redis_restarted_on_the_same_address_keeps_its_epoch(tmp_path):
    async with redis_server(tmp_path) as redis:
        async with coredis.Redis.from_url(redis.url) as client:
            epoch = (await append(client, events("A")))[0]
        await redis.restart()  # kill -9, then the same port and AOF
        async with coredis.Redis.from_url(redis.url) as client:
            answer = await append(client, events("B"))
            assert answer[0] == epoch and int(answer[1]) == 2

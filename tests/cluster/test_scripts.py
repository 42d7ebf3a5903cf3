"""A cluster node loads its Redis scripts when it connects: a fresh Redis (no script
cached) never makes coredis log "Retry attempt 1 due to error: No matching script" at
node start, and every script is in Redis before the first client uses it."""

from __future__ import annotations

import hashlib
import json

import coredis
import trio_websocket

from broker.auth.tokens import issue_token
from broker.cluster import lua
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

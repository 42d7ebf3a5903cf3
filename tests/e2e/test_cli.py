"""The ``broker`` command as a user runs it: real processes, real signals."""

import json
import os
import signal
import subprocess
import sys

import jwt
import pytest
import trio
import trio_websocket

from broker.tools.httpclient import http_request
from tests.support.helpers import API_KEY, JWT_SECRET, ROOT, expect_close, recv_json
from tests.support.processes import broker_cmd, wait_listening
from tests.support.services import free_port

pytestmark = pytest.mark.slow  # each test runs the broker command: a process start or more


def test_check_config_ok_and_bad(tmp_path):
    ok = broker_cmd("check-config", "--config", str(ROOT / "config.toml"))
    assert ok.returncode == 0 and "config OK" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[websocket]\nheartbeat_interval = 'often'\n")
    result = broker_cmd("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "[websocket] heartbeat_interval" in result.stderr
    env_bad = broker_cmd("check-config", "--config", str(ROOT / "config.toml"), env={"PORT": "x"})
    assert env_bad.returncode == 2 and "PORT" in env_bad.stderr


def test_check_config_resolves_proxy_credentials(tmp_path):
    config = tmp_path / "proxy.toml"
    config.write_text('[[proxy]]\npath = "/p"\nupstream = "wss://up.example/v1"\n'
                      'headers = { Authorization = "Bearer {env:UPSTREAM_TEST_KEY}" }\n')
    missing = broker_cmd("check-config", "--config", str(config), env={"UPSTREAM_TEST_KEY": ""})
    assert missing.returncode == 2 and "UPSTREAM_TEST_KEY is not set" in missing.stderr
    ok = broker_cmd("check-config", "--config", str(config), env={"UPSTREAM_TEST_KEY": "sk-123456"})
    assert ok.returncode == 0 and "proxy /p -> wss://up.example/v1" in ok.stdout and "sk-123456" not in ok.stdout


def test_token_prints_a_verifiable_jwt():
    result = broker_cmd("token", "--sub", "alice", "--ttl", "120", "--claim", 'jobs=["job-*"]', "--claim", "role=admin",
                        env={"BROKER_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 0
    claims = jwt.decode(result.stdout.strip(), JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["jobs"] == ["job-*"] and claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 120


def test_token_refuses_a_short_secret():
    result = broker_cmd("token", "--sub", "a", "--secret", "short")
    assert result.returncode == 2 and "32+" in result.stderr


async def test_serve_publish_and_sigterm_drain(tmp_path):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "WS_AUTH_TOKEN": "demo-token", "BROKER_API_KEY": API_KEY,
           "BROKER_DB_PATH": str(tmp_path / "db.sqlite3"), "HOST": "127.0.0.1"}
    process = subprocess.Popen([sys.executable, "-m", "broker", "serve", "--config", str(ROOT / "config.toml")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started_log = await wait_listening(process)
        health = await http_request("GET", f"http://127.0.0.1:{port}/health")
        assert health.status == 200
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?token=demo-token") as ws:
            assert (await recv_json(ws))["type"] == "connection_established"
            await ws.send_message('{"type":"join_job","jobId":"job-cli"}')
            assert (await recv_json(ws))["type"] == "joined"
            published = await trio.to_thread.run_sync(lambda: broker_cmd(
                "publish", "job-cli", "--status", "RUNNING", "--data", '{"currentStage":"PLAN"}', env=env))
            assert published.returncode == 0, published.stderr
            assert json.loads(published.stdout)["seq"] == 1
            for _ in range(2):  # a retried publish with its key: the first seq, one event
                again = await trio.to_thread.run_sync(lambda: broker_cmd(
                    "publish", "job-cli", "--status", "DONE", "--idempotency-key", "cli-1", env=env))
                assert again.returncode == 0 and json.loads(again.stdout)["seq"] == 2, again.stdout + again.stderr
            for args, expected in (
                (("groups", "create", "team", "--member", "alice", "--member", "bob"), ["alice", "bob"]),
                (("groups", "add", "team", "carol"), ["alice", "bob", "carol"]),
                (("groups", "remove", "team", "bob"), ["alice", "carol"]),
                (("groups", "show", "team"), ["alice", "carol"]),
            ):
                result = await trio.to_thread.run_sync(lambda a=args: broker_cmd(*a, env=env))
                assert result.returncode == 0, result.stderr
                assert json.loads(result.stdout)["members"] == expected
            mine = await trio.to_thread.run_sync(lambda: broker_cmd("groups", "of", "carol", env=env))
            assert json.loads(mine.stdout)["groups"] == ["team"]
            missing = await trio.to_thread.run_sync(lambda: broker_cmd("groups", "show", "nope", env=env))
            assert missing.returncode == 1 and json.loads(missing.stdout)["code"] == "NOT_FOUND"
            event = await recv_json(ws)
            assert event["data"]["status"] == "RUNNING" and event["data"]["currentStage"] == "PLAN"
            process.send_signal(signal.SIGTERM)
            assert await expect_close(ws, timeout=15) == 1001
        returncode = await trio.to_thread.run_sync(lambda: process.wait(timeout=20))
        assert returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    log = "".join(started_log) + process.stderr.read()
    assert "demo-token" not in log and API_KEY not in log
    assert "drained" in log


def test_publish_reports_unreachable_broker():
    result = broker_cmd("publish", "job-1", "--status", "X", "--url", f"http://127.0.0.1:{free_port()}",
                        env={"BROKER_API_KEY": API_KEY})
    assert result.returncode == 1 and "cannot reach" in result.stderr


def test_check_config_refuses_hmac_with_a_public_key_file(tmp_path):
    """``broker serve`` loads the config the same way; a Config built in code is
    refused when the broker starts (tests/unit/config/test_config.py)."""
    pem = tmp_path / "pub.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n")
    config = tmp_path / "hs.toml"
    config.write_text(f"[auth]\njwt_algorithms = ['HS256']\njwt_public_key_file = '{pem}'\n")
    result = broker_cmd("check-config", "--config", str(config), env={"BROKER_JWT_SECRET": JWT_SECRET})
    assert result.returncode == 2, result.stderr
    assert "[auth] jwt_public_key_file is set but jwt_algorithms = ['HS256']" in result.stderr
    assert JWT_SECRET not in result.stderr + result.stdout

"""A broker killed with SIGKILL loses no acknowledged chat message."""

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
import trio
import trio_websocket

from broker.auth.tokens import issue_token
from tests.support.helpers import JWT_SECRET, ROOT, recv_json
from tests.support.processes import wait_listening
from tests.support.services import free_port


def start_broker(port, db):
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "BROKER_DB_PATH": str(db),
           "BROKER_JWT_SECRET": JWT_SECRET, "BROKER_LIMITS_MESSAGE_RATE": "100000",
           "BROKER_LIMITS_MESSAGE_BURST": "100000"}
    return subprocess.Popen([sys.executable, "-m", "broker", "serve", "--config", str(ROOT / "config.toml")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def headers(user):
    return [(b"Authorization", f"Bearer {issue_token(JWT_SECRET, user, 600)}".encode())]


@pytest.mark.slow
async def test_sigkill_after_acks_loses_no_acknowledged_message(tmp_path):
    port, db = free_port(), tmp_path / "crash.sqlite3"
    broker = start_broker(port, db)
    acked: list[int] = []
    try:
        await wait_listening(broker)
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws", extra_headers=headers("alice")) as alice:
            await recv_json(alice)
            await recv_json(alice)  # offline_complete
            for i in range(300):  # pipelined: acks arrive while more are in flight
                await alice.send_message(json.dumps(
                    {"recvId": "bob", "chatType": 2, "content": f"m{i}", "contentType": 1}))
            while len(acked) < 150:
                message = await recv_json(alice)
                if message.get("type") == "chat_ack":
                    acked.append(message["msgId"])
            broker.send_signal(signal.SIGKILL)  # no drain, no flush: the process just dies
            broker.wait(timeout=10)
            # read what is still queued, then the drop: a client whose message queue
            # is full never sees the end of the stream and cannot close
            with trio.fail_after(10), contextlib.suppress(trio_websocket.ConnectionClosed):
                while True:
                    await alice.get_message()
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()
    assert broker.returncode == -signal.SIGKILL
    restarted = start_broker(port, db)
    try:
        await wait_listening(restarted)
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws", extra_headers=headers("bob")) as bob:
            await recv_json(bob)
            received = []
            while True:
                message = await recv_json(bob)
                if message.get("type") == "offline_complete":
                    break
                received.append(message)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=20)
    ids = [m["msgId"] for m in received]
    assert set(acked) <= set(ids), "an acknowledged message was lost"
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert [m["content"] for m in received[: len(acked)]] == [f"m{i}" for i in range(len(acked))]

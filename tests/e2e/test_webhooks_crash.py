"""kill -9 of a broker whose webhook receiver is down loses no event: after a restart
the outbox is delivered, each event with the webhook-id it was recorded with, and the
users it had online get their user.offline."""

import base64
import json
import os
import signal
import subprocess
import sys

import pytest
import standardwebhooks
import trio
import trio_websocket

from broker.auth.tokens import issue_token
from tests.support.helpers import JWT_SECRET, ROOT, recv_json
from tests.support.processes import wait_listening
from tests.support.services import free_port
from tests.support.webhook_receiver import webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"crash-test-secret-0123456789").decode()


def start_broker(config, port, db):
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "BROKER_DB_PATH": str(db),
           "BROKER_JWT_SECRET": JWT_SECRET, "BROKER_LIMITS_MESSAGE_RATE": "100000",
           "BROKER_LIMITS_MESSAGE_BURST": "100000", "BROKER_WEBHOOKS_RETRY_BASE": "0.05",
           "BROKER_WEBHOOKS_RETRY_MAX": "0.3", "BROKER_WEBHOOKS_POLL_INTERVAL": "0.2"}
    return subprocess.Popen([sys.executable, "-m", "broker", "serve", "--config", str(config)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def headers(user):
    return [(b"Authorization", f"Bearer {issue_token(JWT_SECRET, user, 600)}".encode())]


@pytest.mark.slow  # broker serve processes, kill -9
async def test_sigkill_with_the_receiver_down_then_restart_delivers_every_event(tmp_path):
    port, receiver_port, db = free_port(), free_port(), tmp_path / "crash.sqlite3"
    config = tmp_path / "config.toml"
    config.write_text((ROOT / "config.toml").read_text() + f"""
[[webhook]]
name = "backend"
url = "http://127.0.0.1:{receiver_port}/hooks"
events = ["chat.message", "user.online", "user.offline"]
secrets = ["{SECRET}"]
""")
    broker = start_broker(config, port, db)
    acked: list[int] = []
    try:
        await wait_listening(broker)
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws", extra_headers=headers("alice")) as alice:
            await recv_json(alice)
            await recv_json(alice)  # offline_complete
            for i in range(100):
                await alice.send_message(json.dumps({"recvId": "bob", "chatType": 2, "content": f"m{i}",
                                                     "contentType": 1}))
            while len(acked) < 100:
                message = await recv_json(alice)
                if message.get("type") == "chat_ack":
                    acked.append(message["msgId"])
            broker.send_signal(signal.SIGKILL)  # the receiver was never up: every event is in the outbox
            broker.wait(timeout=10)
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()
    assert broker.returncode == -signal.SIGKILL
    async with webhook_receiver(port=receiver_port) as receiver:
        restarted = start_broker(config, port, db)
        try:
            await wait_listening(restarted)
            with trio.fail_after(30):
                await receiver.wait_for(lambda r: len(r.delivered(("chat.message",))) >= len(acked)
                                        and r.delivered(("user.offline",)))
        finally:
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(timeout=20)
    messages = receiver.delivered(("chat.message",))
    assert [m["data"]["msgId"] for m in messages] == acked  # every acknowledged message, once each, in order
    assert [m["data"]["content"] for m in messages] == [f"m{i}" for i in range(100)]
    # alice was online when the broker died: the restart says so, after her user.online
    assert [(e["type"], e["data"]["userId"]) for e in receiver.delivered(("user.online", "user.offline"))] == [
        ("user.online", "alice"), ("user.offline", "alice")]
    for request in receiver.requests:
        standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)

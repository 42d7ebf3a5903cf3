"""A long lastSeq replay is paced by the connection's outbox (issue 20 section 3):
resuming over 2.4 MB of history (120 events of 20 KB) used to be cut with 4003 after
~60 events, and at the configured maximum a client needed hundreds of reconnects. Now
one connection gets all of it, in order, then goes live with nothing missed or doubled.

The client here reads through a 16 KB socket buffer, so the kernel takes little and the
outbox bound (256 KiB in these tests) is what the replay meets."""

import json
import random
import socket

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from broker import serve
from tests.support.helpers import make_config

EVENT_BYTES = 20_000


def big_event(k: int) -> dict:
    rng = random.Random(k)  # incompressible enough, and different per event
    return {"status": "RUNNING", "k": k, "blob": "".join(rng.choice("abcdefghij0123456789") for _ in range(EVENT_BYTES))}


class SlowReader:
    """A WebSocket client on a socket with a small receive buffer (in a worker thread)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host="127.0.0.1", target="/ws?token=demo-token")))
        self.pending: list = []
        self.parts: list[str] = []

    def next_message(self) -> dict | int:
        """The next JSON message, or the close code once the server closed."""
        while True:
            while self.pending:
                event = self.pending.pop(0)
                if isinstance(event, TextMessage):  # wsproto hands out a message in parts
                    self.parts.append(event.data)
                    if event.message_finished:
                        text, self.parts = "".join(self.parts), []
                        return json.loads(text)
                    continue
                if isinstance(event, CloseConnection):
                    return event.code
                assert isinstance(event, AcceptConnection)
            data = self.sock.recv(16384)
            if not data:
                return 1006
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())

    def send(self, message: dict) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=json.dumps(message))))


@pytest.mark.slow  # megabytes of replay: seconds of real time here
async def test_one_connection_gets_a_replay_larger_than_its_outbox_then_goes_live(nursery, tmp_path):
    broker = await nursery.start(serve, make_config(tmp_path, websocket={"outbox_max_bytes": 262144}))
    for k in range(1, 121):  # 2.4 MB of history, ten times the outbox bound
        await broker.publish("job-long", "job_status", big_event(k))
    client = await trio.to_thread.run_sync(SlowReader, broker.ports[0])
    try:
        assert (await trio.to_thread.run_sync(client.next_message))["type"] == "connection_established"
        await trio.to_thread.run_sync(client.send, {"type": "join_job", "jobId": "job-long", "lastSeq": 0})
        seqs, joined_at = [], None
        with trio.fail_after(60):
            while len(seqs) < 150 or joined_at is None:
                message = await trio.to_thread.run_sync(client.next_message)
                assert isinstance(message, dict), f"closed with {message} after {len(seqs)} events"
                if message.get("type") == "joined":
                    joined_at = message["seq"]
                    continue
                seqs.append(message["seq"])
                assert message["data"]["k"] == message["seq"]
                if len(seqs) == 10:  # published while it catches up: after the replay, once, in order
                    for k in range(121, 151):
                        await broker.publish("job-long", "job_status", big_event(k))
        assert seqs == list(range(1, 151))
        assert joined_at is not None and 120 <= joined_at <= 150
    finally:
        client.sock.close()


@pytest.mark.slow  # megabytes of replay: seconds of real time here
async def test_a_leave_stops_the_catch_up(nursery, tmp_path):
    broker = await nursery.start(serve, make_config(tmp_path, websocket={"outbox_max_bytes": 262144}))
    for k in range(1, 61):
        await broker.publish("job-long", "job_status", big_event(k))
    client = await trio.to_thread.run_sync(SlowReader, broker.ports[0])
    try:
        assert (await trio.to_thread.run_sync(client.next_message))["type"] == "connection_established"
        await trio.to_thread.run_sync(client.send, {"type": "join_job", "jobId": "job-long", "lastSeq": 0})
        await trio.to_thread.run_sync(client.send, {"type": "join_job", "jobId": "job-long", "lastSeq": 0})
        await trio.to_thread.run_sync(client.send, {"type": "leave_job", "jobId": "job-long"})
        seen, refused = [], None
        with trio.fail_after(30):
            while (message := await trio.to_thread.run_sync(client.next_message)).get("type") != "left":
                if message.get("type") == "error":
                    refused = message
                else:
                    seen.append(message["seq"])
        assert refused is not None and refused["code"] == "BAD_REQUEST" and "already joining" in refused["message"]
        assert seen == list(range(1, len(seen) + 1)) and len(seen) < 60  # stopped early, in order
        await broker.publish("job-long", "job_status", big_event(61))
        await trio.to_thread.run_sync(client.send, {"type": "ping"})
        with trio.fail_after(10):  # nothing of the job comes after left: the next message is the pong
            assert (await trio.to_thread.run_sync(client.next_message))["type"] == "pong"
    finally:
        client.sock.close()

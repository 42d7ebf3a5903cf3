"""HTTP answers have a send timeout (issue 20): a client that pipelines requests and
never reads is closed after ``[server] send_timeout`` without progress, and gives its
connection slot back, instead of holding it (and ``max_http_connections``) for ever.
Real broker over loopback, the client's receive buffer small."""

from __future__ import annotations

import socket

import pytest
import trio

from broker import serve
from broker.tools.httpclient import http_request
from tests.support.helpers import make_config


async def health(port: int) -> int:
    return (await http_request("GET", f"http://127.0.0.1:{port}/health")).status


async def test_a_client_that_never_reads_is_closed_and_its_slot_freed(tmp_path, nursery):
    config = make_config(tmp_path, server={"host": "127.0.0.1", "port": 0, "send_timeout": 0.5,
                                           "keepalive_timeout": 600.0},
                         limits={"max_http_connections": 1})
    broker = await nursery.start(serve, config)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", broker.port))
    try:
        request = b"GET /client/broker-client.mjs HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request * 50)  # about 50 x 20 KB of answers, never read
        # it holds the only HTTP slot: others get 503 until the broker closes it
        with trio.fail_after(10):
            while await health(broker.port) != 200:
                await trio.sleep(0.05)
        # what the client then reads ends before the 50 answers: the broker gave up on it
        received = b""
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        assert received.count(b"HTTP/1.1 200 OK") < 50
    finally:
        sock.close()


@pytest.mark.slow  # a second of real-time reading
async def test_a_slow_but_steady_reader_gets_every_answer(tmp_path, nursery):
    config = make_config(tmp_path, server={"host": "127.0.0.1", "port": 0, "send_timeout": 0.5})
    broker = await nursery.start(serve, config)
    client = await trio.open_tcp_stream("127.0.0.1", broker.port)
    async with client:
        await client.send_all(b"GET /client/broker-client.mjs HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
        received = b""
        with trio.fail_after(20):
            while received.count(b"HTTP/1.1 200 OK") < 20 or not received.endswith(b"\n"):
                chunk = await client.receive_some(4096)
                assert chunk, "closed early"
                received += chunk
                await trio.sleep(0.01)  # about 400 KB/s: slow, but making progress
        assert received.count(b"HTTP/1.1 200 OK") == 20

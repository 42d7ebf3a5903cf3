"""Plain HTTP connections are bounded before their head is read, and a full descriptor
table does not stop the broker: end to end over loopback.

Loopback has a whole /8: connections from 127.0.0.2 are another client address.
"""

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from broker import serve
from broker.tools.httpclient import http_request
from tests.support.helpers import DEMO_TOKEN, ROOT, RawClient, make_config

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def connect(port: int, source: str = "127.0.0.1") -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port, local_address=source)


async def read_all(stream: trio.abc.Stream) -> bytes:
    """Everything until the server closes."""
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    return received


async def health_from(port: int, source: str) -> bytes:
    stream = await connect(port, source)
    await stream.send_all(HEALTH)
    reply = await read_all(stream)
    await stream.aclose()
    return reply


async def answer_on_connect(port: int, source: str) -> bytes:
    """What a connection that sends nothing gets: an over-bound one is answered and
    closed at once. (One that sends its request first may meet a reset instead if the
    request arrives after the close.)"""
    stream = await connect(port, source)
    reply = await read_all(stream)
    await stream.aclose()
    return reply


async def settle_replies(streams: list[trio.SocketStream], wanted: int) -> dict[int, bytes]:
    """Wait until ``wanted`` of ``streams`` were answered and closed; {index: reply}."""
    replies: dict[int, bytes] = {}
    enough = trio.Event()

    async def watch(index: int, stream: trio.SocketStream) -> None:
        replies[index] = await read_all(stream)
        if len(replies) == wanted:
            enough.set()

    async with trio.open_nursery() as nursery:
        for index, stream in enumerate(streams):
            nursery.start_soon(watch, index, stream)
        with trio.fail_after(5):
            await enough.wait()
        nursery.cancel_scope.cancel()
    return replies


async def test_connections_over_the_address_bound_are_refused_at_once(tmp_path, nursery):
    config = make_config(tmp_path, server={"request_head_timeout": 60.0},
                         limits={"max_http_connections_per_ip": 4, "max_http_connections": 100})
    broker = await nursery.start(serve, config)
    streams = [await connect(broker.port) for _ in range(10)]  # silent: each waits for its head
    refused = await settle_replies(streams, 6)
    assert all(reply.startswith(b"HTTP/1.1 429") and reply.endswith(b"too many connections from this address\n")
               for reply in refused.values())
    assert (await answer_on_connect(broker.port, "127.0.0.1")).startswith(b"HTTP/1.1 429")
    assert (await health_from(broker.port, "127.0.0.2")).startswith(b"HTTP/1.1 200")  # another address: served
    held = [stream for index, stream in enumerate(streams) if index not in refused]
    for stream in held:  # the four held ones are served whenever their request comes
        await stream.send_all(HEALTH)
        assert (await read_all(stream)).startswith(b"HTTP/1.1 200")  # closed after: slot given back
    assert (await health_from(broker.port, "127.0.0.1")).startswith(b"HTTP/1.1 200")
    metrics = (await http_request("GET", f"http://127.0.0.1:{broker.port}/metrics")).text
    assert 'broker_connections_refused_total{bound="http_address"} 7.0' in metrics


async def test_connections_over_the_total_bound_get_503(tmp_path, nursery):
    config = make_config(tmp_path, limits={"max_http_connections_per_ip": 10, "max_http_connections": 3})
    broker = await nursery.start(serve, config)
    streams = [await connect(broker.port) for _ in range(4)]
    refused = await settle_replies(streams, 1)
    assert next(iter(refused.values())).startswith(b"HTTP/1.1 503")
    assert (await answer_on_connect(broker.port, "127.0.0.2")).startswith(b"HTTP/1.1 503")


async def test_trusted_proxies_and_websockets_are_not_held_to_the_address_bound(tmp_path, nursery):
    config = make_config(tmp_path, limits={"max_http_connections_per_ip": 2})
    broker = await nursery.start(serve, config)
    sockets = []
    for _ in range(4):  # a WebSocket gives its HTTP slot back once upgraded
        client = RawClient(await connect(broker.port))
        with trio.fail_after(5):
            assert (await client.handshake(headers=[(b"Authorization", b"Bearer " + DEMO_TOKEN.encode())]))[0] == 101
        sockets.append(client.stream)
    assert (await health_from(broker.port, "127.0.0.1")).startswith(b"HTTP/1.1 200")
    proxied = await nursery.start(serve, make_config(tmp_path / "proxied", server={"trusted_proxies": ("127.0.0.1",)},
                                                     limits={"max_http_connections_per_ip": 2}))
    sockets += [await connect(proxied.port) for _ in range(4)]  # a proxy carries many clients
    assert (await health_from(proxied.port, "127.0.0.1")).startswith(b"HTTP/1.1 200")
    for stream in sockets:
        await stream.aclose()


class BrokerProcess:
    """``broker serve`` in a child process with a small open-file limit; its log is read
    as it comes, so a test waits for the line it means."""

    def __init__(self, tmp_path: Path, open_files: int, **env: str) -> None:
        self.tmp_path = tmp_path
        self.open_files = open_files
        self.env = {**os.environ, "PORT": "0", "HOST": "127.0.0.1", "BROKER_DB_PATH": str(tmp_path / "b.sqlite3"),
                    "WS_AUTH_TOKEN": DEMO_TOKEN, **env}
        self.log = ""
        self.port = 0

    def _limit(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    async def __aenter__(self) -> "BrokerProcess":
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "broker", "serve", "--config", str(ROOT / "config.toml")], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=self._limit)
        line = await self.wait_for("broker listening on")
        self.port = int(line.rsplit("port ", 1)[1].split(",")[0])
        return self

    async def wait_for(self, text: str, timeout: float = 20) -> str:
        """The first log line (from the start) containing ``text``."""
        with trio.fail_after(timeout):
            while True:
                for line in self.log.splitlines(keepends=True):
                    if text in line and line.endswith("\n"):
                        return line
                chunk = await self.process.stderr.receive_some(65536)
                assert chunk, f"broker exited: {self.log}"
                self.log += chunk.decode()

    async def __aexit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            while chunk := await self.process.stderr.receive_some(65536):
                self.log += chunk.decode()
            await self.process.wait()


@pytest.mark.slow  # a second and more of real-time trickling
async def test_trickling_connections_from_one_address_cannot_starve_health(tmp_path):
    """The outside test's case at a small scale: 200 connections trickling a head from
    one address against a broker with 64 descriptors."""
    async with BrokerProcess(tmp_path, 64, BROKER_SERVER_REQUEST_HEAD_TIMEOUT="60",
                             BROKER_LIMITS_MAX_HTTP_CONNECTIONS_PER_IP="16") as broker:
        trickling = []
        for _ in range(200):
            stream = await connect(broker.port)
            trickling.append(stream)
        assert (await health_from(broker.port, "127.0.0.2")).startswith(b"HTTP/1.1 200")
        refused = await settle_replies(trickling, 200 - 16)
        assert all(reply.startswith(b"HTTP/1.1 429") for reply in refused.values())
        for stream in trickling:
            await stream.aclose()
    assert "Traceback" not in broker.log


@pytest.mark.slow
async def test_accept_survives_a_full_descriptor_table(tmp_path):
    """With the bounds above the descriptor limit, accept meets EMFILE: one warning, no
    traceback, and once descriptors are free again /health answers."""
    async with BrokerProcess(tmp_path, 64, BROKER_SERVER_REQUEST_HEAD_TIMEOUT="60",
                             BROKER_LIMITS_MAX_HTTP_CONNECTIONS_PER_IP="1000") as broker:
        flood = [await connect(broker.port) for _ in range(100)]  # the kernel queues what accept cannot take
        await broker.wait_for("accept failed, backing off")
        for stream in flood:
            await stream.aclose()
        assert (await health_from(broker.port, "127.0.0.2")).startswith(b"HTTP/1.1 200")
    assert "Traceback" not in broker.log
    assert broker.log.count("accept failed, backing off (") == 1, broker.log

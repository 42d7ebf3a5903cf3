"""Shared test helpers: broker configs, a raw wsproto client, JSON over trio-websocket."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from broker.config.loader import Config

ROOT = Path(__file__).resolve().parents[2]  # the checkout: config.toml, deploy/, README.md
JWT_SECRET = "test-jwt-secret-0123456789-abcdefghij"
API_KEY = "test-api-key-123"
DEMO_TOKEN = "demo-token"


def make_config(tmp_path, **sections: Any) -> Config:
    base = Config().replace(
        server={"host": "127.0.0.1", "port": 0, "close_timeout": 2.0},
        auth={"jwt_secret": JWT_SECRET, "env_token": DEMO_TOKEN},
        api={"keys": (API_KEY,)},
        store={"path": str(tmp_path / "broker.sqlite3")},
    )
    return base.replace(**sections) if sections else base


def postgres_config(tmp_path, pg_url: str, **sections: Any) -> Config:
    """:func:`make_config` on PostgreSQL at ``pg_url``; the SQLite path names a file that
    must never be created."""
    return make_config(tmp_path, **sections).replace(store={"url": pg_url, "path": str(tmp_path / "unused.sqlite3")})


# A test decorated with this runs once per store: its ``config`` fixture (tests/conftest.py)
# is SQLite in tmp_path, then a fresh PostgreSQL schema (marked ``postgres``).
on_each_store = pytest.mark.parametrize("config", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                                        indirect=True)


async def recv_json(ws: trio_websocket.WebSocketConnection, timeout: float = 5) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def recv_until(ws, predicate, timeout: float = 5) -> dict[str, Any]:
    """Skip messages until one satisfies ``predicate``."""
    with trio.fail_after(timeout):
        while True:
            message = json.loads(await ws.get_message())
            if predicate(message):
                return message


async def send_json(ws, message: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(message))


async def expect_close(ws, timeout: float = 5) -> int:
    """Read until the connection closes; the close code."""
    with trio.fail_after(timeout):
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            return exc.reason.code


class RawClient:
    """A WebSocket client on wsproto over any trio stream: the test decides whether it
    answers pings and when it reads."""

    def __init__(self, stream: trio.abc.Stream, answer_pings: bool = True) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.answer_pings = answer_pings
        self.pings = 0
        self._pending: list = []

    async def handshake(self, target: str = "/ws", headers: list[tuple[bytes, bytes]] | None = None):
        await self.stream.send_all(self.ws.send(Request(host="test", target=target, extra_headers=headers or [])))
        event = await self.next_event()
        if isinstance(event, RejectConnection):
            body = b""
            while True:
                data = await self.next_event()
                if isinstance(data, RejectData):
                    body += data.data
                    if data.body_finished:
                        break
            return event.status_code, body
        assert isinstance(event, AcceptConnection), event
        return 101, b""

    async def next_event(self):
        while not self._pending:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data if data else None)
            for event in self.ws.events():
                if isinstance(event, Ping):
                    self.pings += 1
                    if self.answer_pings:
                        await self.stream.send_all(self.ws.send(event.response()))
                    continue
                self._pending.append(event)
            if not data and not self._pending:
                raise trio.EndOfChannel
        return self._pending.pop(0)

    async def idle_until_pinged(self, count: int) -> None:
        """Send nothing of our own and answer pings until ``count`` have come in all;
        anything else arriving meanwhile is an error."""
        while self.pings < count:
            data = await self.stream.receive_some(65536)
            assert data, "the connection closed while idle"
            self.ws.receive_data(data)
            for event in self.ws.events():
                assert isinstance(event, Ping), f"{event} while idle"
                self.pings += 1
                await self.stream.send_all(self.ws.send(event.response()))

    async def next_json(self) -> dict[str, Any]:
        event = await self.next_event()
        assert isinstance(event, (TextMessage, BytesMessage)), event
        return json.loads(event.data)

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=json.dumps(message))))

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def expect_close(self) -> tuple[int, str]:
        """Skip messages until the close frame; answer it; return (code, reason)."""
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                try:
                    await self.stream.send_all(self.ws.send(event.response()))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                return event.code, event.reason


class MemoryStore:
    """The job part of the Store's interface, in memory: for virtual-time tests, where
    SQLite's worker threads would race the jumping clock."""

    def __init__(self) -> None:
        self.events: dict[str, list] = {}
        self.latest: dict[str, object] = {}
        self.loads = 0

    async def load_job(self, job_id, limit):
        from broker.store import JobSnapshot

        await trio.lowlevel.checkpoint()
        self.loads += 1
        events = self.events.get(job_id, [])[-limit:]
        latest = self.latest.get(job_id)
        last = max(events[-1].seq if events else 0, latest.seq if latest else 0)
        return JobSnapshot(last, list(events), latest)

    async def append_job_events(self, job_id, events, keep):
        await trio.lowlevel.checkpoint()
        stored = self.events.setdefault(job_id, [])
        stored.extend(events)
        del stored[:-keep]
        for event in events:
            if event.type == "job_status":
                self.latest[job_id] = event


def text_payloads(data):
    """The payloads of the whole server frames (unmasked) concatenated in ``data``."""
    payloads = []
    while data:
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        payloads.append(data[start:start + length])
        data = data[start + length:]
    return payloads


def socket_streams():
    """A loopback TCP pair with small kernel buffers, so back-pressure shows quickly."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), trio.SocketStream(trio.socket.from_stdlib_socket(b))


async def api_request(port: int, method: str, path: str, body: Any = None, key: str | None = API_KEY,
                      raw: bytes | None = None) -> tuple[int, Any]:
    """One server API request to the broker on ``port``: (status, the decoded JSON answer)."""
    from broker.tools.httpclient import http_request

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    response = await http_request(method, f"http://127.0.0.1:{port}{path}", body=data, headers=headers)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.status, json.loads(response.body)

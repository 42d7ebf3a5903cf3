"""Clients the tests drive a broker with: JWT users over trio-websocket, the HTTP API,
and hand-built bytes (a WebSocket frame, a publish request head) for tests that break
the rules on purpose. Every wait is under ``trio.fail_after`` (via recv_json/recv_until)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio_websocket

from broker.auth.tokens import issue_token
from broker.tools.httpclient import http_request

from .helpers import API_KEY, JWT_SECRET, recv_json, recv_until, send_json


def token(user: str, jobs: str | list[str] | None = None) -> str:
    """A JWT for ``user``, valid for an hour, allowing ``jobs`` (None: no ``jobs`` claim,
    so the default job policy)."""
    return issue_token(JWT_SECRET, user, 3600, {"jobs": jobs} if jobs is not None else None)


@asynccontextmanager
async def user(broker, name: str, **extra_headers: str) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """``name`` logged in with a JWT in the Authorization header, after its offline mail:
    ``ws.offline`` is the ``offline_complete`` message."""
    headers = [(b"Authorization", f"Bearer {token(name)}".encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra_headers.items()]
    async with trio_websocket.open_websocket_url(broker.url(), extra_headers=headers) as ws:
        established = await recv_json(ws)
        assert established["type"] == "connection_established" and established["userId"] == name
        ws.offline = await recv_until(ws, lambda m: m.get("type") == "offline_complete")  # type: ignore[attr-defined]
        yield ws


async def chat(ws, **message: Any) -> None:
    """Send one chat frame (its fields as keyword arguments)."""
    await send_json(ws, message)


async def api(broker, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request to the broker's HTTP API with the test API key: (status, JSON body)."""
    data = json.dumps(body).encode() if body is not None else b""
    response = await http_request(method, f"http://127.0.0.1:{broker.port}{path}", body=data,
                                  headers={"Authorization": f"Bearer {API_KEY}"})
    return response.status, json.loads(response.body)


@asynccontextmanager
async def jobs_user(broker, name: str, jobs: str | list[str] = "*") -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """``name`` with a JWT (token in the query) allowing ``jobs``, after connection_established."""
    async with jwt_ws(broker.port, name, jobs) as ws:
        yield ws


@asynccontextmanager
async def jwt_ws(port: int, name: str, jobs: str | list[str] = "*") -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A JWT user's connection to the node on ``port``, after connection_established."""
    jwt = issue_token(JWT_SECRET, name, 60, {"jobs": jobs})
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?token={jwt}") as ws:
        await recv_until(ws, lambda m: m["type"] == "connection_established")
        yield ws


async def join(ws, job_id: str, presence: bool = False) -> dict[str, Any]:
    """Join ``job_id``; the ``joined`` or ``error`` answer."""
    await send_json(ws, {"type": "join_job", "jobId": job_id, "presence": presence})
    return await recv_until(ws, lambda m: m["type"] in ("joined", "error"))


async def ask(ws, **scope: Any) -> dict[str, Any]:
    """Ask for presence (``jobId=`` or ``conversationId=``); the answer or the error."""
    await send_json(ws, {"type": "presence", **scope})
    return await recv_until(ws, lambda m: m["type"] in ("presence", "error"))


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """One client frame, built by hand so a test can break the rules."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        header = bytes((first, (0x80 if mask else 0) | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    else:
        header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def publish_head(body: bytes, *extra: bytes) -> bytes:
    """The head of a ``POST /api/publish`` with the test API key for ``body``."""
    return (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
            + b"".join(b"\r\n" + line for line in extra) + b"\r\n\r\n")

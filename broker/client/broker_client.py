"""A trio client for the broker: connect with a token, join jobs, iterate events.

::

    async with open_client("ws://localhost:8080/ws", token="...") as client:
        await client.join_job("job-123")
        async for event in client:
            print(event["type"], event.get("seq"))

It reconnects after a lost connection with exponential backoff and jitter (first
delay ``first_delay`` seconds, at most ``max_attempts`` attempts in a row) and stops
for good on 1008 (bad token), 4001 (replaced by a newer login), 4009 (disconnected by
the application through the server API) and 1009. After every
reconnect it re-joins its jobs with ``lastSeq``, and drops any job event whose seq it
has already yielded, so the caller sees every event of a job once, in order (as far
as the broker's history reaches; a ``HISTORY_GAP`` error is yielded when it does not).

Short-lived tokens: give ``get_token`` (an async function returning a fresh token). It
is called for every connect, and when the broker announces ``token_expiring`` the
client sends the new token on the open connection (``{"type":"auth"}``), so nothing is
interrupted. If the token expires anyway (close 4005), the client reconnects at once
with a fresh one. Without ``get_token``, 4005 stops it (its only token has expired).

When the client gives up, iteration raises :class:`ClientClosed` with the last close
code. Leaving the ``async with`` closes the socket (1000) and stops every task.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio_websocket

from ..transport import trio_websocket_patch  # noqa: F401  (answers pings only while open: trio-websocket #184)

log = logging.getLogger("broker.client")

FINAL_CLOSE_CODES = frozenset({1002, 1007, 1008, 1009, 4001, 4009})  # docs/PROTOCOL.md section 6: stop
TOKEN_EXPIRED = 4005  # reconnect at once with a fresh token (get_token), or stop without one


@attrs.frozen
class ReconnectPolicy:
    first_delay: float = 3.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.5  # each delay is stretched by up to this fraction, at random
    max_attempts: int = 5  # consecutive failed attempts before giving up

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before reconnect attempt ``attempt`` (1-based)."""
        base = min(self.max_delay, self.first_delay * self.multiplier ** (attempt - 1))
        return base * (1 + self.jitter * rng.random())


class ClientClosed(Exception):
    """The client stopped: a final close code, or reconnect attempts exhausted."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"connection closed ({code} {reason or ''})".strip())
        self.code = code
        self.reason = reason


class BrokerClient:
    """Created by :func:`open_client`."""

    def __init__(self, url: str, token: str | None, token_in: str, policy: ReconnectPolicy,
                 ssl_context: ssl.SSLContext | None, buffer: int, rng: random.Random,
                 get_token: Callable[[], Awaitable[str]] | None = None) -> None:
        if token_in not in ("header", "query", "frame"):
            raise ValueError("token_in must be header, query or frame")
        self.url = url
        self._token = token
        self._token_in = token_in
        self._get_token = get_token
        self.refreshes = 0  # tokens renewed on an open connection (token_refreshed)
        self.policy = policy
        self._ssl_context = ssl_context
        self._rng = rng
        self.last_seq: dict[str, int | None] = {}  # joined jobs -> last seq yielded
        self.connection_info: dict[str, Any] | None = None
        self.connects = 0
        self.close_code: int | None = None
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._events_in, self._events_out = trio.open_memory_channel[dict[str, Any]](buffer)
        self._final: ClientClosed | None = None
        self.connected = trio.Event()

    # -- the caller's side -------------------------------------------------

    async def join_job(self, job_id: str, last_seq: int | None = None) -> None:
        """Join now if connected, and again (with lastSeq) after every reconnect."""
        self.last_seq[job_id] = last_seq if last_seq is not None else self.last_seq.get(job_id)
        await self._send_if_connected(self._join_message(job_id))

    async def leave_job(self, job_id: str) -> None:
        self.last_seq.pop(job_id, None)
        await self._send_if_connected({"type": "leave_job", "jobId": job_id})

    async def send(self, message: dict[str, Any]) -> None:
        """Send any message now; raises ClientClosed if not connected."""
        if self._ws is None:
            raise ClientClosed(self.close_code, "not connected")
        await self._ws.send_message(json.dumps(message))

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        async for event in self._events_out:
            yield event
        if self._final is not None:
            raise self._final

    async def next_event(self) -> dict[str, Any]:
        try:
            return await self._events_out.receive()
        except trio.EndOfChannel:
            raise self._final or ClientClosed(self.close_code, None) from None

    # -- the connection loop -----------------------------------------------

    def _join_message(self, job_id: str) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "join_job", "jobId": job_id}
        if self.last_seq.get(job_id) is not None:
            message["lastSeq"] = self.last_seq[job_id]
        return message

    async def _send_if_connected(self, message: dict[str, Any]) -> None:
        if self._ws is not None:
            try:
                await self._ws.send_message(json.dumps(message))
            except trio_websocket.ConnectionClosed:
                pass  # sent again after the reconnect

    async def run(self) -> None:
        attempt = 0
        async with self._events_in:
            while True:
                code, reason, established = await self._connect_once()
                self.close_code = code
                if code in FINAL_CLOSE_CODES or (code == TOKEN_EXPIRED and self._get_token is None):
                    self._final = ClientClosed(code, reason)
                    return
                if code == TOKEN_EXPIRED and established:
                    attempt = 0
                    log.info("token expired (4005): reconnecting now with a fresh token")
                    continue
                attempt = 1 if established else attempt + 1
                if attempt > self.policy.max_attempts:
                    self._final = ClientClosed(code, f"gave up after {self.policy.max_attempts} attempts ({reason})")
                    return
                delay = self.policy.delay(attempt, self._rng)
                log.info("connection lost (%s %s); reconnecting in %.1fs", code, reason or "", delay)
                await trio.sleep(delay)

    async def _connect_once(self) -> tuple[int | None, str | None, bool]:
        """One connection's life. Returns (close code, reason, whether it was established)."""
        url, headers = self.url, []
        if self._get_token is not None:
            try:
                self._token = await self._get_token()
            except Exception as exc:  # noqa: BLE001 - the caller's function: report, back off, try again
                return None, f"get_token failed: {type(exc).__name__}", False
        if self._token and self._token_in == "header":
            headers.append((b"Authorization", f"Bearer {self._token}".encode()))
        elif self._token and self._token_in == "query":
            url += ("&" if "?" in url else "?") + "token=" + self._token
        established = False
        try:
            async with trio_websocket.open_websocket_url(url, extra_headers=headers, ssl_context=self._ssl_context) as ws:
                if self._token and self._token_in == "frame":
                    await ws.send_message(json.dumps({"type": "auth", "token": self._token}))
                first = json.loads(await ws.get_message())
                if first.get("type") != "connection_established":
                    await self._events_in.send(first)
                    await ws.get_message()  # the close that follows
                    return 1008, first.get("message"), False
                established = True
                self.connects += 1
                self.connection_info = first
                self._ws = ws
                self.connected.set()
                for job_id in list(self.last_seq):
                    await ws.send_message(json.dumps(self._join_message(job_id)))
                closed: trio_websocket.ConnectionClosed | None = None
                async with trio.open_nursery() as refreshing:  # a refresh runs beside the reading
                    try:
                        while True:
                            event = json.loads(await ws.get_message())
                            kind = event.get("type")
                            if kind == "token_expiring" and self._get_token is not None:
                                refreshing.start_soon(self._refresh, ws)
                            elif kind == "token_refreshed":
                                self.refreshes += 1
                            if self._accept(event):
                                await self._events_in.send(event)
                    except trio_websocket.ConnectionClosed as exc:
                        closed = exc  # raised outside the nursery: not wrapped in a group
                        refreshing.cancel_scope.cancel()
                assert closed is not None
                raise closed
        except trio_websocket.ConnectionClosed as exc:
            return (exc.reason.code if exc.reason else None), (exc.reason.reason if exc.reason else None), established
        except trio_websocket.ConnectionRejected as exc:
            return None, f"HTTP {exc.status_code}", established
        except (trio_websocket.HandshakeError, OSError, trio.BrokenResourceError) as exc:
            return None, f"{type(exc).__name__}: {exc}", established
        finally:
            self._ws = None

    async def _refresh(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Answer token_expiring with a fresh token on the open connection. If it cannot
        be had, the connection runs until it expires (4005) and the reconnect tries again."""
        assert self._get_token is not None
        try:
            self._token = await self._get_token()
            await ws.send_message(json.dumps({"type": "auth", "token": self._token}))
        except trio_websocket.ConnectionClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - the caller's function
            log.warning("get_token failed for a refresh: %s", type(exc).__name__)

    def _accept(self, event: dict[str, Any]) -> bool:
        """Drop job events already yielded; remember the seq of the rest."""
        seq = event.get("seq")
        data = event.get("data")
        if isinstance(seq, int) and isinstance(data, dict) and isinstance(data.get("jobId"), str):
            job_id = data["jobId"]
            if job_id in self.last_seq:
                last = self.last_seq[job_id]
                if last is not None and seq <= last:
                    return False
                self.last_seq[job_id] = seq
        return True


@asynccontextmanager
async def open_client(url: str, token: str | None = None, *, token_in: str = "header",
                      reconnect: ReconnectPolicy = ReconnectPolicy(), ssl_context: ssl.SSLContext | None = None,
                      buffer: int = 1000, seed: int | None = None,
                      get_token: Callable[[], Awaitable[str]] | None = None) -> AsyncIterator[BrokerClient]:
    """A connected-or-reconnecting client, for the body of the ``async with``.
    ``buffer`` bounds the events held for the caller: while it is full the client stops
    reading (and a broker may then close it as a slow consumer; it resumes with lastSeq)."""
    client = BrokerClient(url, token, token_in, reconnect, ssl_context, buffer, random.Random(seed), get_token)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()

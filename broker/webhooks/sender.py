"""The sender actor: takes due events from the outbox and POSTs them, signed.

Bounds and policies:

* at most ``[webhooks] max_concurrency`` requests in flight on this node, all
  endpoints together (as many connections, over httpx clients of LANE_SIZE
  connections each; a request goes to the client with the fewest in flight, which
  always has a free connection); beyond it, due events wait in the outbox, never in
  memory. One client's pool does work per request that grows with its requests times
  its connections: with 16 in one pool a delivery cost 1.7 ms of the event loop's CPU,
  with lanes of 4 it costs 1.0 ms (receiver in another process);
* one attempt lasts at most ``timeout`` (connect to the last byte read; at most
  ``max_response_bytes`` of the answer are read); a hanging receiver costs one
  slot for that long, and only its own keys wait;
* a 2xx deletes the event; a timeout, a connection error, 408/425/429 or a 5xx
  schedules another attempt (:mod:`.policy`: full jitter, or Retry-After) with the
  same ``webhook-id``; any other answer, an attempt that would start after
  ``max_age``, or an endpoint no longer configured dead-letters it (a metric and one
  log line; ``GET /api/webhooks/failed``);
* redirects are never followed (a receiver cannot send the broker elsewhere), and
  nothing logged names a secret or the URL (it may carry a token): the endpoint's
  name, the status, the error's class.

The sender runs beside the rooms and never blocks them: they only write outbox rows
and set :attr:`Outbox.wake`. Cancelling it cancels the requests in flight; their
events stay pending and are sent again (at least once).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import trio

from ..store import StoreError
from ..store import outbox_sql as sql
from .claim import Claims, OutboxRow
from .outbox import Outbox
from .policy import next_delay, worth_retrying
from .signing import signed_headers

log = logging.getLogger("broker.webhooks")

USER_AGENT = "trio-broker-webhooks"
LANE_SIZE = 4  # connections per httpx client: its pool's work per request grows with requests x connections
LOOK_GAP = 0.01  # woken by a commit, the sender waits this long first: a burst of commits costs one look


class Sender:
    def __init__(self, outbox: Outbox, claims: Claims, transport: httpx.AsyncBaseTransport | None = None,
                 rng: random.Random | None = None) -> None:
        """``transport``: httpx's (tests may pass an in-process one); ``rng``: the jitter."""
        self.outbox = outbox
        self.claims = claims
        self.config = outbox.config
        self.transport = transport
        self.rng = rng or random.Random()
        self.active = 0  # requests in flight
        self.delivered = 0
        self.next_look = 0.0
        self._lane_active: list[int] = []  # requests in flight per client

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send until cancelled. A store error is logged and the look is tried again
        after ``poll_interval``."""
        config = self.config
        lanes = -(-config.max_concurrency // LANE_SIZE)
        per_lane = -(-config.max_concurrency // lanes)
        limits = httpx.Limits(max_connections=per_lane, max_keepalive_connections=per_lane)
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(httpx.AsyncClient(
                follow_redirects=False, timeout=httpx.Timeout(config.timeout), limits=limits,
                transport=self.transport, trust_env=False)) for _ in range(lanes)]
            self._lane_active = [0] * lanes
            nursery = await stack.enter_async_context(trio.open_nursery())
            await self._loop(clients, nursery, task_status)

    async def _loop(self, clients: list[httpx.AsyncClient], nursery: trio.Nursery,
                    task_status: trio.TaskStatus[None]) -> None:
        config = self.config
        task_status.started()
        last_count = -config.poll_interval
        while True:
            self.outbox.wake = trio.Event()
            now = self.outbox.clock()
            wait = config.poll_interval
            try:
                if now - last_count >= config.poll_interval:
                    last_count = now
                    await self._count()
                free = config.max_concurrency - self.active
                if free > 0:  # else nothing can start before a slot frees (which wakes this loop)
                    for row in await self.claims.take(now, free):
                        self.active += 1
                        lane = min(range(len(clients)), key=self._lane_active.__getitem__)  # has a free slot
                        self._lane_active[lane] += 1
                        nursery.start_soon(self._deliver, clients[lane], lane, row)
                    wait = await self._until_due(now)
            except StoreError as exc:
                log.warning("webhooks: outbox not read: %s", exc)
            with trio.move_on_after(wait) as idle:
                await self.outbox.wake.wait()
            if not idle.cancelled_caught and self.outbox.recorded:
                await trio.sleep(LOOK_GAP)
            self.outbox.recorded = False

    async def _count(self) -> None:
        await self.outbox.refresh_depth()
        gauge = self.outbox.metrics.webhook_queue
        for name in self.outbox.endpoints:
            gauge.labels(name, "pending").set(self.outbox.pending[name])
            gauge.labels(name, "dead").set(self.outbox.dead[name])

    async def _until_due(self, now: float) -> float:
        """Seconds until the next retry falls due, at most ``poll_interval`` (other
        nodes record events too)."""
        (rows,) = await self.outbox.store.read([sql.next_due_query(now)])
        due = rows[0][0] if rows else None
        if due is None:
            return self.config.poll_interval
        return max(0.0, min(self.config.poll_interval, float(due) - now))

    async def _deliver(self, client: httpx.AsyncClient, lane: int, row: OutboxRow) -> None:
        """One attempt and its outcome. Nothing here fails the sender: a store error or
        a bug leaves the event pending (sent again, at least once), logged."""
        try:
            statement = await self._attempt(client, row)
            try:
                await self.outbox.store.write([statement])
            except StoreError as exc:
                log.warning("webhook %s: outcome of %s not stored: %s", row.endpoint, row.webhook_id, exc)
        except Exception:
            log.exception("webhook %s: sending %s failed", row.endpoint, row.webhook_id)
        finally:
            self.active -= 1
            self._lane_active[lane] -= 1
            self.claims.release(row.id)
            self.outbox.wake.set()  # a slot is free, and the key's next event may be due

    async def _attempt(self, client: httpx.AsyncClient, row: OutboxRow) -> Any:
        """One POST of ``row``; the statement that records its outcome."""
        outbox, config, metrics = self.outbox, self.config, self.outbox.metrics
        endpoint = outbox.endpoints.get(row.endpoint)
        if endpoint is None:
            return self._dead(row, "endpoint no longer configured")
        now = outbox.clock()
        headers = signed_headers(outbox.keys[row.endpoint], row.webhook_id, int(now), row.body)
        headers.update({"content-type": "application/json", "user-agent": USER_AGENT})
        status: int | None = None
        retry_after: str | None = None
        error = ""
        with trio.move_on_after(config.timeout) as attempt:
            try:
                async with client.stream("POST", endpoint.url, content=row.body, headers=headers) as response:
                    status, retry_after = response.status_code, response.headers.get("retry-after")
                    read = 0
                    chunks = response.aiter_raw() if not response.is_stream_consumed else _nothing()
                    async for chunk in chunks:
                        read += len(chunk)
                        if read >= config.max_response_bytes:
                            break
            except httpx.HTTPError as exc:
                error = type(exc).__name__  # its text may name the URL
            except OSError as exc:
                error = type(exc).__name__
        if attempt.cancelled_caught and status is None:
            error = "timeout"
        if status is not None and 200 <= status < 300:
            metrics.webhook_attempts.labels(row.endpoint, "delivered").inc()
            self.delivered += 1
            return sql.delivered_statement(row.id)
        reason = f"HTTP {status}" if status is not None else error or "no answer"
        metrics.webhook_attempts.labels(row.endpoint, "failed").inc()
        if not worth_retrying(status):
            return self._dead(row, reason + (" (redirects are not followed)" if status and 300 <= status < 400 else ""))
        now = outbox.clock()
        delay = next_delay(row.attempts, status, retry_after, now, config.retry_base, config.retry_max, self.rng)
        if now + delay - row.created_at > config.max_age:
            return self._dead(row, f"{reason}; max_age reached after {row.attempts + 1} attempts")
        log.info("webhook %s: %s %s failed (%s), attempt %d; next in %.1fs", row.endpoint, row.event_type,
                 row.webhook_id, reason, row.attempts + 1, delay)
        return sql.retry_later_statement(row.id, now + delay, reason)

    def _dead(self, row: OutboxRow, reason: str) -> Any:
        self.outbox.metrics.webhook_dead.labels(row.endpoint).inc()
        log.warning("webhook %s: %s %s dead-lettered: %s", row.endpoint, row.event_type, row.webhook_id, reason)
        return sql.dead_letter_statement(row.id, reason)


async def _nothing() -> AsyncIterator[bytes]:
    """No body to read (a transport that read it already, e.g. httpx's MockTransport)."""
    return
    yield b""

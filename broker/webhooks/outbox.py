"""The outbox: where events are recorded (the :class:`~.sink.EventSink` the rooms
and logins use), what is queued (depth, for metrics and ``/api/stats``), and the dead
letters (``/api/webhooks/failed``).

The bound (``[webhooks] outbox_max``, rows per endpoint, pending and dead together):
an endpoint at its bound gets no new rows; each event left out is counted
(``broker_webhook_events_dropped_total{endpoint}``) and logged at most once a minute
per endpoint. Chat, jobs and logins are never refused or slowed because a receiver
is down: the outbox is what gives. The depth is counted by the sender at every look
(``refresh_depth``) and raised as rows are recorded, so it is close, not exact, in a
cluster (other nodes record too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ..cluster.interface import UserTransition
from ..config.loader import WebhookEndpoint, WebhooksConfig
from ..observability.metrics import Metrics
from ..store import AnyStore
from ..store import outbox_sql as sql
from ..store.sql import Statement
from .events import (
    EVENT_TYPES,
    USER_OFFLINE,
    USER_ONLINE,
    event_body,
    json_data,
    new_webhook_id,
    transition_webhook_id,
    user_key,
)
from .signing import secret_key

log = logging.getLogger("broker.webhooks")

DROP_LOG_INTERVAL = 60.0
GAP_FILL_MAX = 16  # a user's unrecorded transitions written before a newer one, at most


class Outbox:
    """Records events for the endpoints that take them; see the module docstring."""

    def __init__(self, endpoints: Sequence[WebhookEndpoint], config: WebhooksConfig, store: AnyStore,
                 metrics: Metrics, clock: Callable[[], float] = time.time, single_node: bool = False) -> None:
        """``single_node``: this process is the only one with users (no cluster): it keeps
        who was announced online, so that after a crash :meth:`offline_after_restart`
        sends their ``user.offline`` (in a cluster, the other nodes' sweep does)."""
        self.endpoints = {endpoint.key: endpoint for endpoint in endpoints}
        self.keys = {endpoint.key: [secret_key(s) for s in endpoint.secrets] for endpoint in endpoints}
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock  # wall-clock seconds (stored: due times outlive the process)
        self._takers = {kind: [e.key for e in endpoints if "*" in e.events or kind in e.events]
                        for kind in EVENT_TYPES}
        self.pending = dict.fromkeys(self.endpoints, 0)
        self.dead = dict.fromkeys(self.endpoints, 0)
        self._dropped_logged: dict[str, float] = {}
        self.track_online = single_node and self.wants(USER_OFFLINE)
        self.wake = trio.Event()  # set when rows were committed (or a slot freed): the sender looks
        self.recorded = False  # rows were committed since the sender's last look

    # -- the sink ------------------------------------------------------------

    def wants(self, event_type: str) -> bool:
        return bool(self._takers.get(event_type))

    def statements(self, event_type: str, key: str, data: bytes) -> list[Statement]:
        body = event_body(event_type, data, self.clock())
        rows = [(e, k, new_webhook_id(), t, b, now) for e, k, _, t, b, now in self._rows(event_type, key, body, "")]
        return [sql.insert_statement(rows)] if rows else []

    def committed(self) -> None:
        self.recorded = True
        self.wake.set()

    async def record(self, event_type: str, key: str, data: bytes) -> None:
        statements = self.statements(event_type, key, data)
        if self.track_online and event_type in (USER_ONLINE, USER_OFFLINE):
            statements.append(sql.online_statement(key.removeprefix("user:"), event_type == USER_ONLINE))
        if statements:
            await self.store.write(statements)
            self.committed()

    async def record_transitions(self, transitions: Sequence[UserTransition]) -> None:
        """One node (``seq`` 0): each transition as :meth:`record` writes it. A cluster:
        per user, its newest transition ``n`` and those before it down to the newest
        recorded (at most GAP_FILL_MAX back, never at or below its ``floor``; their
        types alternate back from ``n``), each inserted only if above the newest
        recorded (:func:`~broker.store.outbox_sql.user_transition_statements`): a
        transition whose recorder is slow or dead is written by the next one's, before
        it, and a redo writes nothing. Raises StoreError."""
        statements: list[Statement] = []
        newest: dict[str, UserTransition] = {}
        for transition in transitions:
            if transition.seq == 0:
                kind = USER_ONLINE if transition.online else USER_OFFLINE
                user_id = transition.user_id
                statements += self.statements(kind, user_key(user_id), json_data({"userId": user_id}))
                if self.track_online:
                    statements.append(sql.online_statement(user_id, transition.online))
            elif transition.user_id not in newest or transition.seq > newest[transition.user_id].seq:
                newest[transition.user_id] = transition
        for user_id, last in newest.items():
            rows = []
            for seq in range(max(last.floor + 1, last.seq - GAP_FILL_MAX + 1), last.seq + 1):
                online = last.online if (last.seq - seq) % 2 == 0 else not last.online
                kind = USER_ONLINE if online else USER_OFFLINE
                body = event_body(kind, json_data({"userId": user_id, "seq": seq}), self.clock())
                rows += [(seq, endpoint, key, webhook_id, kind, body, now)
                         for endpoint, key, webhook_id, kind, body, now in self._rows(kind, user_key(user_id), body,
                                                                                    transition_webhook_id(user_id, seq))]
            statements += sql.user_transition_statements(user_id, rows, last.seq)
        if statements:
            await self.store.write(statements)
            self.committed()

    def _rows(self, event_type: str, key: str, body: bytes,
              webhook_id: str) -> list[tuple[str, str, str, str, bytes, float]]:
        """One row per endpoint taking ``event_type`` with room in its bound (:meth:`statements`)."""
        now = self.clock()
        rows = []
        for endpoint in self._takers.get(event_type, ()):
            if self.pending[endpoint] + self.dead[endpoint] >= self.config.outbox_max:
                self._drop(endpoint, event_type)
                continue
            self.pending[endpoint] += 1
            rows.append((endpoint, key, webhook_id, event_type, body, now))
        return rows

    def _drop(self, endpoint: str, event_type: str) -> None:
        self.metrics.webhook_dropped.labels(endpoint).inc()
        now = self.clock()
        if now - self._dropped_logged.get(endpoint, -DROP_LOG_INTERVAL) >= DROP_LOG_INTERVAL:
            self._dropped_logged[endpoint] = now
            log.warning("webhook %s: outbox full (%d rows): %s event dropped (and others, counted in "
                        "broker_webhook_events_dropped_total)", endpoint, self.config.outbox_max, event_type)

    async def offline_after_restart(self) -> int:
        """``user.offline`` for every user announced online when this process last
        stopped without saying goodbye (kill -9), in one transaction with forgetting
        them; the count. Call before clients connect. Raises StoreError."""
        if not self.track_online:
            return 0
        (rows,) = await self.store.read([sql.online_users_query()])
        statements = []
        for (user_id,) in rows:
            statements += self.statements(USER_OFFLINE, user_key(user_id), json_data({"userId": user_id}))
            statements.append(sql.online_statement(user_id, False))
        if statements:
            await self.store.write(statements)
            self.committed()
            log.info("webhooks: user.offline for %d users online when the broker last stopped", len(rows))
        return len(rows)

    # -- depth and dead letters -------------------------------------------------

    async def refresh_depth(self) -> None:
        """Count the rows of each endpoint again (raises StoreError)."""
        (rows,) = await self.store.read([sql.depth_query()])
        pending = dict.fromkeys(self.endpoints, 0)
        dead = dict.fromkeys(self.endpoints, 0)
        for endpoint, state, count in rows:
            (dead if state == sql.DEAD else pending)[endpoint] = int(count)
        self.pending, self.dead = pending, dead

    def dead_total(self) -> int:
        return sum(self.dead.values())

    def webhook_stats(self) -> dict[str, int]:
        """For ``/api/stats`` (:class:`broker.web.stats.WebhookStats`): events waiting,
        this node's failed attempts (each retried or dead-lettered), dead letters."""
        stats = self.stats()
        return {"queueDepth": stats["pending"], "failures": stats["failedAttempts"], "deadLetters": stats["dead"]}

    def stats(self) -> dict[str, Any]:
        """Queue depth (as of the sender's last count, every ``poll_interval``) and this
        node's counts since it started, per endpoint and in all: what ``/api/stats``
        shows (sync, no query)."""
        metrics = self.metrics
        endpoints: list[dict[str, Any]] = [{
            "name": name,
            "pending": self.pending.get(name, 0),
            "dead": self.dead.get(name, 0),
            "delivered": int(metrics.webhook_attempts.labels(name, "delivered")._value.get()),
            "failedAttempts": int(metrics.webhook_attempts.labels(name, "failed")._value.get()),
            "deadLettered": int(metrics.webhook_dead.labels(name)._value.get()),
            "dropped": int(metrics.webhook_dropped.labels(name)._value.get()),
        } for name in self.endpoints]
        totals = {key: sum(e[key] for e in endpoints)
                  for key in ("pending", "dead", "delivered", "failedAttempts", "deadLettered", "dropped")}
        return {"endpoints": endpoints, **totals}

    async def dead_letters(self, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters after ``after_id``, oldest first (raises StoreError)."""
        (rows,) = await self.store.read([sql.dead_letters_query(after_id, limit)])
        return [{"id": r[0], "endpoint": r[1], "key": r[2], "webhookId": r[3], "type": r[4],
                 "createdAt": r[5], "attempts": r[6], "lastError": r[7]} for r in rows]

    async def resend(self, row_id: int) -> bool:
        """Make dead letter ``row_id`` pending again (same webhook-id); False if there is
        no such dead letter. Raises StoreError."""
        (found,) = await self.store.read([sql.dead_letter_query(row_id)])
        if not found:
            return False
        await self.store.write([sql.resend_statement(row_id, self.clock())])
        self.committed()
        return True

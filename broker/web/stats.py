"""A node's stats for ``GET /api/stats`` (and, in a cluster, for the other nodes).

Counts are read when asked; the per-second rates come from samples of the
deliveries and publishes counters that the control loop takes every second
(:func:`~broker.cluster.control.sample_forever`): the rate is the change over the
last RATE_WINDOW seconds of samples (or fewer, just after start).

Webhook figures come from a :class:`WebhookStats` provider when one is set
(``webhooks``); until then they are reported as null.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import trio

from ..observability.metrics import Metrics

RATE_WINDOW = 5.0  # seconds of samples a rate is computed over
SAMPLES_KEPT = 16


class WebhookStats(Protocol):
    """What the webhook sender reports: events waiting in its outbox, deliveries that
    failed (retried), and dead letters."""

    def webhook_stats(self) -> dict[str, int]: ...


class NodeStatsSource:
    """This node's stats: ``sample()`` every second (from the control loop),
    ``snapshot()`` on demand."""

    def __init__(self, node_id: str, metrics: Metrics, connections: Callable[[], int], users: Callable[[], int],
                 job_rooms: Callable[[], int], conversations: Callable[[], int]) -> None:
        self.node_id = node_id
        self._metrics = metrics
        self._connections = connections
        self._users = users
        self._job_rooms = job_rooms
        self._conversations = conversations
        self._started = time.time()
        self._samples: deque[tuple[float, float, float, float]] = deque(maxlen=SAMPLES_KEPT)
        self.webhooks: WebhookStats | None = None  # set by the webhook sender when there is one

    def _counters(self) -> tuple[float, float, float]:
        registry = self._metrics.registry
        return (registry.get_sample_value("broker_messages_out_total") or 0.0,
                registry.get_sample_value("broker_events_published_total") or 0.0,
                registry.get_sample_value("broker_chat_messages_total") or 0.0)

    def sample(self) -> None:
        self._samples.append((trio.current_time(), *self._counters()))

    def _rates(self) -> tuple[float, float, float]:
        if not self._samples:
            return 0.0, 0.0, 0.0
        now = trio.current_time()
        current = (now, *self._counters())
        oldest = next((s for s in self._samples if now - s[0] <= RATE_WINDOW + 0.5), self._samples[-1])
        elapsed = now - oldest[0]
        if elapsed <= 0:
            return 0.0, 0.0, 0.0
        return tuple(round((current[i] - oldest[i]) / elapsed, 2) for i in (1, 2, 3))  # type: ignore[return-value]

    def snapshot(self) -> dict[str, Any]:
        deliveries, publishes, chat_messages = self._rates()
        webhooks: dict[str, int | None] = {"queueDepth": None, "failures": None, "deadLetters": None}
        if self.webhooks is not None:
            webhooks.update(self.webhooks.webhook_stats())
        return {
            "node": self.node_id,
            "connections": self._connections(),
            "users": self._users(),
            "jobRooms": self._job_rooms(),
            "conversations": self._conversations(),
            "deliveriesPerSecond": deliveries,
            "publishesPerSecond": publishes,
            "chatMessagesPerSecond": chat_messages,
            "webhooks": webhooks,
            "uptimeSeconds": round(time.time() - self._started, 1),
            "timestamp": round(time.time() * 1000),
        }

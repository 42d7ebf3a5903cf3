"""Prometheus metrics, one registry per broker (several brokers in one process stay apart)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.node = Gauge("broker_node_info", "This broker process: its node id (1 while running)", ["node"],
                          registry=r)
        self.connections_total = Counter(
            "broker_connections_total", "Client connections accepted (before auth), by transport", ["transport"],
            registry=r
        )
        self.connections_open = Gauge("broker_connections_open", "Client connections open now, by transport",
                                      ["transport"], registry=r)
        self.rooms_open = Gauge("broker_rooms_open", "Room actors running now", ["kind"], registry=r)
        self.messages_in = Counter("broker_messages_in_total", "Messages received from clients, by transport",
                                   ["transport"], registry=r)
        self.messages_out = Counter(
            "broker_messages_out_total", "Messages delivered to clients (one per recipient)", registry=r
        )
        self.events_published = Counter("broker_events_published_total", "Job events published", registry=r)
        self.chat_messages = Counter("broker_chat_messages_total", "Chat messages stored", registry=r)
        self.evictions = Counter(
            "broker_evictions_total", "Connections closed by the broker, by reason", ["reason"], registry=r
        )
        self.auth_failures = Counter("broker_auth_failures_total", "Refused WebSocket authentications", registry=r)
        self.bad_requests = Counter("broker_bad_requests_total", "Client messages answered with an error", ["code"], registry=r)
        self.connections_refused = Counter(
            "broker_connections_refused_total", "Connections closed on accept, by the bound they met", ["bound"],
            registry=r
        )
        self.http_requests = Counter(
            "broker_http_requests_total", "Plain HTTP requests, by route and status", ["route", "status"], registry=r
        )

        self.proxy_sessions = Counter("broker_proxy_sessions_total", "Proxy sessions started", ["route"], registry=r)
        self.proxy_open = Gauge("broker_proxy_sessions_open", "Proxy sessions open now", ["route"], registry=r)
        self.proxy_frames = Counter("broker_proxy_frames_total", "Messages relayed", ["route", "direction"], registry=r)
        self.proxy_bytes = Counter("broker_proxy_bytes_total", "Payload bytes relayed", ["route", "direction"],
                                   registry=r)
        self.proxy_closes = Counter("broker_proxy_closes_total", "Proxy legs closed, by side and code",
                                    ["route", "side", "code"], registry=r)

        # webhooks (broker/webhooks)
        self.webhook_attempts = Counter("broker_webhook_attempts_total", "Webhook requests sent, by endpoint and outcome",
                                        ["endpoint", "outcome"], registry=r)
        self.webhook_dead = Counter("broker_webhook_dead_letters_total", "Webhook events dead-lettered", ["endpoint"],
                                    registry=r)
        self.webhook_dropped = Counter("broker_webhook_events_dropped_total",
                                       "Webhook events not recorded: the endpoint's outbox was full", ["endpoint"],
                                       registry=r)
        self.webhook_queue = Gauge("broker_webhook_queue_depth", "Webhook outbox rows, by endpoint and state",
                                   ["endpoint", "state"], registry=r)

    def track(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Let ``gauge`` read its value at scrape time."""
        gauge.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Webhooks: events of the broker POSTed to the application's backend, signed per
Standard Webhooks, durable (an outbox in the store), at least once, in order per
key, once per cluster, and never in a client's way.

Layer: above the store and the cluster (it writes the outbox and, in a cluster,
claims from PostgreSQL), below jobs, chat and sessions, which record events through
:class:`EventSink` and never see the sender.

* :mod:`.events`, :mod:`.signing`, :mod:`.policy`: pure (bodies, signatures, retries);
* :mod:`.outbox`: recording, depth, dead letters; :mod:`.claim`: taking due events;
* :mod:`.sender`: the actor that POSTs them.
"""

from __future__ import annotations

from ..config.loader import Config
from ..observability.metrics import Metrics
from ..store import AnyStore
from .claim import LocalClaims as LocalClaims
from .claim import SharedClaims as SharedClaims
from .outbox import Outbox as Outbox
from .sender import Sender as Sender
from .sink import EventSink as EventSink
from .sink import NoWebhooks as NoWebhooks


def open_webhooks(config: Config, store: AnyStore, metrics: Metrics, node: str,
                  clustered: bool = False) -> tuple[Outbox, Sender] | None:
    """The outbox and its sender when ``[[webhook]]`` endpoints are configured (else
    None). A store shared by nodes (PostgreSQL) is claimed from with leases
    (:class:`SharedClaims`), SQLite's in this process (:class:`LocalClaims`)."""
    if not config.webhook:
        return None
    outbox = Outbox(config.webhook, config.webhooks, store, metrics, single_node=not clustered)
    claims = SharedClaims(store, node, config.webhooks.lease) if store.allocates_msg_ids else LocalClaims(store)
    return outbox, Sender(outbox, claims)

"""``user.offline`` for users whose last connection died with its node (kill -9, a
lost machine): nobody released their logins, so no session can tell.

Every node sweeps every ``node_ttl / 5``; the backplane gives each such user to one
sweeper in the cluster (:meth:`~broker.cluster.Logins.sweep_dead_nodes`), which
records the event. A dead node's liveness key expires within 0.6 ``node_ttl``, so the
event is recorded within ``node_ttl``. If the sweeper's store write fails, the event
is logged as lost (the backplane has forgotten those entries already).
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from ..cluster.interface import BackplaneUnavailable
from ..store import StoreError
from .events import USER_OFFLINE, json_data, user_key
from .sink import EventSink

log = logging.getLogger("broker.webhooks")


class DeadNodes(Protocol):
    async def sweep_dead_nodes(self) -> list[str]: ...


async def sweep_dead_nodes(logins: DeadNodes, sink: EventSink, interval: float) -> None:
    """Sweep until cancelled; a backplane that cannot be reached is tried next time."""
    while True:
        await trio.sleep(interval)
        try:
            users = await logins.sweep_dead_nodes()
        except BackplaneUnavailable as exc:
            log.debug("dead nodes not swept: %s", exc)
            continue
        for user_id in users:
            try:
                await sink.record(USER_OFFLINE, user_key(user_id), json_data({"userId": user_id}))
            except StoreError as exc:
                log.error("user.offline of %s (its node died) not recorded: %s", user_id, exc)

"""The backplane: job sequencing, history and live events, and logins, shared by the
nodes of a cluster (Redis) or kept in this process (the default)."""

from __future__ import annotations

from ..config.loader import ClusterConfig
from ..hub.connections import Hub
from ..store import AnyStore
from .interface import Backplane as Backplane
from .interface import BackplaneUnavailable as BackplaneUnavailable
from .interface import ChatFeed as ChatFeed
from .interface import Evictor as Evictor
from .interface import JobFeed as JobFeed
from .interface import JobHistory as JobHistory
from .interface import LoginClaim as LoginClaim
from .interface import PendingAppend as PendingAppend
from .local import LocalBackplane as LocalBackplane


def open_backplane(config: ClusterConfig, store: AnyStore, hub: Hub, idempotency_ttl: float) -> Backplane:
    """The Redis backplane when ``redis_url`` is set (coredis, the ``cluster`` extra),
    else the in-process one. ``idempotency_ttl``: seconds a publish's idempotency key
    is remembered per job (``[jobs] idempotency_ttl``; 0: not at all)."""
    if not config.redis_url:
        return LocalBackplane(store, hub, idempotency_ttl)
    from .redis import RedisBackplane  # only clusters need coredis installed

    return RedisBackplane(config, idempotency_ttl)

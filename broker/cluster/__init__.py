"""The backplane: what the nodes of a cluster share, split by role: the job log and
its live feed, presence in jobs, logins (single login, limits, who is online) and the
chat bus. On Redis for a cluster (:mod:`.redis`), else in this process (:mod:`.local`,
on SQLite or PostgreSQL). Each component gets the role it uses (:mod:`.interface`).
Operator control (a user's connections, disconnect and ban, node stats) is
:mod:`.control`, beside the backplane."""

from __future__ import annotations

from ..config.loader import ClusterConfig
from ..hub.connections import Hub
from ..store import AnyStore
from .control import Control as Control
from .control import LocalControl
from .interface import Backplane as Backplane
from .interface import BackplaneUnavailable as BackplaneUnavailable
from .interface import ChatBus as ChatBus
from .interface import ChatFeed as ChatFeed
from .interface import Evictor as Evictor
from .interface import JobFeed as JobFeed
from .interface import JobHistory as JobHistory
from .interface import JobLog as JobLog
from .interface import JobOccupancy as JobOccupancy
from .interface import LoginClaim as LoginClaim
from .interface import Logins as Logins
from .interface import PendingAppend as PendingAppend
from .interface import Presence as Presence
from .interface import PresenceFeed as PresenceFeed
from .interface import UserTransition as UserTransition
from .local import LocalBackplane as LocalBackplane
from .local import LocalJobLog as LocalJobLog
from .local import LocalLogins as LocalLogins
from .local import LocalOccupancy as LocalOccupancy
from .local import LocalPresence as LocalPresence


def open_backplane(config: ClusterConfig, store: AnyStore, hub: Hub, idempotency_ttl: float) -> Backplane:
    """The Redis backplane when the node is part of a cluster (``redis_url``, or
    ``redis_sentinels``: coredis, the ``cluster`` extra), else the in-process one. ``idempotency_ttl``: seconds a publish's idempotency key
    is remembered per job (``[jobs] idempotency_ttl``; 0: not at all)."""
    if not config.enabled:
        return LocalBackplane(store, hub, idempotency_ttl)
    from .redis import RedisBackplane  # only clusters need coredis installed

    return RedisBackplane(config, idempotency_ttl)


def open_control(config: ClusterConfig, backplane: Backplane, hub: Hub) -> Control:
    """The operator control for ``backplane``: Redis's when the node is part of a cluster
    (beside :func:`open_backplane`, so :mod:`.control` never imports :mod:`.redis_control`,
    which builds on it)."""
    if not backplane.clustered:
        return LocalControl(hub, backplane.node_id)
    from .redis import RedisBackplane
    from .redis_control import RedisControl

    # with Sentinel, the control client follows the master the backplane's locator finds
    locator = backplane.node.locator if isinstance(backplane, RedisBackplane) else None
    return RedisControl(config, backplane.node_id, backplane.instance, hub, locator)

"""``user.offline`` for users whose last connection died with its node (kill -9, a
lost machine): nobody released their logins, so no session can tell. And any user
transition whose recorder did not acknowledge it within its lease (its node died
between the backplane's decision and the outbox write, or the write failed).

Every node sweeps every ``node_ttl / 5``; the backplane hands each such transition to
one sweeper at a time, with a lease of ``node_ttl``
(:meth:`~broker.cluster.Logins.sweep_dead_nodes`). Two phases: the sweeper writes the
outbox, then acknowledges (:meth:`~broker.cluster.Logins.transitions_recorded`). A
sweeper that fails or dies in between leaves the transition pending: the next sweep
after the lease hands it out again, and the outbox records a transition at most once
(its webhook-id is made from the user and the transition's number), so the event is
delivered at least once with one webhook-id. A dead node's liveness key expires within
0.6 ``node_ttl``, so its users' ``user.offline`` is recorded within ``node_ttl`` (a
failed write: one lease later).

Every node of a cluster sweeps, webhooks or not: the same sweep takes a dead node's
login entries and sets out of Redis (without user webhooks it hands out nothing).
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from ..cluster.interface import BackplaneUnavailable, UserTransition
from ..store import StoreError
from .sink import EventSink

log = logging.getLogger("broker.webhooks")


class DeadNodes(Protocol):
    async def sweep_dead_nodes(self) -> list[UserTransition]: ...

    async def transitions_recorded(self, transitions: list[UserTransition]) -> None: ...


async def sweep_dead_nodes(logins: DeadNodes, sink: EventSink, interval: float) -> None:
    """Sweep until cancelled; a backplane that cannot be reached is tried next time.
    Cancelled between a sweep and its writes: those transitions are handed out again
    after their lease."""
    while True:
        await trio.sleep(interval)
        await sweep_once(logins, sink)


async def sweep_once(logins: DeadNodes, sink: EventSink) -> int:
    """One sweep: record the transitions handed to this node, one store write per user
    (each write locks its user's row first), acknowledging those written. Returns how
    many were written."""
    try:
        transitions = await logins.sweep_dead_nodes()
    except BackplaneUnavailable as exc:
        log.debug("dead nodes not swept: %s", exc)
        return 0
    by_user: dict[str, list[UserTransition]] = {}
    for transition in transitions:
        by_user.setdefault(transition.user_id, []).append(transition)
    written = 0
    for user_id, theirs in by_user.items():
        try:
            await sink.record_transitions(theirs)
        except StoreError as exc:
            log.warning("user transitions of %s not recorded yet: %s; handed out again after their lease",
                        user_id, exc)
            continue
        await logins.transitions_recorded(theirs)
        written += len(theirs)
    return written

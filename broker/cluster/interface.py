"""The backplane: what the broker shares between nodes, behind one small interface.

Two implementations, chosen at start (``[cluster] redis_url``): :class:`LocalBackplane`
(one process, today's behaviour: jobs in the SQLite store, logins in the hub) and
:class:`RedisBackplane` (a node of a cluster). The rest of the broker sees only this:

* **job log**: sequencing and durable history of job events (``load_job``,
  ``read_job_after``, ``send_job_events``: appends one caller sends are applied in
  send order and answered later, so a room may have several in flight), plus live
  events of other nodes pushed into :class:`JobFeed` (merge by seq; ``resync_all``
  after a gap in the feed);
* **presence**: who is in a job on any node (``presence_update_nowait``,
  ``job_presence``), who is online (``users_online``); changes reach rooms through
  :meth:`JobFeed.presence_changed`;
* **logins**: cluster-wide single login and per-user connection counts
  (``claim_login``/``release_login``; evictions of local sessions go to ``evict``);
* **health**: ``problem()`` is why this node should not take traffic (or None).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs
import trio

from ..protocols import JobEventParts
from ..store import StoredEvent, StoreError


class BackplaneUnavailable(StoreError):
    """The shared state could not be reached: nothing of the request was applied, or
    (a reply lost in flight) it may have been; never acknowledged either way."""


@attrs.frozen
class JobHistory:
    """A job's state: ``events`` are the newest ones (or those after a seq), oldest first."""

    epoch: str | None  # None: single node (the store never loses its seqs)
    last_seq: int
    events: list[StoredEvent]
    latest_status: StoredEvent | None


Appended = list[StoredEvent | int]  # per event sent: stored, or (an idempotency key's repeat) the first one's seq


class PendingAppend:
    """An append sent to the job log: answered once, later, with (epoch, per event:
    the stored event, or, for an event whose idempotency key was already stored within
    its TTL, the seq it was first stored with and nothing stored) or the StoreError
    that says it is not known to be stored."""

    def __init__(self) -> None:
        self._answered = trio.Event()
        self._value: tuple[str | None, Appended] | None = None
        self._error: Exception | None = None

    @property
    def answered(self) -> bool:
        return self._answered.is_set()

    def resolve(self, epoch: str | None, stored: Appended) -> None:
        if not self.answered:
            self._value = (epoch, stored)
            self._answered.set()

    def fail(self, error: Exception) -> None:
        if not self.answered:
            self._error = error
            self._answered.set()

    async def wait(self) -> None:
        await self._answered.wait()

    def result(self) -> tuple[str | None, Appended]:
        """The answer (raises its error); only once ``answered``."""
        if self._error is not None:
            raise self._error
        assert self._value is not None, "not answered yet"
        return self._value


@attrs.frozen
class LoginClaim:
    admitted: bool  # False: the user has its connection limit (cluster-wide) already
    replaced: list[str] = attrs.field(factory=list)  # session ids (of this node) to close with REPLACED


class JobFeed(Protocol):
    """Where a backplane pushes job events published by other nodes (sync, never blocks)."""

    def deliver_remote(self, job_id: str, epoch: str, events: list[StoredEvent]) -> None: ...

    def resync_all(self) -> None:
        """The feed may have lost events (reconnect): every room reads what it missed."""
        ...

    def presence_changed(self, job_ids: list[str]) -> None:
        """Who is in these jobs may have changed (anywhere): rooms with watchers look again."""
        ...

    def presence_changed_all(self) -> None:
        """A node may have died: every room with watchers looks again."""
        ...


class ChatFeed(Protocol):
    """Where a backplane pushes chat batches and group changes of other nodes (sync)."""

    def deliver_remote_chat(self, data: bytes) -> None: ...

    def remote_group_changed(self, group_id: str) -> None: ...


class Evictor(Protocol):
    def evict_replaced(self, session_ids: list[str]) -> None:
        """Close these local sessions: a newer login of their user (on any node) owns it now."""
        ...


class Backplane(Protocol):
    node_id: str
    instance: str  # this run of the node (a restarted node is a new instance)
    clustered: bool

    def open(self, feed: JobFeed, evictor: Evictor, chat: ChatFeed) -> AbstractAsyncContextManager[None]:
        """Background work (the Redis connection loop) for the duration of the block;
        the broker serves clients inside it."""
        ...

    def problem(self) -> str | None: ...

    async def load_job(self, job_id: str, limit: int) -> JobHistory: ...

    async def read_job_after(self, job_id: str, after_seq: int, limit: int) -> JobHistory: ...

    async def read_job_page(self, job_id: str, after_seq: int, limit: int, keep: int) -> JobHistory:
        """Events after ``after_seq`` still in history (the newest ``keep``), oldest
        first, at most ``limit`` (the server API's history pages)."""
        ...

    async def send_job_events(self, job_id: str, events: list[JobEventParts], keep: int, last_seq: int,
                              on_answer: Callable[[], None]) -> PendingAppend:
        """Send ``events`` to be sequenced and stored, without waiting for the answer:
        appends one caller sends one after another are applied in that order. An event
        whose idempotency key is remembered for the job (``[jobs] idempotency_ttl``,
        recorded atomically with the event it came with) is not stored again. The
        :class:`PendingAppend` gets (epoch, :data:`Appended`) once they are durable, or a
        StoreError (BackplaneUnavailable) if they are not known to be; ``on_answer`` is
        then called (sync, from the backplane's task; not if the answer is there
        already when this returns). ``last_seq``: the caller's view (a single-writer log
        numbers from it; a shared one numbers itself). Raises StoreError if the events
        could not be sent (then nothing of them was stored)."""
        ...

    async def claim_login(self, login: str, session_id: str, single: bool, limit: int | None) -> LoginClaim:
        """Record ``session_id`` as logged in as ``login`` (``user:alice``, ``token:x``).
        With ``single`` it takes over from that login's other sessions (anywhere);
        otherwise it is refused beyond ``limit`` (None: no limit of its own)."""
        ...

    async def release_login(self, login: str, session_id: str) -> None: ...

    def presence_update_nowait(self, job_id: str, user_id: str, delta: int) -> None:
        """``user_id`` has ``delta`` more (or fewer) connections in ``job_id`` on this node.
        Never waits: shared with the other nodes in the background."""
        ...

    async def job_presence(self, job_id: str) -> set[str]:
        """The users in ``job_id`` on every live node."""
        ...

    async def users_online(self, user_ids: list[str]) -> list[str]:
        """Those of ``user_ids`` connected to any live node."""
        ...

    async def sweep_dead_nodes(self) -> list[str]:
        """Users whose last connection was on a node that died since the last sweep,
        each given to one caller in the cluster (``user.offline`` webhooks)."""
        ...

    async def publish_chat(self, data: bytes) -> None:
        """Send a committed chat batch to the other nodes (ChatRelay's format)."""
        ...

    async def publish_group_change(self, group_id: str) -> None: ...

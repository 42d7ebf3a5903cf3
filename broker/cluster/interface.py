"""The backplane: what the broker shares between nodes, split by the role each part plays.

Two implementations, chosen at start (``[cluster] redis_url``): in-process
(:mod:`.local`: one node on either store, SQLite or PostgreSQL without Redis; job
events in the store, logins in the hub) and on Redis (:mod:`.redis`: a node of a
cluster). Each component is given the role it uses, never the whole backplane:

* :class:`JobLog` (job rooms): sequencing and durable history of job events
  (``load_job``, ``read_job_after``, ``send_job_events``: appends one caller sends are
  applied in send order and answered later, so a room may have several in flight);
  live events of other nodes are pushed into a :class:`JobFeed` (merge by seq;
  ``resync_all`` after a gap in the feed);
* :class:`Presence` (job rooms): who is in a job on any node
  (``presence_update_nowait``, ``job_presence``); changes reach rooms through a
  :class:`PresenceFeed`;
* :class:`Logins` (login, presence of users): cluster-wide single login and per-user
  connection counts (``claim_login``/``release_login``; evictions of local sessions go
  to an :class:`Evictor`), who is online (``users_online``);
* :class:`ChatBus` (the chat relay): committed chat batches and group changes to the
  other nodes, theirs pushed into a :class:`ChatFeed`;
* :class:`JobOccupancy` (job rooms): whether a job has watchers on any node, each
  change (``job.occupied`` / ``job.vacated``) decided atomically for one node.

:class:`Backplane` holds the five roles and their life: ``open`` runs the background
work (Redis: the connection and feed loops) and ``problem()`` is why this node should
not take traffic (or None).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import attrs
import trio

from ..protocols import JobEventParts
from ..store import StoredEvent as StoredEvent  # the job log's events are the store's


class BackplaneUnavailable(Exception):
    """The shared state could not be reached: nothing of the request was applied, or
    (a reply lost in flight) it may have been; never acknowledged either way. Not a
    StoreError: a caller that answers both alike (HTTP 503, UNAVAILABLE) catches both."""


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
    its TTL, the seq it was first stored with and nothing stored) or the error (a
    StoreError or BackplaneUnavailable) that says it is not known to be stored."""

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
class UserTransition:
    """A user went online (its first connection anywhere) or offline (its last one gone),
    as the backplane decided it, atomically with the claim, release or sweep that made
    it: exactly one caller in the cluster is given each transition.

    In a cluster, a user's transitions are numbered (``seq``, +1 each, so online and
    offline alternate) and stay pending in Redis until acknowledged (``token``) after
    their outbox write; ``floor``: the number the user's state began at (transitions
    are numbered above it; filling a gap stops there). On one node ``seq`` is 0."""

    user_id: str
    online: bool
    seq: int = 0
    floor: int = 0
    token: bytes = b""  # what acknowledges it to the backplane (b"": nothing to acknowledge)

    @classmethod
    def from_pending(cls, entry: bytes) -> UserTransition:
        """From a pending entry ``seq|on/off|floor|user`` (:mod:`.lua`)."""
        seq, kind, floor, user = entry.decode().split("|", 3)
        return cls(user, kind == "on", int(seq), int(floor), entry)


@attrs.frozen
class LoginClaim:
    admitted: bool  # False: the user has its connection limit (cluster-wide) already
    replaced: list[str] = attrs.field(factory=list)  # session ids (of this node) to close with REPLACED
    transitions: list[UserTransition] = attrs.field(factory=list)  # the user's: online (or offline, online)


# -- where the backplane pushes what other nodes did (sync, never blocks) ------


class JobFeed(Protocol):
    """Where the job log pushes job events published by other nodes."""

    def deliver_remote(self, job_id: str, epoch: str, events: list[StoredEvent]) -> None: ...

    def resync_all(self) -> None:
        """The feed may have lost events (reconnect): every room reads what it missed."""
        ...


class PresenceFeed(Protocol):
    """Where presence says who is in a job may have changed."""

    def presence_changed(self, job_ids: list[str]) -> None:
        """Who is in these jobs may have changed (anywhere): rooms with watchers look again."""
        ...

    def presence_changed_all(self) -> None:
        """A node may have died: every room with watchers looks again."""
        ...


class ChatFeed(Protocol):
    """Where the chat bus pushes chat batches and group changes of other nodes."""

    def deliver_remote_chat(self, data: bytes) -> None: ...

    def remote_group_changed(self, group_id: str) -> None: ...


class Evictor(Protocol):
    def evict_replaced(self, session_ids: list[str]) -> None:
        """Close these local sessions: a newer login of their user (on any node) owns it now."""
        ...


# -- the roles -------------------------------------------------------------------


class JobLog(Protocol):
    """Sequencing and durable history of job events."""

    async def load_job(self, job_id: str, limit: int) -> JobHistory:
        """The newest ``limit`` events; StoreError or BackplaneUnavailable if unreachable."""
        ...

    async def read_job_after(self, job_id: str, after_seq: int, limit: int) -> JobHistory:
        """The events after ``after_seq``; StoreError or BackplaneUnavailable if unreachable."""
        ...

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
        StoreError or BackplaneUnavailable if they are not known to be; ``on_answer`` is
        then called (sync, from the backplane's task; not if the answer is there
        already when this returns). ``last_seq``: the caller's view (a single-writer log
        numbers from it; a shared one numbers itself). Raises StoreError or
        BackplaneUnavailable if the events could not be sent (then nothing of them was stored)."""
        ...


class Presence(Protocol):
    """Who is in a job, on every node."""

    clustered: bool  # False: this node's members are every member

    def presence_update_nowait(self, job_id: str, user_id: str, delta: int) -> None:
        """``user_id`` has ``delta`` more (or fewer) connections in ``job_id`` on this node.
        Never waits: shared with the other nodes in the background."""
        ...

    async def job_presence(self, job_id: str) -> set[str]:
        """The users in ``job_id`` on every live node (BackplaneUnavailable if unreachable)."""
        ...


class Logins(Protocol):
    """Cluster-wide logins and who is online."""

    clustered: bool  # False: the hub applies single login and the limits itself
    track_users: bool  # set at start: claims and releases make user transitions (webhooks want them)

    async def claim_login(self, login: str, session_id: str, single: bool, limit: int | None) -> LoginClaim:
        """Record ``session_id`` as logged in as ``login`` (``user:alice``, ``token:x``).
        With ``single`` it takes over from that login's other sessions (anywhere);
        otherwise it is refused beyond ``limit`` (None: no limit of its own). The claim
        carries the user's transitions it made (``track_users``): online when the user
        had no live connection anywhere."""
        ...

    async def release_login(self, login: str, session_id: str) -> list[UserTransition]:
        """Forget the session's entry; the user's offline transition if that was its last
        live one (and user transitions are tracked)."""
        ...

    async def users_online(self, user_ids: list[str]) -> list[str]:
        """Those of ``user_ids`` connected to any live node."""
        ...

    async def sweep_dead_nodes(self) -> list[UserTransition]:
        """Offline transitions of users whose last connection was on a node that died,
        and transitions whose recorder did not acknowledge them within their lease: each
        handed to one caller in the cluster at a time (``user.offline`` webhooks)."""
        ...

    async def transitions_recorded(self, transitions: list[UserTransition]) -> None:
        """Their outbox rows are committed: no sweep hands them out again. Best effort:
        one not acknowledged is handed out again after its lease (recorded at most once
        in the outbox anyway)."""
        ...

class JobOccupancy(Protocol):
    """Whether a job has watchers on any node: ``job.occupied`` / ``job.vacated``,
    each change given to exactly one node to record."""

    clustered: bool  # False: this node's room is the job's only room

    async def room_changed(self, job_id: str, occupied: bool) -> bool:
        """This node's room of ``job_id`` got its first member (``occupied``) or lost
        its last. True if that made the job occupied (no room anywhere had members) or
        vacated (no room anywhere has members now): only this caller records the event.
        BackplaneUnavailable: not known to be applied (the caller tries again)."""
        ...

    def room_ended(self, job_id: str) -> None:
        """The room ended (it failed) while its members counted: they are gone (sync,
        never waits; the change is made by :meth:`sweep`)."""
        ...

    async def sweep(self) -> list[tuple[str, bool]]:
        """(job, occupied) changes no room can report: the last watchers of a job died
        with their node (vacated: each given to one caller in the cluster), rooms that
        ended while counted, and jobs occupied again once this node, swept as dead while
        it was alive, wrote its rooms back. BackplaneUnavailable if unreachable."""
        ...


class ChatBus(Protocol):
    """Chat batches and group changes to the other nodes."""

    clustered: bool  # False: no other node to tell
    instance: str  # this run of the node: its own messages come back with it

    async def publish_chat(self, data: bytes) -> None:
        """Send a committed chat batch to the other nodes (ChatRelay's format)."""
        ...

    async def publish_group_change(self, group_id: str) -> None: ...


class Backplane(Protocol):
    """The five roles of one node and their life."""

    node_id: str
    instance: str  # this run of the node (a restarted node is a new instance)
    clustered: bool

    @property
    def job_log(self) -> JobLog: ...
    @property
    def presence(self) -> Presence: ...
    @property
    def logins(self) -> Logins: ...
    @property
    def chat_bus(self) -> ChatBus: ...
    @property
    def occupancy(self) -> JobOccupancy: ...

    def open(self, jobs: JobFeed, presence: PresenceFeed, evictor: Evictor,
             chat: ChatFeed) -> AbstractAsyncContextManager[None]:
        """Background work (the Redis connection loops) for the duration of the block;
        the broker serves clients inside it."""
        ...

    def problem(self) -> str | None: ...

    def redis_location(self) -> dict[str, Any] | None:
        """Where the node reaches Redis, for ``/health`` (no credentials): the master's
        address and, with Sentinel, the sentinels; None on one node."""
        ...

"""Room actors and their supervisor: the shape shared by job rooms and conversations.

A room is an actor keyed by a string (a job id, a conversation id), started on first
use by its :class:`RoomSupervisor` and stopped when it has been idle for
``idle_timeout`` and :meth:`RoomActor.may_stop` agrees. Lookup-or-start is a sync
method (atomic in trio); a sender holding a room that has just stopped retries with a
fresh one. Requests still queued when a room ends are failed, never left hanging.
At most ``max_rooms`` run at once: a key with no running room is then refused
(:class:`RoomsFull`) rather than queued; running rooms go on.

Wait on the way in, never on the way out: senders wait on a room's bounded mailbox;
a room never awaits a member.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import trio

from actors import Mailbox, MailboxClosed, MailboxFull, Supervisor

__all__ = ["MailboxClosed", "MailboxFull", "RoomActor", "RoomSupervisor", "RoomUnavailable"]

from ..observability.metrics import Metrics

log = logging.getLogger("broker.rooms")


class RoomUnavailable(Exception):
    """The room stopped before it could answer (crash or shutdown)."""


class RoomsFull(RoomUnavailable):
    """``max_rooms`` rooms are running: no new one starts until one ends."""


class RoomActor:
    """Base of a room: subclasses implement ``load`` and ``handle``."""

    def __init__(self, key: str, supervisor: RoomSupervisor[Any], inbox_size: int, idle_timeout: float) -> None:
        self.key = key
        self._supervisor = supervisor
        self.inbox: Mailbox[Any] = Mailbox(inbox_size)
        self.idle_timeout = idle_timeout

    async def load(self) -> None:
        """Read what the room needs from the store before its first command."""

    async def handle(self, command: Any) -> Any | None:
        """Handle ``command`` (and possibly a run of the ones behind it); return a
        command taken from the mailbox but not handled yet, or None."""
        raise NotImplementedError

    def may_stop(self) -> bool:
        """Asked after ``idle_timeout`` without commands: may the room end now?"""
        return True

    def on_crash(self) -> None:
        """The room is failing: tell whoever depends on it (e.g. close members with 1011)."""

    def on_end(self) -> None:
        """The room has ended (idle, crashed or cancelled): answer what it still owes."""

    async def handle_batch(self, commands: list[Any], work: Awaitable[None]) -> None:
        """Await ``work`` for ``commands``; if it fails, every one of them that has not
        been answered is rejected: nobody waits forever on a room that crashed."""
        try:
            await work
        except BaseException:
            for command in commands:
                self.reject(command, RoomUnavailable(f"room {self.key} failed"))
            raise

    def reject(self, command: Any, error: Exception) -> None:
        """A command that will never be handled (the room is ending)."""
        reply = getattr(command, "reply", None)
        if reply is not None and not reply.done:
            reply.fail(error)

    async def run(self) -> None:
        try:
            await self.load()
            while True:
                with trio.move_on_after(self.idle_timeout) as idle:
                    command = await self.inbox.receive()
                if idle.cancelled_caught:
                    # no await between this check and forget(): no command can slip in
                    if self.may_stop() and self.inbox.is_empty():
                        return
                    continue
                while command is not None:
                    command = await self.handle(command)
        except Exception:
            self.on_crash()
            raise
        finally:
            self._supervisor.forget(self)
            self.on_end()
            self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                command = self.inbox.receive_nowait()
            except (trio.WouldBlock, MailboxClosed):
                break
            self.reject(command, RoomUnavailable(f"room {self.key} stopped"))
        self.inbox.close()


R = TypeVar("R", bound=RoomActor)


class RoomSupervisor(Generic[R]):
    """Finds or starts the room for a key, and routes commands to it."""

    def __init__(self, supervisor: Supervisor, kind: str, make_room: Callable[[str], R], metrics: Metrics,
                 max_rooms: int) -> None:
        self._supervisor = supervisor
        self.kind = kind
        self._make_room = make_room
        self.max_rooms = max_rooms
        self._rooms: dict[str, R] = {}
        metrics.track(metrics.rooms_open.labels(kind), lambda: len(self._rooms))

    def __len__(self) -> int:
        return len(self._rooms)

    def running(self, key: str) -> R | None:
        """The room of ``key`` if one is running (never starts one)."""
        return self._rooms.get(key)

    def room(self, key: str, reserve: int = 0) -> R:
        """The running room of ``key``, started now if there is none. Raises RoomsFull
        when ``max_rooms - reserve`` are running (``reserve``: places this caller leaves
        to others): the caller answers UNAVAILABLE, nothing waits."""
        room = self._rooms.get(key)
        if room is None:
            if len(self._rooms) >= self.max_rooms - reserve:
                kept = f"; the last {reserve} are kept for publishes" if reserve else ""
                raise RoomsFull(f"too many active {self.kind} rooms ({self.max_rooms}{kept}), try again later")
            room = self._make_room(key)
            self._rooms[key] = room
            self._supervisor.spawn(room.run, name=f"{self.kind}-room:{key}")
        return room

    def running_rooms(self) -> list[R]:
        return list(self._rooms.values())

    def forget(self, room: RoomActor) -> None:
        if self._rooms.get(room.key) is room:
            del self._rooms[room.key]

    async def send(self, key: str, command: Any, reserve: int = 0) -> None:
        """Deliver ``command`` to the room of ``key``, waiting while its mailbox is full
        (backpressure on this caller only). Raises RoomUnavailable if rooms keep ending,
        RoomsFull if the room is not running and no new one may start (``reserve``: see
        :meth:`room`)."""
        for _ in range(3):
            room = self.room(key, reserve)
            try:
                room.inbox.send_nowait(command)  # no await since the lookup: the room is live
                return
            except MailboxFull:
                try:
                    await room.inbox.send(command)
                    return
                except MailboxClosed:
                    continue
            except MailboxClosed:
                continue
        raise RoomUnavailable(f"room {key} is not accepting commands")

    async def send_if_running(self, key: str, command: Any) -> bool:
        """Deliver ``command`` to the running room of ``key``, waiting while its mailbox
        is full; False (nothing sent) if there is no such room or it ends first."""
        room = self._rooms.get(key)
        if room is None:
            await trio.lowlevel.checkpoint()
            return False
        try:
            await room.inbox.send(command)
        except MailboxClosed:
            return False
        return True

    def send_if_running_nowait(self, key: str, command: Any) -> bool:
        """Best effort, never waits: False if there is no room or it is busy."""
        room = self._rooms.get(key)
        if room is None:
            return False
        try:
            room.inbox.send_nowait(command)
        except (MailboxFull, MailboxClosed):
            return False
        return True

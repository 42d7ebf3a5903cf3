"""Typed, bounded mailboxes over trio memory channels.

A mailbox has many senders and one owner that receives. Its capacity is fixed at
creation; what happens when it is full is the sender's choice, made explicit by the
method it calls:

* ``await send(msg)`` waits for room (backpressure reaches only that sender);
* ``send_nowait(msg)`` raises :class:`MailboxFull` at once (the caller applies its
  own policy, e.g. evicting a slow consumer).

When the owner has gone (``close()``), every send raises :class:`MailboxClosed`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeGuard, TypeVar, overload

import attrs
import trio

T = TypeVar("T")
S = TypeVar("S")  # a narrower type of message, picked out by a TypeGuard


class MailboxFull(Exception):
    """``send_nowait`` found the mailbox at capacity."""


class MailboxClosed(Exception):
    """The mailbox's owner has stopped receiving."""


@attrs.frozen
class MailboxStats:
    depth: int
    capacity: int
    waiting_senders: int


class Mailbox(Generic[T]):
    """A bounded mailbox of messages of type ``T``."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a mailbox needs a capacity of at least 1")
        self.capacity = capacity
        self._send, self._receive = trio.open_memory_channel[T](capacity)

    async def send(self, message: T) -> None:
        """Deliver ``message``, waiting while the mailbox is full.

        Cancellation while waiting leaves the mailbox unchanged (nothing half-sent).
        Raises MailboxClosed if the owner has gone.
        """
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise MailboxClosed() from None

    def send_nowait(self, message: T) -> None:
        """Deliver ``message`` now or raise MailboxFull / MailboxClosed."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            raise MailboxFull() from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise MailboxClosed() from None

    async def receive(self) -> T:
        """Next message, waiting if there is none. Raises MailboxClosed once closed."""
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise MailboxClosed() from None

    def receive_nowait(self) -> T:
        """Next message, or trio.WouldBlock if there is none."""
        try:
            return self._receive.receive_nowait()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise MailboxClosed() from None

    @overload
    def receive_run_nowait(
        self, first: S, belongs: Callable[[T], TypeGuard[S]], limit: int
    ) -> tuple[list[S], T | None]: ...

    @overload
    def receive_run_nowait(
        self, first: T, belongs: Callable[[T], bool], limit: int
    ) -> tuple[list[T], T | None]: ...

    def receive_run_nowait(
        self, first: Any, belongs: Callable[[T], bool], limit: int
    ) -> tuple[list[Any], T | None]:
        """Take, without waiting, the run of messages after ``first`` that ``belongs``.

        Returns ``(run, leftover)``: ``run`` starts with ``first`` and holds at most
        ``limit`` messages in arrival order; ``leftover`` is the first message taken that
        does not belong (the caller handles it next), or None. Used to batch work
        (one transaction for many writes) without reordering it. When ``belongs`` is a
        ``TypeGuard``, ``run`` is typed as the narrower type.
        """
        run = [first]
        while len(run) < limit:
            try:
                message = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return run, None
            if not belongs(message):
                return run, message
            run.append(message)
        return run, None

    def receive_run_past_nowait(
        self, first: Any, belongs: Callable[[T], bool], passes: Callable[[T], bool], limit: int
    ) -> tuple[list[Any], list[Any], T | None]:
        """Like :meth:`receive_run_nowait`, but messages for which ``passes`` is true do
        not end the run: they are taken too and returned apart, in arrival order.

        Returns ``(run, passed, leftover)``. For an owner whose batched work commutes
        with some other kinds of message (they may be handled before the whole run).
        """
        run = [first]
        passed: list[Any] = []
        while len(run) < limit:
            try:
                message = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return run, passed, None
            if belongs(message):
                run.append(message)
            elif passes(message):
                passed.append(message)
            else:
                return run, passed, message
        return run, passed, None

    def is_empty(self) -> bool:
        """True when nothing is buffered and no sender is waiting."""
        stats = self._send.statistics()
        return stats.current_buffer_used == 0 and stats.tasks_waiting_send == 0

    def close(self) -> None:
        """Stop receiving: buffered messages are dropped, senders get MailboxClosed."""
        self._receive.close()

    def close_sending(self) -> None:
        """No more messages will be sent: the owner drains what is left, then receive()
        raises MailboxClosed."""
        self._send.close()

    def stats(self) -> MailboxStats:
        stats = self._send.statistics()
        return MailboxStats(
            depth=stats.current_buffer_used,
            capacity=self.capacity,
            waiting_senders=stats.tasks_waiting_send,
        )

    def __aiter__(self) -> Mailbox[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except MailboxClosed:
            raise StopAsyncIteration from None

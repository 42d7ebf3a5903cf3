"""One-shot replies: how an actor answers a request sent to its mailbox."""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Reply(Generic[T]):
    """A slot the receiving actor fills once with a value or an exception.

    The requester awaits :meth:`wait`. If the requester is cancelled, the actor may
    still fill the slot; nobody reads it, nothing leaks. Filling twice is a bug and
    raises RuntimeError.
    """

    __slots__ = ("_event", "_value", "_error")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def set(self, value: T) -> None:
        if self._event.is_set():
            raise RuntimeError("reply already sent")
        self._value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        if self._event.is_set():
            raise RuntimeError("reply already sent")
        self._error = error
        self._event.set()

    async def wait(self) -> T:
        """The value, or raise the exception the actor failed the reply with."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

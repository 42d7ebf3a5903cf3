"""A connection's pings and the reader's wake-ups, shared by both transports.

The WebSocket (:mod:`.websocket`) and the SSE fallback (:mod:`.sse`) number their
pings 1, 2, 3...; a pong answers its ping and every one before it, and only the first
pong for a ping counts (so a client cannot spend the broker's free pongs twice). The
session's reader waits in ``receive_message`` under a cancel scope the transport keeps
in :attr:`PingBook.wait`; :meth:`PingBook.wake` cancels that wait (or makes the next
one return at once) so the reader looks at its timers, and :meth:`PingBook.wake_on_pong`
does it once a given ping is answered (the heartbeat's confirmation).
"""

from __future__ import annotations

import trio


class PingBook:
    """Pings sent, pings answered, and whether the reader has been woken. Sync, never raises."""

    __slots__ = ("sent", "answered", "woken", "wait", "_wake_at")

    def __init__(self) -> None:
        self.sent = 0  # the number of the last ping sent
        self.answered = 0  # the highest ping answered
        self.woken = False  # the reader's pending (or next) wait ends at once
        self.wait: trio.CancelScope | None = None  # around the reader's blocking wait, while it waits
        self._wake_at = 0  # wake the reader once this ping is answered (0: nobody asked)

    def next_ping(self) -> int:
        """The number of the ping about to be sent."""
        self.sent += 1
        return self.sent

    def answer(self, seq: int) -> bool:
        """Take a pong carrying ``seq``: True if it answers a ping sent and not answered
        yet (wakes the reader if it asked for that ping), False for anything else."""
        if not self.answered < seq <= self.sent:
            return False
        self.answered = seq  # a pong answers its ping and every ping before it
        if self._wake_at and seq >= self._wake_at:
            self._wake_at = 0
            self.wake()
        return True

    def wake(self) -> None:
        """End the reader's pending wait now, or its next one at once."""
        self.woken = True
        if self.wait is not None:
            self.wait.cancel()

    def wake_on_pong(self, seq: int) -> None:
        """:meth:`wake` once ping ``seq`` is answered (at once if it already is)."""
        if self.answered >= seq:
            self.wake()
        else:
            self._wake_at = seq

    def take_wake(self) -> bool:
        """Whether the reader was woken (and forget it: one wake ends one wait)."""
        if self.woken:
            self.woken = False
            return True
        return False

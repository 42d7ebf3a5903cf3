"""Offline replay, paced by what the client confirms (flow control).

On connect a user gets the chat messages that arrived while it was away. Sending
them all at once outruns the outbox of any size before the client can confirm
anything (a few users can fill anyone's backlog in seconds), so the replay goes in
windows: at most ``window_count`` messages and ``window_bytes`` bytes (well under the
outbox bound), then a WebSocket ping queued after them. Its pong confirms the window
(the delivery cursors advance) and the next window goes. A client that reads gets
any backlog up to ``offline_cap`` through; only a client that stops reading is a slow
consumer: no pong within ``timeout`` closes it with 4003, and what it did not confirm
is replayed on its next connection.

Live messages that arrive meanwhile are held by the session (bounded by its
``held_max`` policy) and sent after the stored ones, in windows the same way, minus
those the stored replay already contained (per conversation, msgIds only grow).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Protocol

import attrs

from ..hub.peer import Peer
from ..protocols import CloseCode

HeldMessage = tuple[str, int, bytes]  # a chat message for one connection: (conversation, msgId, encoded frame)
Confirm = Callable[[dict[str, int]], Awaitable[None]]


class ReplayTarget(Peer, Protocol):
    """What the replay needs of a connection beyond a peer: a confirming ping, and the
    live messages held while it ran."""

    async def ping_within(self, seconds: float) -> bool | None:
        """Ping after everything queued: True if answered in time, False if not, None
        if the connection closed."""
        ...

    def release_held(self) -> list[HeldMessage]:
        """The live messages held so far (cleared); when there are none, the connection
        stops holding and goes live, in the same step."""
        ...


@attrs.frozen
class Pacing:
    window_count: int
    window_bytes: int
    timeout: float  # seconds a window may wait for its confirmation


def windows(deliveries: Iterable[HeldMessage], max_count: int, max_bytes: int) -> Iterator[list[HeldMessage]]:
    """Consecutive runs of at most ``max_count`` deliveries and ``max_bytes`` bytes
    (a single larger delivery makes a window of its own)."""
    window: list[HeldMessage] = []
    size = 0
    for delivery in deliveries:
        if window and (len(window) >= max_count or size + len(delivery[2]) > max_bytes):
            yield window
            window, size = [], 0
        window.append(delivery)
        size += len(delivery[2])
    if window:
        yield window


async def send_paced(target: ReplayTarget, deliveries: Iterable[HeldMessage], pacing: Pacing,
                     confirm: Confirm) -> bool:
    """Send ``deliveries`` window by window, each confirmed before the next. False if
    the connection ended (closed, or evicted here as a slow consumer)."""
    for window in windows(deliveries, pacing.window_count, pacing.window_bytes):
        positions: dict[str, int] = {}
        for conversation, msg_id, frame in window:
            if not target.send_frame_nowait(frame):
                return False
            positions[conversation] = max(positions.get(conversation, 0), msg_id)
        answered = await target.ping_within(pacing.timeout)
        if answered is None:
            return False
        if not answered:
            target.evict(CloseCode.SLOW_CONSUMER, "slow consumer: offline messages not confirmed", "slow_consumer")
            return False
        await confirm(positions)
    return not target.closed


async def replay(target: ReplayTarget, stored: list[HeldMessage], pacing: Pacing, confirm: Confirm) -> bool:
    """The stored messages, then the live ones held meanwhile, until none is held and
    the connection is live. False if the connection ended first."""
    newest: dict[str, int] = {}
    for conversation, msg_id, _ in stored:
        newest[conversation] = max(newest.get(conversation, 0), msg_id)
    if not await send_paced(target, stored, pacing, confirm):
        return False
    while held := target.release_held():
        fresh = [d for d in held if d[1] > newest.get(d[0], 0)]
        if not await send_paced(target, fresh, pacing, confirm):
            return False
    return True

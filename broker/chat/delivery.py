"""Chat delivery tracking for one connection: what it was sent and has not confirmed.

A stored chat message is *tracked* once queued: its position (conversation, msgId)
waits with the wire offset after its frame until the client answers a ping queued
after it (the connection's reader sends that ping ``confirm_delay`` after the first
unconfirmed delivery). Only confirmed positions are stored as delivered, so what a
connection did not confirm is delivered again from the store on the user's next
connection (at least once).

While the offline replay runs (:mod:`broker.chat.replay`), live messages are *held*
instead and handed to the replay, which sends them after the stored ones.

Both queues are bounded by ``held_max``: past it the connection is closed as a slow
consumer (4003), since it neither reads nor confirms. All of it is sync and does no
I/O: the connection stores what is confirmed.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

import trio

from ..hub.peer import Peer
from ..protocols import CloseCode
from .replay import HeldMessage

if TYPE_CHECKING:
    from ..config.loader import ChatConfig
    from ..transport.channel import ClientChannel
    from ..transport.wire import WireStream



class TrackedConnection(Peer, Protocol):
    """What the tracking uses of its connection beyond a peer: the wire and WebSocket
    its confirmation pings go out on."""

    @property
    def wire(self) -> WireStream | None: ...
    @property
    def ws(self) -> ClientChannel | None: ...


class ChatDeliveries:
    """The chat deliveries of one connection: held during the offline replay, then
    tracked until confirmed. Made by the connection when it first needs it; its
    attributes are slots (a connection is held by the thousand)."""

    __slots__ = ("_connection", "_config", "replaying", "_held", "unconfirmed", "confirm_due")

    def __init__(self, connection: TrackedConnection, config: ChatConfig, replaying: bool) -> None:
        self._connection = connection
        self._config = config
        self.replaying = replaying  # the offline replay runs: live messages are held
        self._held: list[HeldMessage] | None = None
        self.unconfirmed: deque[tuple[int, str, int]] | None = None  # (wire offset, conversation, msgId)
        self.confirm_due: float | None = None  # when the reader pings to confirm them

    def deliver(self, conversation: str, msg_id: int, frame: bytes) -> bool:
        """Hold the message during the replay, else queue it and track it. False if
        the connection is closing or was evicted here (4003: too many waiting)."""
        if self.replaying:
            if self._held is None:
                self._held = []
            if len(self._held) >= self._config.held_max:
                self._connection.evict(CloseCode.SLOW_CONSUMER, "slow consumer: too many messages while syncing",
                                       "slow_consumer")
                return False
            self._held.append((conversation, msg_id, frame))
            return True
        return self._deliver_tracked(conversation, msg_id, frame)

    def _deliver_tracked(self, conversation: str, msg_id: int, frame: bytes) -> bool:
        connection = self._connection
        if not connection.send_frame_nowait(frame):
            return False
        wire = connection.wire
        assert wire is not None
        if self.unconfirmed is None:
            self.unconfirmed = deque()
        if len(self.unconfirmed) >= self._config.held_max:
            connection.evict(CloseCode.SLOW_CONSUMER, "slow consumer: deliveries not confirmed", "slow_consumer")
            return False
        self.unconfirmed.append((wire.bytes_queued, conversation, msg_id))
        if self.confirm_due is None:  # the reader pings confirm_delay from now
            self.confirm_due = trio.current_time() + self._config.confirm_delay
            ws = connection.ws
            if ws is not None:
                ws.wake()  # to take the earlier deadline
        return True

    def release_held(self) -> list[HeldMessage]:
        """For the offline replay: the live messages held so far; when none is held,
        stop holding (live deliveries are tracked from now on). Sync: no delivery can
        slip in between the check and going live."""
        held, self._held = self._held or [], None
        if not held:
            self.replaying = False
        return held

    def confirmed_up_to(self, mark: int) -> dict[str, int]:
        """Take the deliveries queued before wire offset ``mark`` (a ping after them
        was answered) off the tracking: the newest msgId per conversation."""
        positions: dict[str, int] = {}
        unconfirmed = self.unconfirmed
        while unconfirmed and unconfirmed[0][0] <= mark:
            _, conversation, msg_id = unconfirmed.popleft()
            positions[conversation] = max(positions.get(conversation, 0), msg_id)
        return positions

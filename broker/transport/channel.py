"""What a broker session needs of its client's transport, as one Protocol.

Two transports carry the broker protocol: the WebSocket
(:class:`~broker.transport.websocket.ServerWebSocket`) and the SSE stream with POSTed
input (:class:`~broker.transport.sse.SseChannel`). A session (broker/session/connection.py)
is written against :class:`ClientChannel` only, so the protocol, its limits and its
timers exist once whatever carries them.
"""

from __future__ import annotations

import math
from typing import Protocol


class FrameSink(Protocol):
    """Where a session queues encoded server frames (a WebSocket text frame each)."""

    def write_nowait(self, data: bytes, *, force: bool = False) -> None:
        """Queue ``data`` whole without waiting. Raises OutboxFull past the bound (unless
        ``force``), BrokenResourceError/ClosedResourceError once the peer is gone."""
        ...

    @property
    def backlog_bytes(self) -> int:
        """Bytes queued, not yet taken by the kernel."""
        ...

    async def wait_send_all_might_not_block(self) -> None:
        """Until the kernel has taken what is queued."""
        ...


class ClientChannel(Protocol):
    """A client's transport as a session drives it: messages in (with the session's
    timers as deadlines), frames out, heartbeats, and a bounded close."""

    @property
    def wire(self) -> FrameSink: ...

    @property
    def close_sent(self) -> bool:
        """True once the close (frame or event) is queued: nothing may follow it."""
        ...

    @property
    def pings_answered(self) -> int: ...

    def outgoing(self, frames: bytes) -> bytes:
        """``frames`` (encoded once per broadcast) as this transport queues them."""
        ...

    async def receive_message(self, deadline: float = math.inf) -> str | bytes | None:
        """The next client message, or None at ``deadline`` or on :meth:`wake`; raises
        ConnectionClosed once the transport is closed. Cancelling it loses no input."""
        ...

    def wake(self) -> None: ...

    def wake_on_pong(self, seq: int) -> None: ...

    def ping_nowait(self) -> int:
        """Queue a heartbeat after everything queued; its number. Raises ConnectionClosed
        once closing."""
        ...

    async def ping_within(self, seconds: float) -> bool | None: ...

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Queue the close and wait until it is sent (unbounded: the caller bounds it)."""
        ...

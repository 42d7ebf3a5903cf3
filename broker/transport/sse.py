"""The server side of an SSE stream whose client sends by POST: the fallback transport.

A :class:`SseChannel` is what a broker session drives in place of a WebSocket
(:class:`~broker.transport.channel.ClientChannel`): the same session, protocol,
limits and timers, over another transport.

* Out: the session's frames (WebSocket text frames, encoded once per broadcast) are
  rewritten as events (``broker.protocols.sse``) onto the GET response's
  :class:`~broker.transport.wire.WireStream`, whose byte bound is the outbox bound: a
  full outbox is a slow consumer, closed with ``event: close`` naming 4003.
* In: the POSTs naming this stream (``X-Broker-Stream``) hand their messages to
  :meth:`post`, in order, through a bounded queue (``max_pending``): a POST waits while
  it is full, which is backpressure on the sender only ("wait on the way in").
* Heartbeats: :meth:`ping_nowait` queues a ``:ping n`` comment after everything
  queued; a POSTed ``{"type":"pong","seq":n}`` answers it (and every ping before); as
  on ``/ws``, a pong answering our ping is free and an unsolicited one counts against
  the rate limit.
* The peer: one task reads the GET connection until the client closes it (what it
  sends there is dropped); then the channel is lost, as a WebSocket whose TCP
  connection ended.

Cancellation: cancelling :meth:`receive_message` or :meth:`post` loses no message
(trio's memory channels hand a message over whole or not at all). :meth:`aclose`
queues the close event and the end of the body and waits until they are sent; the
caller bounds that wait.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..protocols.sse import (
    LAST_CHUNK,
    chunk,
    close_event,
    events_of,
    ping_comment,
    pong_seq,
    response_head,
    stream_event,
)
from .pings import PingBook
from .websocket import ConnectionClosed
from .wire import WireStream

MAX_PENDING = 16  # POSTed messages waiting for the session; then the next POST waits
_LOST = 1006


# The last frame rewritten, and its event (bare, chunked): a room hands the same frame
# object to each of its members in turn, so its SSE members share one rewrite. Holding
# the frame keeps its identity from being reused while it is the key.
_last_frame: bytes | None = None
_last_events: tuple[bytes, bytes] = (b"", b"")


def _events_of(frames: bytes) -> tuple[bytes, bytes]:
    """(events, chunked events) carrying the messages of ``frames``; once per broadcast."""
    global _last_frame, _last_events
    if frames is not _last_frame:
        encoded = events_of(frames)
        _last_frame, _last_events = frames, (encoded, chunk(encoded))
    return _last_events


class SseWire:
    """The session's frame sink on an SSE stream: WebSocket text frames in, the same
    payloads out as events (one chunk, on HTTP/1.1), on the response's wire."""

    __slots__ = ("stream", "chunked")

    def __init__(self, stream: WireStream, chunked: bool) -> None:
        self.stream = stream
        self.chunked = chunked

    def write_nowait(self, data: bytes, *, force: bool = False) -> None:
        """Queue ``data`` (server text frames, one or a batch) as events. Raises as
        :meth:`WireStream.write_nowait` (OutboxFull past the bound unless ``force``)."""
        self.stream.write_nowait(_events_of(data)[self.chunked], force=force)

    @property
    def backlog_bytes(self) -> int:
        return self.stream.backlog_bytes

    async def wait_send_all_might_not_block(self) -> None:
        """Until the kernel has taken what is queued (paced sends wait here)."""
        await self.stream.wait_send_all_might_not_block()

    def write_event_nowait(self, encoded: bytes, *, force: bool = False) -> None:
        """Queue an encoded event or comment."""
        self.stream.write_nowait(chunk(encoded) if self.chunked else encoded, force=force)


class SseChannel:
    """One SSE stream and the POSTs bound to it (see the module docstring)."""

    def __init__(self, stream_id: str, max_pending: int = MAX_PENDING) -> None:
        self.stream_id = stream_id  # a secret: never logged
        self._send, self._receive = trio.open_memory_channel[str](max_pending)
        self._wire: SseWire | None = None
        self.close_sent = False
        self.closed: ConnectionClosed | None = None
        self.control_budget: Callable[[], bool] | None = None
        self._pings = PingBook()
        self._changed: trio.Event | None = None

    @property
    def wire(self) -> SseWire:
        assert self._wire is not None, "open() first"
        return self._wire

    def open(self, stream: WireStream, chunked: bool, headers: Sequence[tuple[str, str]],
             control_budget: Callable[[], bool],
             spawn: Callable[[Callable[[], Awaitable[None]]], None]) -> None:
        """Queue the 200 and the ``stream`` event; ``spawn`` (the connection's
        nursery) runs the task that watches for the client going away.
        ``control_budget`` is asked for every pong (False: refused, not counted as one)."""
        stream.write_nowait(response_head(chunked, headers), force=True)
        self._wire = SseWire(stream, chunked)
        self.control_budget = control_budget
        self._write(stream_event(self.stream_id))
        spawn(self._watch_peer)

    def outgoing(self, frames: bytes) -> bytes:
        """``frames`` as this stream sends them: as given (SseWire rewrites them as
        events; there is no compression on this transport)."""
        return frames

    # -- in: POSTs --------------------------------------------------------------

    async def post(self, message: str) -> None:
        """Hand one POSTed message to the session, in order; waits while ``max_pending``
        wait. A pong is taken here. Raises trio.BrokenResourceError once the stream is
        closing (the POST is answered 410: nothing was accepted)."""
        seq = pong_seq(message)
        if seq is not None:
            if self.closed is not None:
                raise trio.BrokenResourceError("stream closed")
            # a pong answering one of our pings is free (at most one per ping sent);
            # an unsolicited one is charged as a message, as on /ws
            if not self._on_pong(seq) and self.control_budget is not None:
                self.control_budget()
            await trio.lowlevel.checkpoint()
            return
        if self.closed is not None:
            raise trio.BrokenResourceError("stream closed")
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise trio.BrokenResourceError("stream closed") from None

    async def receive_message(self, deadline: float = math.inf) -> str | bytes | None:
        """The next POSTed message, or None if ``deadline`` passes or :meth:`wake` is
        called first. Raises ConnectionClosed once closed."""
        while True:
            if self._pings.take_wake():  # before the close: a pong that came just before it is still seen
                await trio.lowlevel.checkpoint()
                return None
            if self.closed is not None:
                raise self._closed_error()
            try:
                return self._receive.receive_nowait()
            except trio.WouldBlock:
                pass
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise self._closed_error() from None
            with trio.CancelScope(deadline=deadline) as self._pings.wait:
                try:
                    return await self._receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    raise self._closed_error() from None
                finally:
                    self._pings.wait = None
            if self.closed is None:  # the deadline passed or wake() was called
                self._pings.woken = False
                return None

    def wake(self) -> None:
        """Make the pending (or next) :meth:`receive_message` return None now."""
        self._pings.wake()

    def wake_on_pong(self, seq: int) -> None:
        """:meth:`wake` the reader once ping ``seq`` is answered."""
        self._pings.wake_on_pong(seq)

    # -- heartbeats -------------------------------------------------------------

    def ping_nowait(self) -> int:
        """Queue ``:ping n`` after everything queued so far; returns n."""
        if self.close_sent:
            raise self._closed_error()
        seq = self._pings.next_ping()
        self._write(ping_comment(seq))
        return seq

    @property
    def pings_answered(self) -> int:
        return self._pings.answered

    async def ping_within(self, seconds: float) -> bool | None:
        """Ping: True if answered within ``seconds``, False if not, None if closed."""
        try:
            seq = self.ping_nowait()
        except ConnectionClosed:
            return None
        with trio.move_on_after(seconds):
            while self._pings.answered < seq:
                if self.closed is not None:
                    return None
                await self._wait_change()
            return True
        return False

    def _on_pong(self, seq: int) -> bool:
        """True if it answers a ping of ours not answered yet."""
        if not self._pings.answer(seq):
            return False
        self._notify()
        return True

    # -- closing ----------------------------------------------------------------

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Queue ``event: close`` (code, reason) and the end of the body, refuse further
        POSTs, and wait until it is all sent. Unbounded: the caller bounds it."""
        if not self.close_sent:
            self.close_sent = True
            self._write(close_event(code, reason))
            if self._wire is not None and self._wire.chunked:
                self._write_raw(LAST_CHUNK)
            self._set_closed(ConnectionClosed(code, reason, by_peer=False))
        self._receive.close()  # POSTs waiting now fail: 410
        if self._wire is not None and self.closed is not None and self.closed.code != _LOST:
            try:
                await self._wire.stream.wait_send_all_might_not_block()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        else:
            await trio.lowlevel.checkpoint()

    async def _watch_peer(self) -> None:
        """Read the GET connection until the client closes it, then the channel is lost."""
        assert self._wire is not None
        try:
            while await self._wire.stream.receive_some(4096):
                pass  # nothing is expected here: dropped
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self._lose()

    def _write(self, encoded: bytes) -> None:
        if self._wire is None:
            return
        try:
            self._wire.write_event_nowait(encoded, force=True)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lose()

    def _write_raw(self, data: bytes) -> None:
        assert self._wire is not None
        try:
            self._wire.stream.write_nowait(data, force=True)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lose()

    def _lose(self) -> None:
        self.close_sent = True
        self._set_closed(ConnectionClosed(_LOST, "connection lost", by_peer=True))

    def _set_closed(self, closed: ConnectionClosed) -> None:
        if self.closed is None:
            self.closed = closed
            self._notify()
            self.wake()

    def _closed_error(self) -> ConnectionClosed:
        closed = self.closed or ConnectionClosed(1000, "closing", by_peer=False)
        return ConnectionClosed(closed.code, closed.reason, by_peer=closed.by_peer)

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

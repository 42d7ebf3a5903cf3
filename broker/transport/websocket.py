"""The server side of an open WebSocket: wsproto parses, the broker's wire writes.

The HTTP front end reads and checks the upgrade request (``protocols.handshake``);
:class:`ServerWebSocket` answers it with the 101 and then carries the connection. It
is lean on purpose, since an idle connection is what a broker holds by the thousand:
no task and no channel of its own. Whichever task asks for input drives the parser.

* Reading: ``receive_message`` reads the wire, feeds wsproto's frame parser (framing,
  masking, UTF-8 of text, control-frame rules) and returns whole messages,
  reassembled from fragments up to ``max_message_bytes`` (beyond that: close 1009). A
  ping is answered with a pong at once; pongs resolve ``ping_within``. A protocol
  violation is answered as RFC 6455 asks: a close frame with 1002 (bad framing, an
  unmasked frame, an unknown opcode, a fragmented control frame) or 1007 (invalid
  UTF-8), and the connection is done.
* Fairness: ``control_budget`` is asked for every ping and every unsolicited pong the
  peer sends (so they count with its messages; a refused ping gets no pong; a pong
  answering a ping of ours is free: the broker asked for it), and the reader passes
  a checkpoint every ``YIELD_EVERY`` frames of one read, so a peer flooding frames
  cannot hold the event loop.
* Writing: frames are encoded whole (``protocols.frames``) and queued on the
  :class:`~broker.transport.wire.WireStream`, which never puts half a frame on the wire.
* Closing: ``aclose(code, reason)`` queues the close frame after everything queued
  before it and waits for the peer's close; the caller bounds that wait. Once the
  close is decided, at most ``AFTER_CLOSE_FRAMES`` frames and ``AFTER_CLOSE_BYTES``
  bytes more are read looking for the peer's close; then reading stops for good.

One task at a time reads (the *reader*); another task that needs the peer's input
(``ping_within`` while nobody reads) becomes the reader and keeps the complete
messages it meets, at most ``max_pending`` of them, for ``receive_message``.

Timers cost no task: ``receive_message(deadline)`` returns None when the deadline
passes (or ``wake()`` is called, or a ping given to ``wake_on_pong`` is answered)
before a message is complete, so the session's reader is also its timer. What has
already arrived is taken before a deadline is honoured, so a pong sitting in the
socket buffer is seen before its deadline is judged.

Cancellation never loses input nor leaves half a frame: bytes read are in the parser
and a message being assembled stays; a cancelled ``send_message`` or ``aclose``
leaves its frame queued whole.

Over 400 lines on purpose: one class, the reading state machine (reader hand-off,
stash, deadlines, pong waiters) and the close handshake share its state; the pure
parts are elsewhere already (``protocols.frames``, ``protocols.handshake``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from ..protocols.deflate import DeflateParams
from ..protocols.frames import OP_PING, OP_PONG, binary_frame, encode_frame, text_frame
from ..protocols.handshake import accept_key
from .deflate import BoundedInflate, ConnectionDeflate, SharedDeflater
from .pings import PingBook
from .wire import WireStream

YIELD_EVERY = 32  # frames handled from one read between two checkpoints
# Once our close frame is queued, the peer's answer is awaited through at most this many
# of its frames and bytes; past either, reading stops for good (a flooder's frames are
# not parsed for the whole close wait) and the connection ends once our frames are sent.
AFTER_CLOSE_FRAMES = 64
AFTER_CLOSE_BYTES = 64 * 1024
_WAITED = object()  # the reader's wait ended (deadline or wake) before any data
_LOST = 1006  # no close frame: the peer vanished (never sent on the wire)


class ConnectionClosed(Exception):
    """The WebSocket is closed: ``code`` and ``reason`` of the close frame that ended
    it (1006 if the peer vanished without one); ``by_peer`` if the peer closed first."""

    def __init__(self, code: int, reason: str = "", *, by_peer: bool) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


def choose_subprotocol(offered: tuple[str, ...] | list[str], supported: tuple[str, ...]) -> str | None:
    """The first protocol the client offers that the server supports (the client
    lists them in its order of preference), or None."""
    for name in offered:
        if name in supported:
            return name
    return None


def switching_protocols(key: bytes, subprotocol: str | None = None, extensions: str | None = None) -> bytes:
    """The 101 response accepting the upgrade whose ``Sec-WebSocket-Key`` is ``key``."""
    head = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\n")
    if subprotocol:
        head += f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
    if extensions:
        head += f"Sec-WebSocket-Extensions: {extensions}\r\n"
    return (head + "\r\n").encode("latin-1")


class ServerWebSocket:
    """One accepted WebSocket over a :class:`WireStream` (see the module docstring)."""

    __slots__ = ("wire", "subprotocol", "deflate", "max_message_bytes", "receive_bytes", "control_budget", "closed",
                 "close_sent", "_parser", "_unparsed", "_busy", "_changed", "_fragments", "_fragments_size",
                 "_pending", "_max_pending", "_pings", "_lost", "_failed", "_after_close")

    def __init__(self, wire: WireStream, *, max_message_bytes: int = 65536, receive_bytes: int = 65536,
                 max_pending: int = 4, control_budget: Callable[[], bool] | None = None) -> None:
        self.wire = wire
        self.subprotocol: str | None = None
        self.deflate: ConnectionDeflate | None = None  # permessage-deflate, when negotiated (accept)
        self.max_message_bytes = max_message_bytes
        self.receive_bytes = receive_bytes
        self.control_budget = control_budget
        self.closed: ConnectionClosed | None = None  # set once: why the connection ended (no message after it)
        self.close_sent = False  # our close frame is queued (or the peer is gone): no frame after it
        self._parser = Connection(ConnectionType.SERVER)
        self._unparsed = False  # the parser may hold frames not yet taken
        self._busy = False  # a task is reading (and parsing)
        self._changed: trio.Event | None = None  # made by a task waiting for the reader
        self._fragments: list[str] | list[bytes] | None = None
        self._fragments_size = 0
        self._pending: deque[str | bytes] | None = None  # messages met by a ping waiter
        self._max_pending = max_pending
        self._pings = PingBook()  # pings sent and answered; the reader's wait and wake-ups
        self._lost = False  # the transport is gone
        self._failed = False  # the peer broke the protocol: the parser is done
        self._after_close = [AFTER_CLOSE_FRAMES, AFTER_CLOSE_BYTES]  # what is still read once close_sent

    def accept(self, key: bytes, subprotocol: str | None = None,
               deflate: tuple[SharedDeflater, DeflateParams] | None = None) -> None:
        """Queue the 101 response (cork the wire first to send it with a first frame).
        With ``deflate`` the 101 accepts permessage-deflate: frames from then on are
        compressed through the shared deflater and client messages inflated (bounded)."""
        self.subprotocol = subprotocol
        answer = None
        if deflate is not None:
            shared, params = deflate
            self.deflate = ConnectionDeflate(shared, params)
            self._parser = Connection(ConnectionType.SERVER, extensions=[BoundedInflate(params, self.max_message_bytes)])
            answer = params.response()
        self.wire.write_nowait(switching_protocols(key, subprotocol, answer), force=True)

    def outgoing(self, frames: bytes) -> bytes:
        """``frames`` as this connection sends them: compressed when it negotiated
        permessage-deflate and they are large enough (one deflate per broadcast)."""
        deflate = self.deflate
        return frames if deflate is None else deflate.outgoing(frames)

    # -- receiving -----------------------------------------------------------

    async def receive_message(self, deadline: float = math.inf) -> str | bytes | None:
        """The next whole message (str for text, bytes for binary), or None if
        ``deadline`` (trio time) passes or the reader is woken first. Raises
        ConnectionClosed once the connection is closed (after the close frames were
        exchanged, a protocol error was answered, or the peer vanished)."""
        while True:
            if self._pending:
                self._notify()  # a ping waiter may be waiting for room
                return self._pending.popleft()
            if self.closed is not None:
                raise self._closed_error()
            pings = self._pings
            if pings.take_wake():
                return None
            if self._busy:  # a ping waiter is reading: wait for its step
                with trio.CancelScope(deadline=deadline) as pings.wait:
                    await self._wait_change()
                pings.wait = None
                if pings.take_wake() or trio.current_time() >= deadline:
                    return None
                continue
            message = await self._advance(stash=False, deadline=deadline)
            if message is _WAITED:
                pings.woken = False
                await trio.lowlevel.cancel_shielded_checkpoint()  # even a past deadline yields
                return None
            if message is not None:
                return message  # type: ignore[return-value]

    def wake(self) -> None:
        """Make the pending (or next) ``receive_message`` return None now: its caller
        has a timer to look at. Sync, callable from any task."""
        self._pings.wake()

    def wake_on_pong(self, seq: int) -> None:
        """``wake()`` the reader once ping ``seq`` is answered."""
        self._pings.wake_on_pong(seq)

    async def _advance(self, *, stash: bool, deadline: float = math.inf) -> str | bytes | object | None:
        """As the reader: take parsed frames, else read the wire once (what has arrived
        first, then wait). Returns a completed message, or keeps it in ``_pending``
        when ``stash``; None if none was completed; ``_WAITED`` if the message reader's
        wait ended at ``deadline`` or by ``wake()`` (a ping waiter's wait has neither)."""
        self._busy = True
        try:
            if self._unparsed:
                message = await self._take_frames(stash)
                if message is not None or self._unparsed or self.closed is not None:
                    return message
            size = self.receive_bytes
            if self.close_sent:
                size = min(size, self._after_close[1])
                if size <= 0:
                    self._stop_reading()
                    return None
            try:
                data = self.wire.receive_nowait(size)
                waited = data is None
                if data is None and stash:
                    data = await self.wire.receive_some(size)
                elif data is None:
                    pings = self._pings
                    if pings.woken:
                        return _WAITED
                    with trio.CancelScope(deadline=deadline) as pings.wait:
                        data = await self.wire.receive_some(size)
                    pings.wait = None
                    if data is None:
                        return _WAITED
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._lose()
                return None
            if self.close_sent:
                self._after_close[1] -= len(data)
            self._parser.receive_data(data)
            self._unparsed = True
            if not waited:
                await trio.lowlevel.checkpoint()  # read without waiting: still yield once per read
            return await self._take_frames(stash)
        finally:
            self._pings.wait = None
            self._busy = False
            self._notify()

    async def _take_frames(self, stash: bool) -> str | bytes | None:
        for handled, event in enumerate(self._parser.events(), 1):
            if self.close_sent and not self._lost:
                self._after_close[0] -= 1
                if self._after_close[0] < 0 and type(event) is not CloseConnection:
                    self._stop_reading()  # the rest is never parsed
                    return None
            message = self._on_event(event)
            if message is not None:
                if not stash:
                    return message
                if self._pending is None:
                    self._pending = deque()
                self._pending.append(message)
                if len(self._pending) >= self._max_pending:
                    return None  # the rest waits in the parser until receive_message asks
            if self.closed is not None:
                return None  # what follows (the peer's close, maybe) stays in the parser
            if handled % YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()  # a flood of frames must not hold the loop
        self._unparsed = False
        return None

    def _on_event(self, event: object) -> str | bytes | None:
        kind = type(event)
        if kind is TextMessage or kind is BytesMessage:
            return self._on_data(event)  # type: ignore[arg-type]
        if kind is Ping:
            if (self.control_budget is None or self.control_budget()) and not self.close_sent:
                self._write(encode_frame(OP_PONG, event.payload))  # type: ignore[attr-defined]
        elif kind is Pong:
            # a pong that answers a ping of ours is the broker's own cost (heartbeats, delivery
            # confirmations): free. An unsolicited one counts like a message; it still answers nothing
            if not self._on_pong(event.payload) and self.control_budget is not None:  # type: ignore[attr-defined]
                self.control_budget()
        elif kind is CloseConnection:
            self._on_close(event)  # type: ignore[arg-type]
        return None

    def _on_data(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        if self.close_sent:
            return None  # after our close frame, data is read and dropped
        data = event.data
        if isinstance(data, bytearray):  # wsproto's type allows one; its parser hands out bytes
            data = bytes(data)
        size = len(data) if isinstance(data, bytes) or data.isascii() else len(data.encode("utf-8"))
        fragments = self._fragments
        if fragments is None:
            if size > self.max_message_bytes:
                self._too_big()
                return None
            if event.message_finished:
                return data
            self._fragments, self._fragments_size = [data], size  # type: ignore[assignment]
            return None
        self._fragments_size += size
        if self._fragments_size > self.max_message_bytes:
            self._too_big()
            return None
        fragments.append(data)  # type: ignore[arg-type]
        if not event.message_finished:
            return None
        self._fragments = None
        return "".join(fragments) if isinstance(data, str) else b"".join(fragments)  # type: ignore[arg-type]

    def _too_big(self) -> None:
        self._fragments = None
        self._send_close(1009, f"message larger than {self.max_message_bytes} bytes")

    def _on_pong(self, payload: bytes) -> bool:
        """True if the pong answers a ping of ours not answered yet (at most one pong
        per ping we sent is ever True); an unsolicited pong is allowed and answers nothing."""
        if not payload or len(payload) > 20 or not payload.isdigit():
            return False
        if not self._pings.answer(int(payload)):
            return False
        self._notify()
        return True

    def _on_close(self, event: CloseConnection) -> None:
        state = self._parser.state
        if state is ConnectionState.REMOTE_CLOSING:  # the peer starts the close: answer it
            self.close_sent = True
            self._set_closed(ConnectionClosed(event.code, event.reason or "", by_peer=True))
            self._write(bytes(self._parser.send(CloseConnection(code=event.code))))
        elif state is not ConnectionState.CLOSED:
            # wsproto reports a protocol violation as a close event with its code (1002,
            # 1007); the parser stops there, so nothing more is read
            self._failed = True
            if not self.close_sent:
                self._send_close(event.code, event.reason or "")
        # else: the peer answered our close frame

    # -- sending -------------------------------------------------------------

    def send_frame_nowait(self, frame: bytes, force: bool = False) -> bool:
        """Queue an encoded frame whole; False once the close frame was sent. Raises
        OutboxFull past the wire's bound (unless ``force``), BrokenResourceError if
        the peer is gone."""
        if self.close_sent:
            return False
        self.wire.write_nowait(self.outgoing(frame), force=force)
        return True

    async def send_message(self, data: str | bytes) -> None:
        """Send one message and wait until the kernel has it (backpressure). Raises
        ConnectionClosed once the close frame was sent or the peer is gone.
        Cancelling the wait leaves the frame queued whole."""
        if self.close_sent:
            raise self._closed_error()
        frame = self.outgoing(text_frame(data.encode("utf-8")) if isinstance(data, str) else binary_frame(data))
        try:
            await self.wire.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lose()
            raise self._closed_error() from None

    def _write(self, frame: bytes) -> None:
        try:
            self.wire.write_nowait(frame, force=True)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lose()

    # -- pings ---------------------------------------------------------------

    def ping_nowait(self) -> int:
        """Queue a ping after everything queued so far; its number for ``wait_pong``.
        Raises ConnectionClosed once the close frame was sent."""
        if self.close_sent:
            raise self._closed_error()
        seq = self._pings.next_ping()
        self._write(encode_frame(OP_PING, b"%d" % seq))
        return seq

    async def wait_pong(self, seq: int) -> None:
        """Wait until ping ``seq`` is answered (a pong tells the peer read everything
        queued before the ping). Reads the wire itself if no other task does. Raises
        ConnectionClosed if the connection closes first."""
        while self._pings.answered < seq:
            if self.closed is not None:
                raise self._closed_error()
            if self._busy or (self._pending is not None and len(self._pending) >= self._max_pending):
                await self._wait_change()
            else:
                await self._advance(stash=True)

    async def ping_within(self, seconds: float) -> bool | None:
        """Ping: True if the pong came within ``seconds``, False if not, None if the
        connection closed. Safe to cancel: the ping is queued whole or not at all."""
        try:
            seq = self.ping_nowait()
            with trio.move_on_after(seconds):
                await self.wait_pong(seq)
                return True
        except ConnectionClosed:
            return None
        return False

    @property
    def pings_answered(self) -> int:
        return self._pings.answered

    # -- closing -------------------------------------------------------------

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket: send the close frame (unless sent), wait for the peer's
        (reading and dropping data meanwhile) and until our frames are sent. Unbounded:
        the caller puts a timeout around it, then drops the transport."""
        if not self.close_sent:
            self._send_close(code, reason)
        while not (self._lost or self._failed or self._parser.state is ConnectionState.CLOSED):
            if self._busy:
                await self._wait_change()
            else:
                await self._advance(stash=False)  # data after our close frame is dropped
        if not self._lost:
            try:
                await self.wire.wait_send_all_might_not_block()  # our close frame or our answer to theirs
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _send_close(self, code: int, reason: str) -> None:
        """Queue our close frame: the connection ends for the reader at once."""
        self.close_sent = True
        self._write(bytes(self._parser.send(CloseConnection(code=code, reason=reason or None))))
        self._set_closed(ConnectionClosed(code, reason, by_peer=False))

    def _stop_reading(self) -> None:
        """The peer sent more than :data:`AFTER_CLOSE_FRAMES` / ``_BYTES`` after our close
        frame: read nothing more from it (``aclose`` then only waits for our frames to go)."""
        self._failed = True
        self._unparsed = False

    def _lose(self) -> None:
        self._lost = self.close_sent = True
        self._set_closed(ConnectionClosed(_LOST, "connection lost", by_peer=True))

    def _closed_error(self) -> ConnectionClosed:
        """A fresh exception to raise: the one kept in ``closed`` never gets a
        traceback, which would hold this object's frames in a reference cycle."""
        closed = self.closed or ConnectionClosed(1000, "closing", by_peer=False)
        return ConnectionClosed(closed.code, closed.reason, by_peer=closed.by_peer)

    def _set_closed(self, closed: ConnectionClosed) -> None:
        if self.closed is None:
            self.closed = closed
            self._fragments = None
            self._notify()

    # -- waiting for the reader ----------------------------------------------

    async def _wait_change(self) -> None:
        """Until the reader finishes a step, a pong arrives or the connection closes."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

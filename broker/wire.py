"""The transport under one WebSocket: pre-read bytes in, a bounded byte backlog out.

trio-websocket reads and writes through a ``trio.abc.Stream``. :class:`WireStream` is
that stream, and adds what a broker needs:

* it first replays the bytes the HTTP front end already read (the request head), so
  one port serves both HTTP and WebSocket;
* ``write_nowait(frame)`` queues a whole, already-encoded frame without waiting: on a
  plain TCP socket it hands the bytes straight to the kernel and keeps only what the
  kernel does not take. A room fans out with no task switch per delivery;
* the backlog is bounded (``max_backlog`` bytes): ``write_nowait`` raises
  :class:`OutboxFull` rather than grow it (the caller closes a slow consumer);
* writes are cancel-safe: data is appended whole before anything waits, so a
  cancelled ``send_all`` leaves the frame in the backlog, never half on the wire (the
  trap of cancelling ``send_message`` mid-write). On TLS a write cancelled inside the
  TLS layer marks the stream broken instead.

``flush_forever`` (one task per connection) sends the backlog as the socket drains.
"""

from __future__ import annotations

import os

import trio

_TLS_CHUNK = 64 * 1024


class OutboxFull(Exception):
    """Queuing the frame would take the backlog over its bound."""


class WireStream(trio.abc.HalfCloseableStream):
    def __init__(self, transport: trio.abc.Stream, preread: bytes = b"", max_backlog: int = 1 << 20) -> None:
        self.transport = transport
        self._preread = memoryview(bytes(preread))
        self._backlog = bytearray()
        self.max_backlog = max_backlog
        self._broken: BaseException | None = None
        self._closed = False
        self._flush_lock = trio.Lock()
        self._wakeup = trio.lowlevel.ParkingLot()
        self._fd = transport.socket.fileno() if isinstance(transport, trio.SocketStream) else None
        self.bytes_out = 0  # handed to the kernel (or the TLS layer)
        self.bytes_queued = 0  # accepted by write_nowait/send_all: an offset into the outgoing byte stream

    # -- writing ---------------------------------------------------------

    @property
    def backlog_bytes(self) -> int:
        return len(self._backlog)

    @property
    def failure(self) -> BaseException | None:
        """Why the stream broke (the peer reset it, TLS failed, ...), if it did."""
        return self._broken

    @property
    def usable(self) -> bool:
        return not self._closed and self._broken is None

    def write_nowait(self, data: bytes, *, force: bool = False) -> None:
        """Queue ``data`` whole, in order, without waiting.

        Raises OutboxFull if that would exceed ``max_backlog`` (unless ``force``, used
        for control frames and trio-websocket's own writes), ClosedResourceError after
        aclose, BrokenResourceError once the peer is gone.
        """
        self._check_writable()
        if not force and len(self._backlog) + len(data) > self.max_backlog:
            raise OutboxFull()
        self.bytes_queued += len(data)
        if not self._backlog and self._fd is not None:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._mark_broken(exc)
                raise trio.BrokenResourceError(str(exc)) from exc
            self.bytes_out += sent
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._backlog += data
        self._wakeup.unpark_all()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` (beyond the bound if need be) and wait until the kernel has it.
        Cancelling the wait keeps the data queued: it still goes out, whole."""
        self.write_nowait(bytes(data), force=True)
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self._flush()

    async def flush_forever(self) -> None:
        """Send the backlog whenever there is one, until the stream is closed or broken.
        Run it in the connection's nursery; cancelling it is safe."""
        while self.usable:
            if not self._backlog:
                await self._wakeup.park()
                continue
            try:
                await self._flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def _flush(self) -> None:
        async with self._flush_lock:  # one task drives the socket at a time
            while self._backlog:
                self._check_writable()
                if self._fd is not None:
                    await trio.lowlevel.wait_writable(self._fd)
                    self._check_writable()
                    try:
                        sent = os.write(self._fd, self._backlog)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        self._mark_broken(exc)
                        raise trio.BrokenResourceError(str(exc)) from exc
                    del self._backlog[:sent]
                    self.bytes_out += sent
                else:
                    chunk = bytes(self._backlog[:_TLS_CHUNK])
                    del self._backlog[: len(chunk)]
                    try:
                        await self.transport.send_all(chunk)
                    except BaseException as exc:
                        # cancelled or failed inside the TLS layer: the stream is undefined now
                        self._mark_broken(exc)
                        raise
                    self.bytes_out += len(chunk)

    def _check_writable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("stream broken") from self._broken

    def _mark_broken(self, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = exc
        self._backlog.clear()
        self._wakeup.unpark_all()

    # -- reading ---------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._preread:
            await trio.lowlevel.checkpoint()
            size = len(self._preread) if max_bytes is None else max_bytes
            chunk, self._preread = bytes(self._preread[:size]), self._preread[size:]
            return chunk
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        return await self.transport.receive_some(max_bytes)

    # -- closing ---------------------------------------------------------

    async def send_eof(self) -> None:
        await self._flush()
        if isinstance(self.transport, trio.abc.HalfCloseableStream):
            await self.transport.send_eof()

    async def aclose(self) -> None:
        """Close the transport at once; unsent backlog is dropped (flush first to keep it)."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._backlog.clear()
        self._wakeup.unpark_all()
        await trio.aclose_forcefully(self.transport)

    async def flush_with_timeout(self, seconds: float) -> bool:
        """Try to send the whole backlog within ``seconds`` (shielded: usable during
        cleanup). True if it all went out."""
        with trio.move_on_after(seconds, shield=True):
            try:
                await self._flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            return True
        return False

"""The transport under one WebSocket: pre-read bytes in, a bounded byte backlog out.

:class:`WireStream` is a ``trio.abc.Stream`` (the server WebSocket in
``broker/transport/websocket.py`` and trio-websocket on proxy upstream legs use it) that adds
what a broker needs:

* it first replays the bytes the HTTP front end read past the request head (a
  client's first frames), so one port serves both HTTP and WebSocket;
* ``write_nowait(frame)`` queues a whole, already-encoded frame without waiting: on a
  plain TCP socket it hands the bytes straight to the kernel and keeps only what the
  kernel does not take. A room fans out with no task switch per delivery;
* the backlog is bounded (``max_backlog`` bytes): ``write_nowait`` raises
  :class:`OutboxFull` rather than grow it (the caller closes a slow consumer);
* writes are cancel-safe: data is appended whole before anything waits, so a
  cancelled ``send_all`` leaves the frame in the backlog, never half on the wire (the
  trap of cancelling ``send_message`` mid-write). On TLS a write cancelled inside the
  TLS layer marks the stream broken instead.

A flush task, started through ``spawn`` only while there is a backlog, sends it as
the socket drains; an idle connection costs no task. On a plain TCP socket reads go
straight to the file descriptor too (``os.read`` after ``wait_readable``): an idle
reader then holds five coroutine frames instead of nine.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import trio

_TLS_CHUNK = 64 * 1024
_READ_SIZE = 64 * 1024


class OutboxFull(Exception):
    """Queuing the frame would take the backlog over its bound."""


class WireStream(trio.abc.HalfCloseableStream):
    __slots__ = ("transport", "_preread", "_backlog", "max_backlog", "_broken", "_closed", "_flush_lock",
                 "_fd", "bytes_out", "bytes_queued", "_spawn", "_flushing", "_corked")

    def __init__(self, transport: trio.abc.Stream, preread: bytes = b"", max_backlog: int = 1 << 20,
                 spawn: Callable[[Callable[[], Awaitable[None]]], None] | None = None) -> None:
        """``spawn`` (e.g. ``nursery.start_soon``) starts a flush task whenever a backlog
        appears; the task ends once the backlog is sent, so an idle connection has none.
        Without it, a backlog is sent only by the next ``send_all``."""
        self.transport = transport
        self._preread = bytes(preread)
        self._backlog = bytearray()
        self.max_backlog = max_backlog
        self._broken: BaseException | None = None
        self._closed = False
        self._flush_lock: trio.Lock | None = None  # made on first contention: most connections never need it
        self._fd = transport.socket.fileno() if isinstance(transport, trio.SocketStream) else None
        self.bytes_out = 0  # handed to the kernel (or the TLS layer)
        self.bytes_queued = 0  # accepted by write_nowait/send_all: an offset into the outgoing byte stream
        self._spawn = spawn
        self._flushing = False
        self._corked = False

    # -- writing ---------------------------------------------------------

    @property
    def backlog_bytes(self) -> int:
        return len(self._backlog)

    @property
    def failure(self) -> BaseException | None:
        """Why the stream broke (the peer reset it, TLS failed, ...), if it did."""
        return self._broken

    def write_nowait(self, data: bytes, *, force: bool = False) -> None:
        """Queue ``data`` whole, in order, without waiting.

        Raises OutboxFull if that would exceed ``max_backlog`` (unless ``force``, used
        for control frames and the handshake), ClosedResourceError after
        aclose, BrokenResourceError once the peer is gone.
        """
        if self._closed or self._broken is not None:  # _check_writable, inlined: this is the fan-out hot path
            self._check_writable()
        backlog = self._backlog
        if backlog and not force and len(backlog) + len(data) > self.max_backlog:
            raise OutboxFull()
        self.bytes_queued += len(data)
        rest: bytes | memoryview = data
        if not backlog and self._fd is not None and not self._corked:
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
            rest = memoryview(data)[sent:]
        self._backlog += rest
        if not self._corked and not self._flushing and self._spawn is not None:
            self._flushing = True
            self._spawn(self._flush_task)

    def cork(self) -> None:
        """Hold writes in the backlog (no syscall) until :meth:`uncork`: several small
        writes, e.g. a handshake response and a greeting, then go out in one."""
        self._corked = True

    def uncork(self) -> None:
        self._corked = False
        if self._backlog and self._fd is not None and not self._flushing:
            try:
                sent = os.write(self._fd, self._backlog)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._mark_broken(exc)
                return
            del self._backlog[:sent]
            self.bytes_out += sent
        if self._backlog and not self._flushing and self._spawn is not None:
            self._flushing = True
            self._spawn(self._flush_task)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` (beyond the bound if need be) and wait until the kernel has it
        (while corked: until queued). Cancelling the wait keeps the data queued: it
        still goes out, whole."""
        self.write_nowait(bytes(data), force=True)
        if self._corked:
            await trio.lowlevel.checkpoint()
            return
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self._flush()

    async def _flush_task(self) -> None:
        try:
            await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._flushing = False

    async def _flush(self) -> None:
        if self._flush_lock is None:
            self._flush_lock = trio.Lock()
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

    # -- reading ---------------------------------------------------------

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """What has already arrived, without waiting: up to ``max_bytes`` (b"" at end of
        stream), or None if nothing has, or if this transport cannot tell without
        waiting (not a plain TCP socket). Not a checkpoint. Raises as receive_some."""
        if self._preread:
            chunk, self._preread = self._preread[:max_bytes], self._preread[max_bytes:]
            return chunk
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._fd is None:
            return None
        try:
            return os.read(self._fd, max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` (b"" at end of stream). Always a checkpoint; cancelling
        it loses nothing. Raises BrokenResourceError if the peer reset the connection,
        ClosedResourceError after aclose."""
        if self._preread:
            await trio.lowlevel.checkpoint()
            size = len(self._preread) if max_bytes is None else max_bytes
            chunk, self._preread = self._preread[:size], self._preread[size:]
            return chunk
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        fd = self._fd
        if fd is None:
            received = await self.transport.receive_some(max_bytes)  # trio's contract: bytes | bytearray
            return received if isinstance(received, bytes) else bytes(received)
        size = max_bytes or _READ_SIZE
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        while True:
            await trio.lowlevel.wait_readable(fd)  # ClosedResourceError if the socket is closed meanwhile
            try:
                return os.read(fd, size)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc

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
        await trio.aclose_forcefully(self.transport)

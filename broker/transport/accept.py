"""Accepting connections within the process's descriptor budget.

``accept_connections`` replaces ``trio.serve_listeners``, whose answer to a full
descriptor table (EMFILE, ENFILE, and ENOBUFS/ENOMEM) is an ERROR with a traceback
every 100 ms for as long as it lasts. Here the first failure logs one warning, the
loop backs off (10 ms doubling to 1 s, or less: a connection that closes frees a
descriptor and wakes it at once), a summary follows at most once a minute, and the
first success after 5 s without a failure logs how many attempts failed in all.
Connections already open keep being served throughout.

``peer_address`` and ``discard_unread`` are what the front needs of an accepted
socket: who it is, and how to close it without a reset destroying the answer.

``raise_descriptor_limit`` lifts the soft open-file limit toward what the configured
connection limits can use, so that those limits, not EMFILE, are what clients meet.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import trio

log = logging.getLogger("broker.accept")

CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Episode:
    """A condition that comes and goes (accept failing, a connection bound reached),
    logged as a warning when it first occurs, then at most once per ``interval`` seconds
    with how often it recurred, and once when it is over (``quiet`` seconds without
    it): never a line per occurrence, however hostile the load or flappy the recovery.
    The caller passes the time in."""

    __slots__ = ("logger", "what", "interval", "quiet", "count", "_unreported", "_reported_at", "_last")

    def __init__(self, logger: logging.Logger, what: str, interval: float = 60.0, quiet: float = 5.0) -> None:
        self.logger = logger
        self.what = what  # "accept failed", "HTTP connection refused"
        self.interval = interval
        self.quiet = quiet
        self.count = 0  # occurrences since it started
        self._unreported = 0
        self._reported_at = self._last = 0.0

    def occurred(self, detail: str, now: float) -> None:
        self.count += 1
        self._last = now
        if self.count == 1:
            self.logger.warning("%s (%s)", self.what, detail)
            self._reported_at = now
            return
        self._unreported += 1
        if now - self._reported_at >= self.interval:
            self.logger.warning("%s %d more times in %.0f s (latest: %s)", self.what, self._unreported,
                                now - self._reported_at, detail)
            self._unreported = 0
            self._reported_at = now

    def over(self, now: float) -> None:
        """It did not occur this time: after ``quiet`` seconds without it, the episode ends."""
        if self.count and now - self._last >= self.quiet:
            self.logger.warning("%s %d times in all; over now", self.what, self.count)
            self.count = self._unreported = 0


Handler = Callable[[Any], Awaitable[object]]


async def accept_connections(handler: Handler, listeners: Sequence[trio.abc.Listener[Any]], *,
                             handler_nursery: trio.Nursery, min_backoff: float = 0.01,
                             max_backoff: float = 1.0) -> NoReturn:
    """Accept on every listener until cancelled; run ``handler(stream)`` for each
    connection in ``handler_nursery`` and close the stream after it. Listeners are
    closed on the way out. An accept error other than lack of resources propagates
    (a handler's exception does too: handlers must contain their own failures)."""
    freed = [trio.Event()]  # set whenever a connection ends: a descriptor came free

    async def run_handler(stream: Any) -> None:
        try:
            await handler(stream)
        finally:
            await trio.aclose_forcefully(stream)
            freed[0].set()

    async def accept_from(listener: trio.abc.Listener[Any]) -> None:
        episode = Episode(log, "accept failed, backing off (connections already open are served)")
        delay = min_backoff
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in CAPACITY_ERRNOS:
                        raise
                    episode.occurred(f"{errno.errorcode[exc.errno]}: {os.strerror(exc.errno)}", trio.current_time())
                    if freed[0].is_set():
                        freed[0] = trio.Event()
                    with trio.move_on_after(delay):
                        await freed[0].wait()
                    delay = min(delay * 2, max_backoff)
                    continue
                episode.over(trio.current_time())
                delay = min_backoff
                handler_nursery.start_soon(run_handler, stream)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_from, listener)
    raise AssertionError("accept loops end only by raising")  # pragma: no cover


def raise_descriptor_limit(wanted: int, *, warn: bool = True) -> int:
    """Raise the soft RLIMIT_NOFILE toward ``wanted`` (never above the hard limit, never
    lower); return the soft limit in force. Logs a warning (unless ``warn`` is false: the
    caller says it) when it stays below ``wanted``: clients would then meet EMFILE before
    the connection limits."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not a POSIX system
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("could not raise the open-file limit to %d: %s", target, exc)
    if warn and soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("open-file limit %d is below the %d descriptors the connection limits allow: "
                    "raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower [limits] max_connections "
                    "by %d (BROKER_LIMITS_MAX_CONNECTIONS)", soft, wanted, wanted - soft)
    return soft if soft != resource.RLIM_INFINITY else wanted


def peer_address(stream: trio.abc.Stream) -> tuple[str, str]:
    """("host:port", "host") of the peer, for logs and per-address limits."""
    try:
        transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        if not isinstance(transport, trio.SocketStream):
            return "?", "?"
        host, port, *_ = transport.socket.getpeername()
        return f"{host}:{port}", str(host)
    except Exception:
        return "?", "?"


def discard_unread(stream: trio.SocketStream) -> None:
    """Drop what the client already sent, without waiting: a socket closed with unread
    data is reset, and a reset can destroy our answer before the client reads it."""
    fd = stream.socket.fileno()
    for _ in range(16):  # at most 1 MiB, from the kernel's buffer only
        try:
            if not os.read(fd, 65536):
                return
        except OSError:  # BlockingIOError: nothing more has arrived
            return

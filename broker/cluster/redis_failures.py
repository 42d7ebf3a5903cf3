"""What counts as Redis being unreachable, and how a failure is named in logs and
``/health`` (shared by the node's loops, its control client and the master locator)."""

from __future__ import annotations

import anyio
import trio
from coredis.exceptions import ReadOnlyError, RedisError

# What a lost connection raises inside coredis (its anyio streams included). ReadOnlyError
# (a RedisError already) is named on its own: a master demoted by a failover answers
# writes with READONLY, and that is a connection failure (the node looks for the new one).
FAILURES = (RedisError, ReadOnlyError, OSError, trio.TooSlowError, anyio.ClosedResourceError,
            anyio.BrokenResourceError)


def is_connection_failure(exc: BaseException) -> bool:
    """True if ``exc`` (or every leaf of an exception group) is a Redis/network failure."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_connection_failure(e) for e in exc.exceptions)
    return isinstance(exc, FAILURES)


def describe(exc: BaseException) -> str:
    """One line naming the failure, without the URL or a password."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

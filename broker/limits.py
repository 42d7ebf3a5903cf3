"""Abuse limits, pure and clock-agnostic: token bucket, strike counter, origin check.

The caller passes the time in, so virtual-time tests drive them exactly.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from urllib.parse import urlsplit


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one per message."""

    __slots__ = ("rate", "burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class Strikes:
    """True once ``limit`` strikes fall within ``window`` seconds."""

    __slots__ = ("limit", "window", "_times")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque(maxlen=limit)

    def strike(self, now: float) -> bool:
        self._times.append(now)
        return len(self._times) == self.limit and now - self._times[0] <= self.window


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Requests without Origin (not from a browser) and same-origin requests pass;
    others only if ``allowed`` lists them (exact or glob, ``*`` for any)."""
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    if any(pattern == "*" or fnmatch.fnmatchcase(origin, pattern.lower().rstrip("/")) for pattern in allowed):
        return True
    if host is None or origin == "null":
        return False
    return urlsplit(origin).netloc == host.strip().lower()

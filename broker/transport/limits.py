"""Abuse limits, pure and clock-agnostic: token bucket, strike counter, origin check,
connection slots.

The caller passes the time in, so virtual-time tests drive them exactly.
"""

from __future__ import annotations

import fnmatch
from collections import Counter, deque
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


class ConnectionSlots:
    """Connections counted in total and per address, each against its bound. ``take``
    never waits: when a bound is reached it refuses, and the caller closes the new
    connection at once (the ones already served are never displaced). Addresses in
    ``unlimited`` (trusted reverse proxies, which carry many clients) count only
    toward the total."""

    __slots__ = ("max_total", "max_per_address", "unlimited", "total", "_per_address")

    def __init__(self, max_total: int, max_per_address: int, unlimited: tuple[str, ...] = ()) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.unlimited = frozenset(unlimited)
        self.total = 0
        self._per_address: Counter[str] = Counter()

    def take(self, address: str) -> str | None:
        """Count a new connection from ``address``; None if taken, else which bound
        refused it: ``"total"`` or ``"address"`` (nothing is counted then)."""
        if self.total >= self.max_total:
            return "total"
        if address not in self.unlimited and self._per_address[address] >= self.max_per_address:
            return "address"
        self.total += 1
        self._per_address[address] += 1
        return None

    def give_back(self, address: str) -> None:
        """The connection taken for ``address`` ended (or moved on): uncount it."""
        self.total -= 1
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]

    def from_address(self, address: str) -> int:
        return self._per_address.get(address, 0)

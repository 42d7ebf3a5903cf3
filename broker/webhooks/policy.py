"""When to try a webhook again (pure): which answers are worth another attempt, and
how long to wait (exponential backoff with full jitter, or the receiver's
``Retry-After``)."""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({408, 425, 429})  # besides every 5xx


def worth_retrying(status: int | None) -> bool:
    """``None`` (a timeout or connection error), 408/425/429 and 5xx: try again. Any
    other non-2xx (a 3xx included: redirects are not followed) is the receiver's
    refusal, and the event is dead-lettered at once (``POST .../retry`` sends it again)."""
    return status is None or status in RETRY_STATUSES or status >= 500


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (``attempt`` 0 after the
    first failure), so receivers coming back are not hit by every sender at once."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 60)))


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def next_delay(attempt: int, status: int | None, retry_after_header: str | None, now: float,
               base: float, cap: float, rng: random.Random) -> float:
    """The wait before the next attempt: the receiver's Retry-After (on 429 or 503)
    when it gives one, else :func:`backoff`."""
    if status in (429, 503):
        asked = retry_after(retry_after_header, now)
        if asked is not None:
            return asked
    return backoff(attempt, base, cap, rng)

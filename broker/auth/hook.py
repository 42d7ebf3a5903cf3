"""The auth hook (``[auth] hook_url``): the application's backend says who a connection
without a token is, from its session cookie (docs/PROTOCOL.md section 2).

For an upgrade that brings no token but some of the allow-listed headers
(``[auth] hook_headers``, default Cookie and Authorization), the broker POSTs to the
backend, as JSON: those headers, the cookies parsed from an allow-listed Cookie header,
the path, the query, the client's address and the origin. The backend answers

- 200 ``{"userId": "...", "jobs"?: [...] | "*", "expiresAt"?: ISO time or Unix seconds,
  "claims"?: {...}}``: the connection is that user; with ``expiresAt`` it expires like a
  JWT, and before then the broker asks the hook again (the same request) to extend it;
- 401 or 403: refused (UNAUTHORIZED, close 1008).

Anything else (a timeout, 5xx, an unreadable answer) is :class:`AuthUnavailable`: the
upgrade is answered 503 (try again later), never accepted. At most
``hook_max_concurrency`` calls run at once; waiting for a slot counts in
``hook_timeout``. Answers (200 and refusals) are cached for ``hook_cache_ttl`` seconds
under a SHA-256 digest of what was sent (the cookie, never stored in clear as a key),
and concurrent upgrades with the same digest share one call: a reconnect storm with one
cookie makes a bounded number of calls. No cookie, header value or token is ever
logged; the hook URL is logged redacted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from ..config.loader import AuthConfig
from ..observability.redact import redact
from ..protocols.chat import SYSTEM_SENDER
from ..protocols.text import has_lone_surrogate, is_user_id
from .errors import AuthError, AuthUnavailable
from .tokens import Principal

log = logging.getLogger("broker.auth")

MAX_ANSWER_BYTES = 65536


@attrs.frozen
class HookRequest:
    """What the hook is asked about one upgrade (values never in a repr or a log)."""

    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)  # allow-listed, as (configured name, value)
    path: str
    query: str = attrs.field(repr=False)
    client: str
    origin: str | None

    @property
    def digest(self) -> bytes:
        """The cache key: what decides the answer, hashed (the client address is left out:
        a reconnect comes from another port, a phone from another address)."""
        return hashlib.sha256(json.dumps([self.headers, self.path, self.query, self.origin]).encode()).digest()

    def body(self) -> bytes:
        cookies: dict[str, str] = {}
        for name, value in self.headers:
            if name.lower() == "cookie":
                try:
                    parsed = SimpleCookie()
                    parsed.load(value)
                    cookies.update({key: morsel.value for key, morsel in parsed.items()})
                except CookieError:
                    pass  # the raw header is sent as well: the backend can read it itself
        return json.dumps({"headers": dict(self.headers), "cookies": cookies, "path": self.path,
                           "query": self.query, "clientAddress": self.client, "origin": self.origin}).encode()


def parse_expiry(value: object) -> float | None:
    """``expiresAt`` as Unix seconds: ISO 8601 (with a zone; Z allowed) or a number."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("expiresAt is not an ISO 8601 time") from None
        if moment.tzinfo is None:
            raise ValueError("expiresAt needs a time zone (e.g. Z)")
        return moment.timestamp()
    raise ValueError("expiresAt must be an ISO 8601 time or Unix seconds")


def principal_from_answer(answer: object, request: HookRequest, default_jobs: Sequence[str]) -> Principal:
    """The principal a 200 answer names; ValueError if it is not a usable answer."""
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    user = answer.get("userId")
    if isinstance(user, int) and not isinstance(user, bool):
        user = str(user)
    if not is_user_id(user) or has_lone_surrogate(answer):  # the rules a JWT's sub follows
        raise ValueError("the answer has no usable userId")
    if user == SYSTEM_SENDER:
        raise ValueError(f'userId "{SYSTEM_SENDER}" is reserved for messages of the server API')
    jobs_value = answer.get("jobs")
    if jobs_value is None:
        jobs = tuple(default_jobs)
    elif jobs_value == "*":
        jobs = ("*",)
    elif isinstance(jobs_value, list) and all(isinstance(j, str) for j in jobs_value):
        jobs = tuple(jobs_value)
    else:
        raise ValueError('"jobs" must be a list of strings or "*"')
    claims = answer.get("claims", {})
    if claims is None:
        claims = {}
    if not isinstance(claims, dict):
        raise ValueError('"claims" must be an object')
    return Principal(user, "hook", jobs, claims, expires_at=parse_expiry(answer.get("expiresAt")),
                     hook_request=request)


class AuthHook:
    """Calls ``[auth] hook_url``; :meth:`run` holds its HTTP connection pool."""

    def __init__(self, config: AuthConfig) -> None:
        self.url = config.hook_url
        self._allowed = {name.lower(): name for name in config.hook_headers}
        self._default_jobs = tuple(config.jwt_default_jobs)
        self._timeout = config.hook_timeout
        self._concurrency = config.hook_max_concurrency
        self._slots = trio.CapacityLimiter(config.hook_max_concurrency)
        self._ttl = config.hook_cache_ttl
        self._cache_size = config.hook_cache_size
        self._cache: dict[bytes, tuple[float, Principal | AuthError]] = {}  # digest -> (until, answer)
        self._calls_in_flight: dict[bytes, trio.Event] = {}
        self._client: httpx.AsyncClient | None = None
        self.calls = 0
        self._failing = False  # in an outage: warned once already

    def request_from(self, headers: Iterable[tuple[bytes, bytes]], target: str, client: str) -> HookRequest | None:
        """What to ask about an upgrade, or None when it carries no allow-listed header
        (nothing to decide on: it may still send an ``auth`` frame)."""
        chosen: list[tuple[str, str]] = []
        origin: str | None = None
        for name, value in headers:
            lowered = name.decode("latin-1").lower()
            if lowered == "origin":
                origin = value.decode("latin-1")
            configured = self._allowed.get(lowered)
            if configured is not None:
                chosen.append((configured, value.decode("latin-1")))
        if not chosen:
            return None
        parts = urlsplit(target)
        return HookRequest(tuple(sorted(chosen)), parts.path, parts.query, client, origin)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the connection pool to the backend until cancelled."""
        limits = httpx.Limits(max_connections=self._concurrency, max_keepalive_connections=16)
        async with httpx.AsyncClient(timeout=self._timeout, limits=limits, follow_redirects=False) as client:
            self._client = client
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._client = None

    async def identify(self, request: HookRequest, fresh: bool = False) -> Principal:
        """The principal the backend names for ``request`` (cached; ``fresh``: ask again,
        as a refresh does). Raises AuthError if refused, AuthUnavailable if it cannot be
        asked now. Cancelling it abandons the call (another caller waiting on the same
        digest then makes its own)."""
        digest = request.digest
        while True:
            cached = None if fresh else self._cached(digest)
            if cached is not None:
                if isinstance(cached, AuthError):
                    raise cached
                return cached
            in_flight = self._calls_in_flight.get(digest)
            if in_flight is None:
                break
            with trio.move_on_after(self._timeout):
                await in_flight.wait()
            if not in_flight.is_set():
                raise AuthUnavailable("auth hook timed out")
            fresh = False  # that call's answer is fresh; if it failed (not cached), we make our own
        done = self._calls_in_flight[digest] = trio.Event()
        try:
            answer = await self._call(request)
        finally:
            del self._calls_in_flight[digest]
            done.set()
        self._remember(digest, answer)
        if isinstance(answer, AuthError):
            raise answer
        return answer

    def _cached(self, digest: bytes) -> Principal | AuthError | None:
        entry = self._cache.get(digest)
        if entry is None:
            return None
        if entry[0] <= trio.current_time():
            del self._cache[digest]
            return None
        return entry[1]

    def _remember(self, digest: bytes, answer: Principal | AuthError) -> None:
        if self._ttl <= 0:
            return
        if len(self._cache) >= self._cache_size:  # the oldest entry goes first
            del self._cache[next(iter(self._cache))]
        self._cache[digest] = (trio.current_time() + self._ttl, answer)

    async def _call(self, request: HookRequest) -> Principal | AuthError:
        """One POST; a refusal is returned, unavailability raised (and logged once per
        outage: a reconnect storm against a failing backend does not flood the log)."""
        client = self._client
        if client is None:
            raise AuthUnavailable("auth hook not running")
        try:
            with trio.fail_after(self._timeout):
                async with self._slots:
                    self.calls += 1
                    response = await client.post(self.url, content=request.body(),
                                                 headers={"Content-Type": "application/json"})
        except trio.TooSlowError:
            raise self._unavailable(f"no answer within {self._timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise self._unavailable(f"unreachable ({type(exc).__name__})") from None
        if response.status_code in (401, 403):
            self._answered()
            return AuthError(f"auth hook refused: HTTP {response.status_code}")
        if response.status_code != 200:
            raise self._unavailable(f"answered HTTP {response.status_code}")
        try:
            if len(response.content) > MAX_ANSWER_BYTES:
                raise ValueError("the answer is larger than 64 KiB")
            principal = principal_from_answer(json.loads(response.content), request, self._default_jobs)
        except json.JSONDecodeError:
            raise self._unavailable("answer is not JSON") from None
        except ValueError as exc:
            raise self._unavailable(f"unusable answer: {exc}") from None
        self._answered()
        if principal.expires_at is not None and principal.expires_at <= time.time():
            return AuthError("auth hook answer expired already")
        return principal

    def _unavailable(self, why: str) -> AuthUnavailable:
        if not self._failing:
            self._failing = True
            log.warning("auth hook %s %s: connections without a token get 503 until it answers",
                        redact(self.url), why)
        return AuthUnavailable(f"auth hook {why}")

    def _answered(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("auth hook %s answers again", redact(self.url))

    def describe(self) -> dict[str, Any]:
        return {"url": redact(self.url), "calls": self.calls, "cached": len(self._cache)}

"""Keys from an identity provider's JWKS document (RFC 7517), fetched on trio.

:class:`JwksKeys` keeps the keys of the last good answer, by ``kid``. Looking a key up
(:meth:`JwksKeys.key_for`) is synchronous and does no I/O: a connect with a cached key
costs what a connect with a PEM key costs. The document is fetched with httpx on trio
(never PyJWKClient's blocking urllib on the event loop):

- at start, then again when the answer's ``Cache-Control: max-age`` runs out (kept
  within ``[auth] jwks_cache_min`` .. ``jwks_cache_max``), by :meth:`JwksKeys.run`;
- when a token names a ``kid`` the cache lacks (a key added by a rotation), by
  :meth:`JwksKeys.refetch_for_unknown_key`, at most once per ``jwks_min_refetch``
  whatever the tokens say: random ``kid``\\ s from an attacker cause no fetch storm.
  Concurrent callers share one fetch.

A failed fetch keeps the keys already cached (they keep working) and is retried; with
no keys at all, :meth:`key_for` raises :class:`KeysUnavailable` (the connection gets
1013 / 503: try again later). An outage is logged once when it starts and once when it
ends. A later answer replaces the whole set: a key the provider removed is refused
from then on.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterable
from typing import Any

import attrs
import httpx
import jwt
import trio

from .errors import AuthError, KeysUnavailable, UnknownKey

log = logging.getLogger("broker.auth")

DEFAULT_MAX_AGE = 300.0  # an answer without Cache-Control max-age: refetched after this (within the bounds)
MAX_DOCUMENT_BYTES = 1 << 20

# algorithm -> (key type, curve or None): what a key must be to verify it
_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "EdDSA": ("OKP", None),
}
_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


@attrs.frozen
class JwksKey:
    """One verification key of the set."""

    kid: str
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own "alg": when set, the only algorithm it verifies
    key: Any = attrs.field(repr=False)  # a cryptography public key

    def fits(self, alg: str) -> bool:
        kty, crv = _KEY_TYPES.get(alg, ("", None))
        return (self.alg is None or self.alg == alg) and self.kty == kty and (crv is None or self.crv == crv)


@attrs.frozen
class JwksState:
    """What ``broker check-config``, ``/health`` and ``broker doctor`` report."""

    url: str
    kids: tuple[str, ...]
    age: float | None  # seconds since the last good answer; None: none yet
    error: str | None  # why the last fetch failed; None once one succeeds
    fetches: int

    def as_dict(self) -> dict[str, Any]:
        return {"keys": len(self.kids), "kids": list(self.kids),
                "age": None if self.age is None else round(self.age, 1), "error": self.error}


def parse_jwks(document: bytes, algorithms: Iterable[str]) -> tuple[dict[str, tuple[JwksKey, ...]], int]:
    """The signature keys of a JWKS ``document`` usable with ``algorithms``, by kid
    (keys without one under ""), and how many keys were skipped. Raises ValueError if
    the document is not a JWKS."""
    try:
        data = json.loads(document)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("the answer is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('the answer has no "keys" list (is this the JWKS URL, e.g. .../protocol/openid-connect/certs?)')
    allowed = set(algorithms)
    usable_types = {_KEY_TYPES[a][0] for a in allowed if a in _KEY_TYPES}
    keys: dict[str, list[JwksKey]] = {}
    skipped = 0
    for entry in data["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") not in usable_types:
            skipped += 1
            continue
        alg = entry.get("alg")
        if alg is not None and alg not in allowed:
            skipped += 1
            continue
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            skipped += 1
            continue
        if hasattr(key, "public_key"):  # a private key published by mistake: verify with its public half
            key = key.public_key()
        kid_value = entry.get("kid")
        kid = kid_value if isinstance(kid_value, str) else ""
        keys.setdefault(kid, []).append(JwksKey(kid, entry["kty"], entry.get("crv"), alg, key))
    return {kid: tuple(found) for kid, found in keys.items()}, skipped


def max_age(cache_control: str | None) -> float | None:
    """The max-age of a Cache-Control header (0 for no-store / no-cache), or None."""
    if not cache_control:
        return None
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0.0
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else None


class JwksKeys:
    """The key set of ``[auth] jwks_url``; see the module docstring."""

    def __init__(self, url: str, algorithms: Iterable[str], *, min_refetch: float = 30.0, cache_min: float = 60.0,
                 cache_max: float = 3600.0, timeout: float = 5.0) -> None:
        self.url = url
        self._algorithms = tuple(a for a in algorithms if a in _KEY_TYPES)
        self._min_refetch = min_refetch
        self._cache_min, self._cache_max = cache_min, cache_max
        self._timeout = timeout
        self._keys: dict[str, tuple[JwksKey, ...]] = {}
        self._fetched_wall: float | None = None  # time.time() of the last good answer
        self._fresh_until = -math.inf  # trio time: refetch from then on
        self._last_unknown_fetch = -math.inf  # trio time of the last fetch an unknown kid started
        self._fetching: trio.Event | None = None  # set when the fetch in flight ends
        self._error: str | None = None
        self.cache_lifetime = 0.0  # seconds the last good answer is kept (its max-age, within the bounds)
        self._failing = False  # in an outage episode: warned once already
        self.fetches = 0

    # -- looking up (sync, no I/O) ------------------------------------------------

    def key_for(self, kid: str | None, alg: str) -> JwksKey:
        """The cached key for a token's ``kid`` and ``alg``. Raises KeysUnavailable with
        no keys at all, UnknownKey if none fits (a refetch may find it), AuthError for a
        token without a kid when several keys could fit."""
        keys = self._keys
        if not keys:
            raise KeysUnavailable("no JWKS keys yet: the identity provider's JWKS could not be fetched")
        if kid is None:
            fitting = [key for found in keys.values() for key in found if key.fits(alg)]
            if len(fitting) == 1:
                return fitting[0]
            raise AuthError("JWT has no kid and the JWKS has no single key for its algorithm")
        found = keys.get(kid)
        if found is None:
            raise UnknownKey("JWT kid is not in the JWKS")
        for key in found:
            if key.fits(alg):
                return key
        raise AuthError("JWT algorithm does not fit the key its kid names")

    @property
    def refetch_at(self) -> float:
        """The trio time of the next scheduled fetch."""
        return self._fresh_until

    def state(self) -> JwksState:
        age = None if self._fetched_wall is None else max(0.0, time.time() - self._fetched_wall)
        kids = tuple(sorted(k or "(no kid)" for k in self._keys))
        return JwksState(self.url, kids, age, self._error, self.fetches)

    # -- fetching ------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch now (started once the first attempt ended, whatever its outcome), then
        again whenever the cached answer is due; failures are retried every
        ``jwks_min_refetch`` seconds (every 5 s while no key is cached; at least 1 s).
        Runs until cancelled."""
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep_until(self._fresh_until)
            await self.refresh()

    async def refetch_for_unknown_key(self) -> bool:
        """A token named a kid the cache lacks: fetch again unless an unknown kid made
        one less than ``jwks_min_refetch`` ago (then False; the scheduled fetches do not
        count: a rotation right after one is still found). Joins a fetch in flight."""
        if self._fetching is not None:
            await self._fetching.wait()
            return True
        now = trio.current_time()
        if now - self._last_unknown_fetch < self._min_refetch:
            return False
        self._last_unknown_fetch = now
        await self.refresh()
        return True

    async def refresh(self) -> None:
        """Fetch the document once (concurrent callers share it). A failure keeps the
        cached keys; it is recorded in :meth:`state`, never raised. Cancellation
        leaves the cache as it was."""
        if self._fetching is not None:
            await self._fetching.wait()
            return
        done = self._fetching = trio.Event()
        now = trio.current_time()
        self.fetches += 1
        try:
            keys, cache_control = await self._fetch()
        except (OSError, ValueError, trio.TooSlowError) as exc:
            self._failed(now, _describe(exc))
        else:
            lifetime = max_age(cache_control)
            lifetime = DEFAULT_MAX_AGE if lifetime is None else lifetime
            self._keys = keys
            self._fetched_wall = time.time()
            self.cache_lifetime = min(self._cache_max, max(self._cache_min, lifetime))
            self._fresh_until = now + self.cache_lifetime
            self._error = None
            if self._failing:
                self._failing = False
                log.warning("JWKS %s reachable again: %d key(s)", self.url, sum(map(len, keys.values())))
        finally:
            self._fetching = None
            done.set()

    def _failed(self, now: float, why: str) -> None:
        self._error = why
        # without any key every JWT connection is refused: try again sooner
        retry = self._min_refetch if self._keys else min(self._min_refetch, 5.0)
        self._fresh_until = now + max(1.0, retry)
        if not self._failing:
            self._failing = True
            cached = sum(map(len, self._keys.values()))
            log.warning("JWKS %s not fetched (%s): %s", self.url, why,
                        f"the {cached} cached key(s) keep working" if cached else
                        "no keys: JWT connections are refused with 1013 / 503 until it answers")

    async def _fetch(self) -> tuple[dict[str, tuple[JwksKey, ...]], str | None]:
        """The usable keys of one answer and its Cache-Control; ValueError (or OSError,
        TooSlowError) if there are none."""
        host = httpx.URL(self.url).host
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        try:
            with trio.fail_after(self._timeout):
                async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False, trust_env=not loopback) \
                        as client, client.stream("GET", self.url, headers={"Accept": "application/json"}) as response:
                    if response.status_code != 200:
                        raise ValueError(f"HTTP {response.status_code}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_DOCUMENT_BYTES:
                            raise ValueError("the answer is larger than 1 MiB")
                    cache_control = response.headers.get("cache-control")
        except httpx.TimeoutException:
            raise trio.TooSlowError from None
        except httpx.HTTPError as exc:
            raise ValueError(str(exc) or type(exc).__name__) from None
        keys, _skipped = parse_jwks(bytes(body), self._algorithms)
        if not keys:
            raise ValueError(f"no usable signature key for {', '.join(self._algorithms)} in the answer")
        return keys, cache_control


def _describe(exc: BaseException) -> str:
    """Why a fetch failed, in a line (a URL in an error is the configured one, never a secret)."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__

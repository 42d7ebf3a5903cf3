"""Who is connecting: token extraction (docs/PROTOCOL.md section 2), JWT and static tokens,
API keys for server-to-server calls, and the job join policy.

The checks are synchronous and fast (no I/O after start-up; JWKS keys come from a
cache, broker/auth/jwks.py); only :meth:`Authenticator.authenticate_fresh` may wait, to
refetch a JWKS for a key a rotation added. Failures raise :class:`AuthError` whose
``reason`` is for logs only and never contains the token; :class:`AuthUnavailable`
when they cannot be checked now (try again later).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import jwt

from ..config.loader import AuthConfig, validate_jwt
from ..protocols.chat import SYSTEM_SENDER
from ..protocols.text import has_lone_surrogate, is_user_id
from .errors import AuthError, AuthUnavailable, KeysUnavailable, UnknownKey
from .jwks import JwksKeys

__all__ = ["ApiKeys", "AuthError", "AuthUnavailable", "Authenticator", "KeysUnavailable", "LoginKey", "Principal",
           "issue_token", "token_from_request"]


LoginKey = tuple[str, str]
"""Who a connection is logged in as, in the hub: ``("user", sub)`` for a JWT,
``("token", name)`` for a static token. Two namespaces: a JWT whose ``sub`` equals a
static token's principal is a different login."""


@attrs.frozen
class Principal:
    """An authenticated caller: an individual user (``kind == "jwt"``, or ``"hook"``
    when the auth hook named it) or a static token, a shared service identity
    (``kind == "static"``)."""

    user_id: str  # shown to the client as userId
    kind: str  # "jwt", "hook" or "static"
    jobs: tuple[str, ...] = ()  # glob patterns of job ids this principal may join
    claims: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    token_name: str = ""  # static: which configured token ("static_tokens[0]", "env_token"), never the secret
    max_connections: int = 0  # static: connections on this token at once; 0 = only the global limits
    expires_at: float | None = None  # Unix time the credentials expire (a JWT's exp); None: never
    hook_request: Any = attrs.field(default=None, eq=False, repr=False)  # hook: what to ask it again at refresh

    @property
    def is_user(self) -> bool:
        """An individual user: per-user limits, single login, chat and offline delivery."""
        return self.kind != "static"

    @property
    def login_key(self) -> LoginKey:
        return ("user", self.user_id) if self.is_user else ("token", self.token_name or self.user_id)

    def may_join(self, job_id: str) -> bool:
        return any(pattern == "*" or fnmatch.fnmatchcase(job_id, pattern) for pattern in self.jobs)


def token_from_request(headers: Iterable[tuple[bytes, bytes]], target: str) -> str | None:
    """The token a WebSocket upgrade carries, first match wins: ``Authorization: Bearer``,
    a header named ``websocket``, then ``?token=``. None means: wait for an auth frame."""
    websocket_header: str | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif lowered == b"websocket" and websocket_header is None and value.strip():
            websocket_header = value.decode("latin-1").strip()
    if websocket_header is not None:
        return websocket_header
    for key, query_value in parse_qsl(urlsplit(target).query, keep_blank_values=False):
        if key == "token" and query_value:
            return query_value
    return None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class Authenticator:
    """Verifies tokens against the configured JWT keys and static tokens."""

    def __init__(self, config: AuthConfig) -> None:
        self._config = config
        validate_jwt(config)  # a Config built in code is checked here too
        self._static: dict[bytes, Principal] = {}
        for index, static in enumerate(config.static_tokens):
            self._static[_digest(static.token)] = Principal(
                static.user, "static", tuple(static.jobs), token_name=f"static_tokens[{index}]",
                max_connections=static.max_connections,
            )
        if config.env_token:
            self._static[_digest(config.env_token)] = Principal(
                config.env_token_user, "static", tuple(config.env_token_jobs), token_name="env_token",
                max_connections=config.env_token_max_connections,
            )
        self._algorithms = list(config.jwt_algorithms)
        self._key: Any = None
        if config.jwt_public_key_file:
            self._key = _public_key(Path(config.jwt_public_key_file).read_text(encoding="utf-8"), self._algorithms)
        elif config.jwt_secret:
            self._key = config.jwt_secret
        self._previous = list(config.jwt_previous_secrets)  # verification only (HMAC rotation)
        self.jwks: JwksKeys | None = None
        if config.jwks_url:
            self.jwks = JwksKeys(config.jwks_url, config.jwt_algorithms, min_refetch=config.jwks_min_refetch,
                                 cache_min=config.jwks_cache_min, cache_max=config.jwks_cache_max,
                                 timeout=config.jwks_fetch_timeout)

    def authenticate(self, token: str) -> Principal:
        """The principal ``token`` stands for, or raise AuthError."""
        if not token or len(token) > 8192:
            raise AuthError("empty or oversized token")
        # Looked up by SHA-256 digest: lookup timing says nothing useful about a secret
        # whose digest an attacker cannot steer.
        principal = self._static.get(_digest(token))
        if principal is not None:
            return principal
        if token.count(".") != 2:
            raise AuthError("unknown static token")
        if self.jwks is not None:
            return self._verify_with_jwks(token, self.jwks)
        if self._key is None:
            raise AuthError("JWT presented but no JWT key is configured")
        if self._previous:
            return self._verify_rotated(token, self._key)
        return self._verify_jwt(token, self._key, self._algorithms)

    async def authenticate_fresh(self, token: str) -> Principal:
        """:meth:`authenticate`, but a JWT whose ``kid`` the cached JWKS lacks (a key a
        rotation added) waits for a refetch (at most one per ``jwks_min_refetch``) and
        is checked again. Cancelling it leaves nothing to undo."""
        try:
            return self.authenticate(token)
        except UnknownKey:
            if self.jwks is None or not await self.jwks.refetch_for_unknown_key():
                raise
        return self.authenticate(token)

    def _verify_with_jwks(self, token: str, jwks: JwksKeys) -> Principal:
        header = _header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError("JWT algorithm not allowed")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("JWT kid is not a string")
        key = jwks.key_for(kid, alg)
        return self._verify_jwt(token, key.key, [alg])

    def _verify_rotated(self, token: str, key: str) -> Principal:
        """HMAC with the current secret, then each previous one (rotation: verify only)."""
        try:
            return self._verify_jwt(token, key, self._algorithms)
        except _BadSignature:
            pass
        for previous in self._previous:
            try:
                return self._verify_jwt(token, previous, self._algorithms)
            except _BadSignature:
                continue
        raise AuthError("JWT invalid: InvalidSignatureError: Signature verification failed")

    def _verify_jwt(self, token: str, key: Any, algorithms: list[str]) -> Principal:
        config = self._config
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=config.jwt_audience or None,
                issuer=config.jwt_issuer or None,
                leeway=config.jwt_leeway,
                options={"require": ["exp"], "verify_aud": bool(config.jwt_audience)},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("JWT expired") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("JWT algorithm not allowed") from None
        except jwt.InvalidSignatureError as exc:
            raise _BadSignature(f"JWT invalid: InvalidSignatureError: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"JWT invalid: {type(exc).__name__}: {exc}") from None
        except jwt.PyJWTError as exc:  # a key that does not fit the algorithm: refused (1008), never a 1011
            raise AuthError(f"JWT not verifiable: {type(exc).__name__}") from None
        if has_lone_surrogate(claims):  # legal JSON, but no UTF-8: it would fail later, far from here
            raise AuthError("JWT claims hold a lone surrogate")
        user = claims.get("sub", claims.get("uid"))
        if isinstance(user, (int, float)) and not isinstance(user, bool):
            user = str(int(user))
        if not is_user_id(user):  # no control, line-break or bidi character: it is logged and shown
            raise AuthError("JWT has no usable sub or uid claim")
        if user == SYSTEM_SENDER:
            raise AuthError(f'JWT user "{SYSTEM_SENDER}" is reserved for messages of the server API')
        jobs_claim = claims.get("jobs")
        if jobs_claim is None:
            jobs = tuple(config.jwt_default_jobs)
        elif jobs_claim == "*":
            jobs = ("*",)
        elif isinstance(jobs_claim, list) and all(isinstance(j, str) for j in jobs_claim):
            jobs = tuple(jobs_claim)
        else:
            raise AuthError('JWT "jobs" claim must be a list of strings or "*"')
        exp = claims.get("exp")
        return Principal(user, "jwt", jobs, claims, expires_at=float(exp) if isinstance(exp, int | float) else None)


def _public_key(pem: str, algorithms: list[str]) -> Any:
    """The PEM key parsed once, at start (else PyJWT parses it at every connect); the
    text if no pinned algorithm can read it (then jwt.decode reports the error)."""
    for name in algorithms:
        try:
            return jwt.get_algorithm_by_name(name).prepare_key(pem)
        except (jwt.InvalidKeyError, ValueError, TypeError, NotImplementedError):
            continue
    return pem


def _header(token: str) -> dict[str, Any]:
    """A JWT's header, unverified (only the first segment is decoded: the payload and
    signature are decoded once, by jwt.decode)."""
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, TypeError):  # binascii.Error and JSONDecodeError are ValueErrors
        raise AuthError("JWT header unreadable") from None
    if not isinstance(header, dict):
        raise AuthError("JWT header unreadable")
    return header


class _BadSignature(AuthError):
    """The signature does not verify with this key (another key may: rotation)."""


class ApiKeys:
    """Server-to-server API keys (``Authorization: Bearer <key>`` or ``X-API-Key``)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    @property
    def configured(self) -> bool:
        return bool(self._digests)

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        presented = None
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"x-api-key":
                presented = value.decode("latin-1").strip()
            elif lowered == b"authorization" and presented is None:
                scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
                if scheme.lower() == "bearer":
                    presented = credentials.strip()
        if not presented:
            return False
        digest = _digest(presented)
        matched = False
        for known in self._digests:  # no early exit: timing does not tell which key
            matched |= hmac.compare_digest(digest, known)
        return matched


def issue_token(secret: str, subject: str, ttl: float, claims: Mapping[str, Any] | None = None,
                algorithm: str = "HS256", now: float | None = None) -> str:
    """A signed JWT for ``subject`` expiring in ``ttl`` seconds (``broker token``)."""
    issued = int(now if now is not None else time.time())
    payload: dict[str, Any] = {"sub": subject, "iat": issued, "exp": issued + int(ttl)}
    payload.update(claims or {})
    return jwt.encode(payload, secret, algorithm=algorithm)

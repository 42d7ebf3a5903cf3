"""Why credentials were not accepted: refused (1008 / 401-403), or not checkable now
(1013 / 503: try again later). Each ``reason`` is for logs and never holds a secret."""

from __future__ import annotations


class AuthError(Exception):
    """The credentials were refused. ``reason`` says why, for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthUnavailable(AuthError):
    """The credentials could not be checked now (identity provider or auth hook
    unreachable): the client should try again later (close 1013, HTTP 503). Never
    an accept."""


class KeysUnavailable(AuthUnavailable):
    """No JWKS key is cached: the identity provider's JWKS has not answered yet."""


class UnknownKey(AuthError):
    """The token's ``kid`` is not in the cached key set: a refetch may find it."""

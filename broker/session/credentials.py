"""Refreshing a connection's credentials while it is open (docs/PROTOCOL.md section 2).

The connection (broker/session/connection.py) keeps the timers: ``token_expiring`` at
``exp - refresh_before``, and at ``exp + jwt_leeway`` TOKEN_EXPIRED and close 4005.
Here is what extends them:

- :func:`refresh_in_band`: the client's ``{"type":"auth","token":...}`` on an open
  connection. The token is verified like a new one (a JWKS key a rotation added is
  fetched); it must name the same user (another user: FORBIDDEN, close 1008). A token
  that does not verify is answered UNAUTHORIZED and changes nothing: the old expiry
  still holds. Static tokens never expire and cannot be refreshed (BAD_REQUEST).
- :func:`refresh_by_hook`: a connection the auth hook identified asks the hook again
  (the same request) before it expires; if the hook cannot answer, again every
  HOOK_RETRY seconds until the expiry closes the connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import trio

from ..auth.tokens import AuthError, AuthUnavailable, Principal
from ..protocols import CloseCode, ErrorCode, ProtocolError, error_message

if TYPE_CHECKING:
    from ..auth.hook import AuthHook
    from .login import Login

log = logging.getLogger("broker.connection")

HOOK_RETRY = 5.0  # seconds between attempts when the hook cannot answer a refresh


class RefreshingSession(Protocol):
    """What a refresh uses of its connection."""

    @property
    def id(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    @property
    def principal(self) -> Principal | None: ...
    @property
    def login(self) -> Login: ...

    def apply_refresh(self, principal: Principal) -> None: ...

    def send_message_nowait(self, payload: bytes) -> bool: ...

    def evict(self, code: int, reason: str, metric: str) -> None: ...


def _same_identity(current: Principal, new: Principal) -> bool:
    return new.is_user and new.user_id == current.user_id


def refuse_other_user(session: RefreshingSession) -> None:
    """A refresh named another user: FORBIDDEN, then close 1008."""
    log.info("%s refresh refused: the new credentials are for another user", session.id)
    session.send_message_nowait(error_message(ErrorCode.FORBIDDEN, "the new token is for another user"))
    session.evict(CloseCode.POLICY, "token for another user", "token_other_user")


async def refresh_in_band(session: RefreshingSession, token: str) -> None:
    """An ``auth`` frame on an open connection. Raises ProtocolError (the connection
    answers it and keeps reading) for a token that does not verify or cannot be
    checked now; cancelling it changes nothing."""
    current = session.principal
    if current is None or not current.is_user:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "already authenticated")
    try:
        new = await session.login.authenticator.authenticate_fresh(token)
    except AuthUnavailable:
        raise ProtocolError(ErrorCode.UNAVAILABLE, "the token cannot be checked now, try again") from None
    except AuthError as exc:
        log.info("%s refresh refused: %s", session.id, exc.reason)
        raise ProtocolError(ErrorCode.UNAUTHORIZED, "token refresh refused: the current token still holds") from None
    if session.closed:
        return
    if not _same_identity(current, new):
        refuse_other_user(session)
        return
    session.apply_refresh(new)


async def refresh_by_hook(session: RefreshingSession, principal: Principal, hook: AuthHook) -> None:
    """Extend a hook identity: ask the hook again until it answers. A refusal leaves the
    expiry as it is (the connection then closes 4005). Runs beside the reader; the
    connection's end cancels it."""
    while not session.closed and session.principal is principal:
        try:
            new = await hook.identify(principal.hook_request, fresh=True)
        except AuthUnavailable:
            await trio.sleep(HOOK_RETRY)
            continue
        except AuthError as exc:
            log.info("%s hook refused to extend the connection: %s", session.id, exc.reason)
            return
        if session.closed or session.principal is not principal:
            return
        if not _same_identity(principal, new):
            refuse_other_user(session)
            return
        session.apply_refresh(new)
        return

"""Authentication and login of a broker connection (docs/PROTOCOL.md section 2).

:class:`Login` is built once per broker and shared by every connection: it keeps no
state of its own. *Authenticating* finds the principal (a token checked at the front
end, in the request, or in a first ``auth`` frame). *Logging in* claims the login
from the backplane (cluster-wide limits and single login), routes the user's chat to
the connection in the hub, replaces older connections, and sends
``connection_established``. Releasing the login when the connection ends is bounded
by ``close_timeout`` and shielded.

``user.online`` / ``user.offline``: the backplane's claim and release say whether they
made the user's transition (:class:`~broker.cluster.UserTransition`: atomically, so
one node in a cluster gets each). ``user.online`` is written to the outbox (shielded,
within ``close_timeout``) before the session is routed and told it is connected, then
acknowledged to the backplane; a write that fails is logged, and in a cluster the
transition stays pending in Redis for a sweep to write after its lease.

A refusal is sent as an error frame, with the close code the connection then closes
with (:meth:`~broker.session.connection.Session.refuse`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from ..auth.tokens import AuthError, AuthUnavailable, Principal, token_from_request
from ..chat.conversations import ChatSession
from ..cluster import BackplaneUnavailable
from ..hub.connections import login_limit, login_name, login_refusal
from ..protocols import Auth, CloseCode, ErrorCode, ProtocolError, connection_established, decode_client_message
from ..store import StoreError
from ..transport.websocket import ConnectionClosed
from ..webhooks.sink import EventSink, NoWebhooks

if TYPE_CHECKING:
    from ..auth.hook import AuthHook
    from ..auth.tokens import Authenticator
    from ..chat.service import Chat
    from ..cluster import Logins, UserTransition
    from ..hub.connections import Hub
    from ..observability.metrics import Metrics
    from ..transport.channel import ClientChannel

class LoginSession(ChatSession, Protocol):
    """What authenticating and logging in use of a connection beyond a chat session:
    its WebSocket (for the ``auth`` frame), where it comes from, its principal, a
    refusal that closes it, and the chat tracking a login starts."""

    @property
    def ws(self) -> ClientChannel | None: ...
    @property
    def remote(self) -> str: ...
    @property
    def principal(self) -> Principal | None: ...

    user_id: str | None  # set here, once the login is admitted

    def refuse(self, code: ErrorCode, message: str, close: int, reason: str, **details: object) -> None: ...

    def track_chat(self, replaying: bool) -> object: ...


log = logging.getLogger("broker.connection")  # a connection's story, in one logger


class BanList(Protocol):
    """Users the server API banned for a while (broker/cluster/control.py): sync, no round trip."""

    def banned(self, user_id: str) -> bool: ...


@attrs.frozen
class Login:
    """What authenticating and logging in use; shared by every connection."""

    hub: Hub
    authenticator: Authenticator
    logins: Logins  # the backplane's logins role
    chat: Chat  # finishes the offline replay at once when nothing is waiting
    metrics: Metrics
    auth_timeout: float
    heartbeat_interval: float
    max_connections_per_user: int
    single_login: bool
    close_timeout: float
    bans: BanList | None = None  # refused with FORBIDDEN, then 1008, while banned
    webhooks: EventSink = attrs.field(factory=NoWebhooks)  # user.online / user.offline (logins.track_users)
    jwt_leeway: float = 30.0  # a connection closes this long after its token's exp (4005)
    refresh_before: float = 60.0  # token_expiring this long before exp (at most half of what is left)
    hook: AuthHook | None = None  # [auth] hook_url: asked again before a hook identity expires

    async def authenticate(self, session: LoginSession, preauth: Principal | AuthError | None, target: str,
                           headers: Sequence[tuple[bytes, bytes]]) -> Principal | None:
        """The principal of the connection (``preauth``: the front end's verdict on a
        token it saw), or None after refusing it: UNAUTHORIZED, then close 1008; if the
        token cannot be checked now (no JWKS keys), UNAVAILABLE, then close 1013.
        Cancelling it (eviction) leaves nothing to undo."""
        assert session.ws is not None
        reason = "no token"
        principal: Principal | None = None
        if isinstance(preauth, Principal):
            principal = preauth
        elif isinstance(preauth, AuthError):
            reason = preauth.reason
        else:
            token = token_from_request(headers, target)
            if token is None:
                token, reason = await self._auth_frame(session.ws)
            if token is not None:
                try:
                    principal = await self.authenticator.authenticate_fresh(token)
                except AuthUnavailable as exc:
                    log.info("%s authentication not possible now from %s: %s", session.id, session.remote, exc.reason)
                    session.refuse(ErrorCode.UNAVAILABLE, "authentication unavailable, try again",
                                   CloseCode.TRY_AGAIN_LATER, "try again later")
                    return None
                except AuthError as exc:
                    reason = exc.reason
        if principal is None:
            log.info("%s authentication refused from %s: %s", session.id, session.remote, reason)
            self.metrics.auth_failures.inc()
            session.refuse(ErrorCode.UNAUTHORIZED, "Authentication failed", CloseCode.POLICY, "authentication failed")
        return principal

    async def _auth_frame(self, ws: ClientChannel) -> tuple[str | None, str]:
        """The token of a first ``{"type":"auth"}`` frame within the auth timeout, or
        None and why not."""
        timeout = self.auth_timeout
        with trio.move_on_after(timeout):
            try:
                first = await ws.receive_message()
                while first is None:  # woken for a timer: the auth timeout is this scope's own
                    first = await ws.receive_message()
            except ConnectionClosed:
                return None, "closed before authenticating"
            try:
                command = decode_client_message(first)
            except ProtocolError:
                return None, "first frame was not valid"
            if isinstance(command, Auth):
                return command.token, ""
            return None, "first frame was not an auth frame"
        return None, f"no auth frame within {timeout:g}s"

    async def log_in(self, session: LoginSession) -> bool:
        """Route the user's messages to ``session``. The backplane decides, cluster-wide:
        with single login this connection takes over from the user's older ones (those
        here are replaced now, those on other nodes by their node); otherwise it is
        refused beyond the per-user limit. If the backplane is unreachable: UNAVAILABLE,
        1013. A banned user is refused (FORBIDDEN, 1008) before and after the claim (its
        transitions, if any, are written both ways). False once refused (the session
        closes)."""
        principal = session.principal
        assert principal is not None
        hub = self.hub
        user_id = principal.user_id
        per_user, single_login = self.max_connections_per_user, self.single_login
        refusal = login_refusal(hub, principal, per_user, single_login)
        if refusal is not None:
            session.refuse(ErrorCode.RATE_LIMITED, refusal, CloseCode.POLICY, refusal)
            return False
        single = single_login and principal.is_user
        logins = self.logins
        if principal.is_user and self.bans is not None and self.bans.banned(user_id):
            session.refuse(ErrorCode.FORBIDDEN, "this user is banned for now", CloseCode.POLICY, "banned")
            return False
        try:
            claim = await logins.claim_login(login_name(principal.login_key), session.id, single,
                                             login_limit(principal, per_user, single_login))
        except BackplaneUnavailable as exc:
            log.warning("%s: login of %s not recorded: %s", session.id, user_id, exc)
            session.refuse(ErrorCode.UNAVAILABLE, "logins unavailable, try again", CloseCode.TRY_AGAIN_LATER,
                           "try again later")
            return False
        except trio.Cancelled:
            # evicted while the claim was on its way: the backplane may have recorded it,
            # and release() skips a session that never got its user id, so undo it here
            # (else the entry would count against the user's limit while this node lives)
            with trio.move_on_after(self.close_timeout, shield=True):
                await self._record(await logins.release_login(login_name(principal.login_key), session.id))
            raise
        if not claim.admitted:
            reason = "too many connections for this user" if principal.is_user else "too many connections on this token"
            session.refuse(ErrorCode.RATE_LIMITED, reason, CloseCode.POLICY, reason)
            return False
        if claim.transitions:  # user.online is in the outbox before the client is told it is connected
            with trio.move_on_after(self.close_timeout, shield=True):
                await self._record(claim.transitions)
            if single and not logins.clustered and hub.sessions_of(user_id):
                # one node: a login of the user that claimed after this one was routed while
                # user.online was written; the newer one keeps the route, as it would have
                session.refuse(ErrorCode.REPLACED, "replaced by a newer login of the same user", CloseCode.REPLACED,
                               "replaced")
                await self._record(await logins.release_login(login_name(principal.login_key), session.id))
                return False
        if principal.is_user and self.bans is not None and self.bans.banned(user_id):
            # checked again here (a ban may have come while user.online was written), with
            # no await until the hub routes the user: a ban arriving later finds this
            # connection routed and evicts it
            session.refuse(ErrorCode.FORBIDDEN, "this user is banned for now", CloseCode.POLICY, "banned")
            with trio.move_on_after(self.close_timeout, shield=True):
                await self._record(await logins.release_login(login_name(principal.login_key), session.id))
            return False
        session.user_id = user_id
        replaying = principal.is_user  # offline delivery is for users (JWT): static tokens are shared identities
        if replaying:
            session.track_chat(replaying=True)
        # no await from here on: routing and replacing happen in one step. In a cluster
        # the backplane decides who is replaced (on any node); here, the hub does.
        for older in hub.login(principal.login_key, session, single and not logins.clustered):
            older.replace_by_newer_login()
        hub.evict_replaced(claim.replaced)
        session.send_message_nowait(connection_established(session.id, user_id, int(self.heartbeat_interval * 1000)))
        if replaying:  # nothing waiting in the store: live now, in the same write as the 101
            self.chat.replay_now_if_nothing_waiting(session)  # else the replay task runs once admitted
        log.info("%s connected as %s (%s) from %s", session.id, user_id, principal.kind, session.remote)
        return True

    def admit_relay(self, session: LoginSession) -> bool:
        """A proxy-route connection that authenticated: refused (FORBIDDEN, then 1008)
        if its user is banned, else known to the hub as that user's relay, in one step
        (no await), so a disconnect or ban arriving later finds and closes it."""
        principal = session.principal
        assert principal is not None
        if not principal.is_user:
            return True  # a static token is a shared identity: no operator disconnect names it
        if self.bans is not None and self.bans.banned(principal.user_id):
            session.refuse(ErrorCode.FORBIDDEN, "this user is banned for now", CloseCode.POLICY, "banned")
            return False
        self.hub.add_relay(principal.user_id, session)
        return True

    async def _record(self, transitions: list[UserTransition]) -> None:
        """``user.online`` / ``user.offline`` for the backplane's transitions, then
        acknowledged to it. A store error is logged: in a cluster the transition stays
        pending and a sweep records it after its lease; on one node it is lost."""
        if not transitions:
            return
        try:
            await self.webhooks.record_transitions(transitions)
        except StoreError as exc:
            log.warning("user %s of %s not recorded: %s", "online" if transitions[-1].online else "offline",
                        transitions[-1].user_id, exc)
            return
        try:
            await self.logins.transitions_recorded(transitions)
        except BackplaneUnavailable:
            pass  # handed out again after the lease; the outbox records it once

    async def release(self, session: LoginSession) -> None:
        """Give up the login of a logged-in ``session`` (backplane) and record the user's
        ``user.offline`` if it was the last connection anywhere; bounded by
        ``close_timeout`` and shielded: it runs as the connection ends."""
        if session.user_id is None or session.principal is None:
            return
        with trio.move_on_after(self.close_timeout, shield=True):
            await self._record(await self.logins.release_login(login_name(session.principal.login_key), session.id))

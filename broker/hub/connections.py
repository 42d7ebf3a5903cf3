"""The hub: who is connected, from where, as whom. Plain sync methods, but for
``wait_empty`` (shutdown waits on it for the last connection to go).

In trio, code without an ``await`` cannot be interleaved, so every sync method here
is atomic with respect to every other task: a login replaces the older connection and
re-routes the user's messages in one step, with no window in between.

Two kinds of entry, two protocols:

* every connection is *registered* (:class:`Connected`) from the moment it exists,
  so it counts against the global and per-address limits and is closed on shutdown;
* a broker-protocol connection that has authenticated is also *logged in*
  (:class:`ChatEndpoint`) under its :data:`~broker.auth.tokens.LoginKey`. Logins are what
  chat reaches: a user's messages go to the sessions logged in as that user, a
  broadcast to every logged-in session. A proxy-route session never logs in: it is
  a relay whose socket belongs to the upstream's protocol, not a chat recipient.
  Once authenticated as an individual user it is *known as a relay* of that user
  (:meth:`Hub.add_relay`), so an operator's disconnect reaches it too.

Logins live in two namespaces, individual users (JWT subjects) and static tokens, so
a JWT whose ``sub`` equals a static token's principal neither replaces nor counts
with that token's connections, and is not sent the chat of the other.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import trio

from ..auth.tokens import LoginKey, Principal
from .peer import Peer


class Connected(Peer, Protocol):
    """What the hub needs of any connection: a peer, where it comes from, and how a
    newer login of the same user replaces it."""

    @property
    def remote_host(self) -> str: ...

    def replace_by_newer_login(self) -> None: ...


class ChatEndpoint(Connected, Protocol):
    """A logged-in broker-protocol connection: what chat and single login call."""

    def deliver_chat(self, conversation: str, msg_id: int, frame: bytes) -> bool: ...


def login_refusal(hub: Hub, principal: Principal, max_per_user: int, single_login: bool) -> str | None:
    """Why ``principal`` may not open one more logged-in connection, or None.

    Per-user limits are for individual users, and with single login a user's new
    connection replaces the old one instead. A static token is shared (every browser
    of a dashboard may use it): only its own ``max_connections`` limits it, if set."""
    if principal.is_user:
        if not single_login and hub.logins(principal.login_key) >= max_per_user:
            return "too many connections for this user"
        return None
    if principal.max_connections and hub.logins(principal.login_key) >= principal.max_connections:
        return "too many connections on this token"
    return None


def login_limit(principal: Principal, max_per_user: int, single_login: bool) -> int | None:
    """How many connections ``principal``'s login may have at once, cluster-wide (None:
    no limit of its own): the same rules as :func:`login_refusal`."""
    if principal.is_user:
        return None if single_login else max_per_user
    return principal.max_connections or None


def login_name(key: LoginKey) -> str:
    """A login key as one string (``user:alice``, ``token:dashboard``), for the backplane."""
    return f"{key[0]}:{key[1]}"


class Hub:
    def __init__(self) -> None:
        self._sessions: dict[str, Connected] = {}
        self._per_host: Counter[str] = Counter()
        self._logins: dict[LoginKey, dict[str, ChatEndpoint]] = {}  # key -> {session id: session}
        self._login_of: dict[str, LoginKey] = {}  # session id -> key
        self._relays: dict[str, dict[str, Connected]] = {}  # user id -> {session id: proxy-route session}
        self._relay_of: dict[str, str] = {}  # session id -> user id
        self._empty = trio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._sessions)

    # -- connections -------------------------------------------------------

    def register(self, session: Connected) -> None:
        """A connection exists (before authentication): it counts against the limits."""
        self._sessions[session.id] = session
        self._per_host[session.remote_host] += 1
        if self._empty.is_set():
            self._empty = trio.Event()

    def unregister(self, session: Connected) -> None:
        """The connection is gone: off the limits and off its login's route."""
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
            self._per_host[session.remote_host] -= 1
            if self._per_host[session.remote_host] <= 0:
                del self._per_host[session.remote_host]
        key = self._login_of.get(session.id)
        if key is not None:
            routed = self._logins.get(key)
            if routed is not None and routed.get(session.id) is session:
                del self._login_of[session.id]
                del routed[session.id]
                if not routed:
                    del self._logins[key]
        user_id = self._relay_of.pop(session.id, None)
        if user_id is not None:
            relays = self._relays[user_id]
            del relays[session.id]
            if not relays:
                del self._relays[user_id]
        if not self._sessions:
            self._empty.set()

    def connections_from(self, host: str) -> int:
        return self._per_host.get(host, 0)

    def evict_all(self, code: int, reason: str, metric: str) -> None:
        """Ask every connection to close with ``code``; returns at once (see wait_empty)."""
        for session in list(self._sessions.values()):
            session.evict(code, reason, metric)

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def get(self, session_id: str) -> Connected | None:
        return self._sessions.get(session_id)

    def evict_replaced(self, session_ids: list[str]) -> None:
        """Close these sessions with REPLACED then 4001: a newer login of their user owns
        the route now (decided by the backplane, maybe on another node)."""
        for session_id in session_ids:
            session = self._sessions.get(session_id)
            if session is not None and not session.closed:
                session.replace_by_newer_login()

    def sessions(self) -> list[Connected]:
        return list(self._sessions.values())

    # -- logins --------------------------------------------------------------

    def login(self, key: LoginKey, session: ChatEndpoint, single: bool) -> list[ChatEndpoint]:
        """Route ``key``'s messages to ``session``. With ``single``, the older
        connections of the same key are taken off the route and returned (the caller
        evicts them); logins under any other key are untouched."""
        routed = self._logins.setdefault(key, {})
        replaced: list[ChatEndpoint] = []
        if single:
            replaced = [s for s in routed.values() if s is not session]
            for older in replaced:
                self._login_of.pop(older.id, None)
            routed.clear()
        routed[session.id] = session
        self._login_of[session.id] = key
        return replaced

    def logins(self, key: LoginKey) -> int:
        """How many connections are logged in as ``key``."""
        return len(self._logins.get(key, ()))

    def sessions_of(self, user_id: str) -> list[ChatEndpoint]:
        """The connections of the individual user ``user_id`` (chat routing)."""
        routed = self._logins.get(("user", user_id))
        return list(routed.values()) if routed else []

    def add_relay(self, user_id: str, session: Connected) -> None:
        """A registered proxy-route connection authenticated as user ``user_id``
        (until it is unregistered): :meth:`connections_of` includes it."""
        if self._sessions.get(session.id) is session:
            self._relays.setdefault(user_id, {})[session.id] = session
            self._relay_of[session.id] = user_id

    def connections_of(self, user_id: str) -> list[Connected]:
        """Every connection of the individual user ``user_id`` here: its logins and its
        proxy-route relays (what an operator's disconnect closes)."""
        relays = self._relays.get(user_id)
        return [*self.sessions_of(user_id), *(relays.values() if relays else ())]

    def user_count(self) -> int:
        """How many individual users (JWT) are logged in here (the server API's stats)."""
        return sum(1 for kind, _ in self._logins if kind == "user")

    def chat_recipients(self, excluding_user: str | None = None) -> list[ChatEndpoint]:
        """Every logged-in connection (a broadcast), but those of ``excluding_user``."""
        skip = ("user", excluding_user) if excluding_user is not None else None
        return [s for key, routed in self._logins.items() if key != skip for s in routed.values()]

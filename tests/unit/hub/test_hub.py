"""The hub's tables, without sockets: logins in two namespaces, chat routing, limits."""

import attrs

from broker.auth.tokens import Principal
from broker.hub.connections import Hub, login_refusal


@attrs.define(eq=False)
class FakeSession:
    id: str
    remote_host: str = "127.0.0.1"
    evicted: list = attrs.field(factory=list)

    def evict(self, code, reason, metric):
        self.evicted.append(code)

    def send_frame_nowait(self, frame, force=False, now=None):
        return True

    def deliver_chat(self, conversation, msg_id, frame):
        return True

    def replace_by_newer_login(self):
        self.evict(4001, "replaced", "replaced")


USER = Principal("ws-client", "jwt")
TOKEN = Principal("ws-client", "static", ("*",), token_name="env_token")


def connected(hub, session_id, principal, single=True):
    session = FakeSession(session_id)
    hub.register(session)
    replaced = hub.login(principal.login_key, session, single and principal.is_user)
    return session, replaced


def test_a_user_and_a_token_of_the_same_name_are_different_logins():
    hub = Hub()
    viewers = [connected(hub, f"v{i}", TOKEN)[0] for i in range(3)]
    user, replaced = connected(hub, "u1", USER)
    assert replaced == [] and hub.logins(TOKEN.login_key) == 3 and hub.logins(USER.login_key) == 1
    newer, replaced = connected(hub, "u2", USER)
    assert replaced == [user] and hub.logins(USER.login_key) == 1
    assert hub.sessions_of("ws-client") == [newer]  # chat to the user id: the user only
    assert set(hub.chat_recipients(excluding_user="ws-client")) == set(viewers)  # a broadcast from the user
    assert all(not v.evicted for v in viewers)


def test_unregister_takes_a_session_off_its_login_and_the_limits():
    hub = Hub()
    session, _ = connected(hub, "v1", TOKEN)
    unrouted = FakeSession("p1")  # a proxy session: registered, never logged in
    hub.register(unrouted)
    assert len(hub) == 2 and hub.connections_from("127.0.0.1") == 2
    assert unrouted not in hub.chat_recipients()
    hub.unregister(session)
    hub.unregister(unrouted)
    assert len(hub) == 0 and hub.logins(TOKEN.login_key) == 0 and hub.chat_recipients() == []


def test_an_evicted_older_login_leaving_later_does_not_unroute_the_newer():
    hub = Hub()
    older, _ = connected(hub, "u1", USER)
    newer, _ = connected(hub, "u2", USER)
    hub.unregister(older)
    assert hub.sessions_of("ws-client") == [newer]


def test_login_refusal_per_user_and_per_token():
    hub = Hub()
    limited = Principal("dash", "static", token_name="static_tokens[0]", max_connections=2)
    for i in range(2):
        connected(hub, f"u{i}", USER, single=False)
        connected(hub, f"d{i}", limited)
    for i in range(5):
        connected(hub, f"v{i}", TOKEN)
    assert login_refusal(hub, USER, max_per_user=2, single_login=False) == "too many connections for this user"
    assert login_refusal(hub, USER, max_per_user=2, single_login=True) is None  # the new login replaces
    assert login_refusal(hub, TOKEN, max_per_user=2, single_login=False) is None  # only the global limits
    assert login_refusal(hub, limited, max_per_user=100, single_login=False) == "too many connections on this token"


def test_a_proxy_relay_is_among_its_users_connections_never_a_chat_recipient():
    hub = Hub()
    logged_in, _ = connected(hub, "u1", USER)
    relay = FakeSession("p1")
    hub.add_relay(USER.user_id, relay)  # not registered: ignored (it ended before it authenticated)
    assert hub.connections_of(USER.user_id) == [logged_in]
    hub.register(relay)
    hub.add_relay(USER.user_id, relay)
    assert hub.connections_of(USER.user_id) == [logged_in, relay]
    assert hub.sessions_of(USER.user_id) == [logged_in] and relay not in hub.chat_recipients()
    assert hub.connections_of("someone-else") == []
    hub.unregister(relay)
    assert hub.connections_of(USER.user_id) == [logged_in]
    hub.unregister(logged_in)
    assert hub.connections_of(USER.user_id) == [] and len(hub) == 0

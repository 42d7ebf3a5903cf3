"""Logging in against a backplane whose claim is still on its way: a connection evicted
then must not leave its login recorded (it would count against the user's limit, and
single login would "replace" it, for as long as the node lives)."""

import attrs
import trio

from broker.auth.tokens import Principal
from broker.cluster.interface import LoginClaim
from broker.hub.connections import Hub
from broker.session.login import Login


@attrs.define
class SlowLogins:
    """A clustered logins role whose claim reaches Redis, then waits for its answer."""

    clustered: bool = True
    track_users: bool = False
    recorded: set = attrs.field(factory=set)
    claimed: trio.Event = attrs.field(factory=trio.Event)

    async def claim_login(self, login, session_id, single, limit):
        self.recorded.add((login, session_id))  # Redis ran the script...
        self.claimed.set()
        await trio.sleep_forever()  # ...and its answer never comes before the eviction
        return LoginClaim(True)

    async def release_login(self, login, session_id):
        await trio.lowlevel.checkpoint()  # a round trip: it must run shielded
        self.recorded.discard((login, session_id))
        return []


@attrs.define
class FakeSession:
    principal: Principal
    id: str = "client-1"
    user_id: str | None = None
    refused: list = attrs.field(factory=list)

    def refuse(self, code, message, close, reason, **details):
        self.refused.append(close)


async def test_a_session_evicted_while_its_claim_is_on_its_way_releases_it():
    logins = SlowLogins()
    login = Login(hub=Hub(), authenticator=None, logins=logins, chat=None, metrics=None,  # type: ignore[arg-type]
                  auth_timeout=5, heartbeat_interval=25, max_connections_per_user=5, single_login=True,
                  close_timeout=5)
    session = FakeSession(Principal("alice", "jwt"))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(login.log_in, session)
            await logins.claimed.wait()
            assert logins.recorded == {("user:alice", "client-1")}
            nursery.cancel_scope.cancel()  # the eviction: the session's scope is cancelled
    assert logins.recorded == set()
    assert session.user_id is None and session.refused == []

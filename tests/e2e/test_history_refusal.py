"""A refused history request says which request it refuses (issue 20: the JS client's
history() could not tell, so its promise never settled): ``request`` and ``conversationId``."""

from tests.support.clients import user
from tests.support.helpers import recv_json, send_json


async def test_a_refused_history_request_names_its_conversation(broker):
    async with user(broker, "alice") as alice:
        await send_json(alice, {"type": "history", "conversationId": "group_nobody_made", "limit": 10})
        refused = await recv_json(alice)
        assert refused["type"] == "error" and refused["code"] in ("FORBIDDEN", "BAD_REQUEST"), refused
        assert (refused["request"], refused["conversationId"]) == ("history", "group_nobody_made")

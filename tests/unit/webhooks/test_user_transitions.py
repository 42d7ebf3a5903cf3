"""Recording a cluster's user transitions in the outbox (its real SQL, on an in-memory
SQLite): each at most once, in number order, a missing predecessor written before its
successor, with a webhook-id made from (user, number). One node's (number 0) go the
``webhook_online`` way as before."""

import base64
import json

from broker.cluster.interface import UserTransition
from broker.config.loader import WebhookEndpoint, WebhooksConfig
from broker.observability.metrics import Metrics
from broker.webhooks import Outbox
from broker.webhooks.events import transition_webhook_id
from broker.webhooks.outbox import GAP_FILL_MAX
from tests.support.stores import InlineOutboxSqlite

SECRET = "whsec_" + base64.b64encode(b"transitions-secret-0123456789").decode()


def outbox_for(single_node=False, events=("user.online", "user.offline")):
    store = InlineOutboxSqlite()
    endpoint = WebhookEndpoint(url="http://app.test/hook", name="app", events=events, secrets=(SECRET,))
    return store, Outbox([endpoint], WebhooksConfig(), store, Metrics(), single_node=single_node)


def rows(store):
    return [(kind, json.loads(body)["data"]["seq"], webhook_id) for kind, body, webhook_id in store.db.execute(
        "SELECT event_type, body, webhook_id FROM webhook_outbox ORDER BY id").fetchall()]


def expected(user, *pairs):
    return [(kind, seq, transition_webhook_id(user, seq)) for kind, seq in pairs]


async def test_a_later_transition_brings_the_missing_one_first_and_a_redo_writes_nothing():
    store, outbox = outbox_for()
    await outbox.record_transitions([UserTransition("zoe", False, seq=11, floor=9)])  # 10 (online) not written yet
    await outbox.record_transitions([UserTransition("zoe", True, seq=10, floor=9)])  # its slow recorder: too late
    await outbox.record_transitions([UserTransition("zoe", False, seq=11, floor=9)])  # a sweep's redo
    await outbox.record_transitions([UserTransition("zoe", True, seq=12, floor=9)])
    assert rows(store) == expected("zoe", ("user.online", 10), ("user.offline", 11), ("user.online", 12))
    assert store.db.execute("SELECT seq FROM webhook_user_seq WHERE user_id = 'zoe'").fetchall() == [(12,)]


async def test_gap_filling_stops_at_the_states_floor_and_after_gap_fill_max_transitions():
    store, outbox = outbox_for()
    await outbox.record_transitions([UserTransition("max", True, seq=10, floor=9)])
    await outbox.record_transitions([UserTransition("max", False, seq=10 + 2 * GAP_FILL_MAX, floor=9)])
    written = rows(store)[1:]
    assert [seq for _, seq, _ in written] == list(range(11 + GAP_FILL_MAX, 11 + 2 * GAP_FILL_MAX))
    assert [kind for kind, _, _ in written] == ["user.online", "user.offline"] * (GAP_FILL_MAX // 2)
    # Redis lost its data: a new state begins far above; nothing below its floor is invented
    await outbox.record_transitions([UserTransition("max", False, seq=5_000_001, floor=5_000_000)])
    assert rows(store)[-1] == ("user.offline", 5_000_001, transition_webhook_id("max", 5_000_001))
    assert len(rows(store)) == 1 + GAP_FILL_MAX + 1


async def test_one_node_transitions_keep_the_webhook_online_table():
    store, outbox = outbox_for(single_node=True)
    await outbox.record_transitions([UserTransition("ann", True)])
    assert store.db.execute("SELECT user_id FROM webhook_online").fetchall() == [("ann",)]
    await outbox.record_transitions([UserTransition("ann", False)])
    assert store.db.execute("SELECT user_id FROM webhook_online").fetchall() == []
    kinds = [json.loads(body) for (body,) in store.db.execute("SELECT body FROM webhook_outbox ORDER BY id")]
    assert [(k["type"], k["data"]) for k in kinds] == [("user.online", {"userId": "ann"}),
                                                       ("user.offline", {"userId": "ann"})]

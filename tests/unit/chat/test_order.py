"""The per-conversation delivery order of a cluster node (broker/chat/order.py), with a
store in memory and virtual time."""

from __future__ import annotations

import trio

from broker.chat.order import DeliveryOrder, Linked
from broker.store import StoreError
from broker.store.chat_sql import StoredMessage


class Recorder:
    """Collects deliveries; plays the store holding every message of ``committed``."""

    def __init__(self, committed: list[int], fail_reads: int = 0) -> None:
        self.committed = committed
        self.delivered: list[int] = []
        self.reads = 0
        self.fail_reads = fail_reads

    def deliver(self, conversation, kind, sender, members, msg_id, payload) -> int:
        assert payload == b"m%d" % msg_id
        self.delivered.append(msg_id)
        return 1

    async def fetch(self, conversation, after, upto, limit):
        self.reads += 1
        if self.fail_reads:
            self.fail_reads -= 1
            raise StoreError("store unreachable")
        ids = [i for i in self.committed if after < i <= upto][:limit]
        return [StoredMessage(i, conversation, "s", b"m%d" % i) for i in ids]


def linked(committed: list[int], msg_id: int) -> Linked:
    place = committed.index(msg_id)
    return Linked(msg_id, committed[place - 1] if place else 0, "s", b"m%d" % msg_id)


def offer(order: DeliveryOrder, committed: list[int], *ids: int) -> int:
    return order.offer("crew", "group", ["a", "b"], [linked(committed, i) for i in ids])


async def test_out_of_order_arrivals_are_delivered_in_commit_order_once():
    committed = [3, 7, 8, 12]
    store = Recorder(committed)
    order = DeliveryOrder(store.deliver, store.fetch)
    assert offer(order, committed, 8) == 0  # 3 and 7 not here yet: held
    assert offer(order, committed, 3, 7) == 3
    offer(order, committed, 7, 12)  # 7 again (an echo): dropped
    assert store.delivered == [3, 7, 8, 12] and store.reads == 0


async def test_a_hole_that_stays_is_read_from_the_store(autojump_clock):
    committed = [1, 2, 3, 4, 5]
    store = Recorder(committed)
    order = DeliveryOrder(store.deliver, store.fetch, hold=0.2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(order.run)
        offer(order, committed, 1)
        offer(order, committed, 4, 5)  # 2 and 3 were lost on the way
        await trio.sleep(0.1)
        assert store.delivered == [1]  # still waiting for them
        await trio.sleep(0.2)
        assert store.delivered == [1, 2, 3, 4, 5] and order.filled >= 2
        offer(order, committed, 2, 3)  # late after all: not delivered twice
        assert store.delivered == [1, 2, 3, 4, 5]
        nursery.cancel_scope.cancel()


async def test_a_full_buffer_resynchronises_from_the_store_at_once(autojump_clock):
    committed = list(range(1, 12))
    store = Recorder(committed)
    order = DeliveryOrder(store.deliver, store.fetch, hold=60, max_pending=4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(order.run)
        offer(order, committed, *range(3, 12))  # 1 and 2 missing; only 4 buffered
        await trio.sleep(0.01)
        assert store.delivered == committed
        nursery.cancel_scope.cancel()


async def test_a_store_error_is_retried(autojump_clock):
    committed = [1, 2, 3]
    store = Recorder(committed, fail_reads=2)
    order = DeliveryOrder(store.deliver, store.fetch, hold=0.2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(order.run)
        offer(order, committed, 3)
        with trio.fail_after(5):
            while store.delivered != [1, 2, 3]:
                await trio.sleep(0.05)
        assert store.reads == 3
        nursery.cancel_scope.cancel()


async def test_a_new_conversation_starts_from_the_floor():
    committed = [10, 20, 30]
    store = Recorder(committed)
    order = DeliveryOrder(store.deliver, store.fetch)
    order.floor = 15  # the store's newest msgId when the node started
    offer(order, committed, 30)  # 20 (after the floor) first
    assert store.delivered == []
    offer(order, committed, 10)  # older than the node: its recipients got it from the store
    offer(order, committed, 20)
    assert store.delivered == [20, 30]


async def test_forgetting_a_conversation_raises_the_floor():
    store = Recorder([])
    order = DeliveryOrder(store.deliver, store.fetch, max_conversations=1)
    order.offer("one", "group", ["a"], [Linked(5, 0, "s", b"m5")])
    order.offer("two", "group", ["a"], [Linked(6, 0, "s", b"m6")])  # "one" is forgotten
    assert order.last_delivered("one") is None and order.floor == 5  # the newest seen then
    order.offer("one", "group", ["a"], [Linked(5, 0, "s", b"m5")])  # not delivered again
    assert store.delivered == [5, 6]


async def test_a_buffer_that_fills_up_while_waiting_resynchronises_at_once(autojump_clock):
    committed = list(range(1, 12))
    store = Recorder(committed)
    order = DeliveryOrder(store.deliver, store.fetch, hold=60, max_pending=4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(order.run)
        offer(order, committed, 3)  # 1 and 2 missing: waits up to a minute
        await trio.sleep(1)
        assert store.delivered == []
        offer(order, committed, *range(4, 12))  # the buffer is full: no more waiting
        await trio.sleep(0.01)
        assert store.delivered == committed
        nursery.cancel_scope.cancel()

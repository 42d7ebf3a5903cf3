"""A connection's chat delivery tracking (broker/chat/delivery.py) against a fake
connection: holding during the replay, the ``held_max`` bounds, confirmation marks.
Virtual time (autojump_clock) for the confirmation deadline."""

import trio

from broker.chat.delivery import ChatDeliveries
from broker.config.sections import ChatConfig


class FakeWire:
    def __init__(self):
        self.bytes_queued = 0


class FakeWebSocket:
    def __init__(self):
        self.wakes = 0

    def wake(self):
        self.wakes += 1


class FakeConnection:
    def __init__(self):
        self.wire = FakeWire()
        self.ws = FakeWebSocket()
        self.sent = []
        self.evicted = None

    def send_frame_nowait(self, frame, force=False, now=None):
        if self.evicted is not None:
            return False
        self.sent.append(frame)
        self.wire.bytes_queued += len(frame)
        return True

    def evict(self, code, reason, metric):
        self.evicted = (code, reason, metric)


def tracker(replaying, held_max=3, confirm_delay=0.05):
    connection = FakeConnection()
    return connection, ChatDeliveries(connection, ChatConfig(held_max=held_max, confirm_delay=confirm_delay), replaying)


async def test_past_held_max_while_replaying_the_connection_is_a_slow_consumer():
    connection, deliveries = tracker(replaying=True)
    for msg_id in (1, 2, 3):
        assert deliveries.deliver("c", msg_id, b"m")
    assert not deliveries.deliver("c", 4, b"m")
    assert connection.evicted == (4003, "slow consumer: too many messages while syncing", "slow_consumer")
    assert connection.sent == []  # held ones are the replay's to send
    assert [m for _, m, _ in deliveries.release_held()] == [1, 2, 3]


async def test_past_held_max_unconfirmed_the_connection_is_a_slow_consumer():
    connection, deliveries = tracker(replaying=False)
    for msg_id in (1, 2, 3):
        assert deliveries.deliver("c", msg_id, b"m")
    assert not deliveries.deliver("c", 4, b"m")
    assert connection.evicted == (4003, "slow consumer: deliveries not confirmed", "slow_consumer")


async def test_the_first_tracked_delivery_sets_the_confirmation_deadline_and_wakes_the_reader(autojump_clock):
    connection, deliveries = tracker(replaying=False, held_max=10)
    start = trio.current_time()
    assert deliveries.deliver("c", 1, b"one")
    await trio.sleep(0.01)
    assert deliveries.deliver("c", 2, b"two")
    assert deliveries.confirm_due == start + 0.05  # the first one's, not moved by later ones
    assert connection.ws.wakes == 1


async def test_a_mark_confirms_what_was_queued_up_to_it_newest_per_conversation():
    connection, deliveries = tracker(replaying=False, held_max=10)
    deliveries.deliver("a", 1, b"x")
    deliveries.deliver("b", 7, b"x")
    deliveries.deliver("a", 2, b"x")
    mark = connection.wire.bytes_queued
    deliveries.deliver("a", 3, b"x")  # queued after the ping: not confirmed by it
    assert deliveries.confirmed_up_to(mark) == {"a": 2, "b": 7}
    assert [(c, m) for _, c, m in deliveries.unconfirmed] == [("a", 3)]
    assert deliveries.confirmed_up_to(mark) == {}

"""The offline replay's flow control, exact in virtual time, against a fake connection."""

import pytest
import trio

from broker.chat.replay import Pacing, replay, windows

PACING = Pacing(window_count=100, window_bytes=256 * 1024, timeout=30.0)


class FakeConnection:
    """A client on the far side of a wire: it answers each ping ``rtt`` seconds later
    (or never), and everything sent before an answered ping counts as read."""

    def __init__(self, outbox_max=1 << 20, rtt=0.01, answers=True):
        self.outbox_max = outbox_max
        self.rtt = rtt
        self.answers = answers
        self.unread = 0  # bytes sent and not yet read by the client
        self.most_unread = 0
        self.received = []
        self.pings = 0
        self.held = []
        self.live = False
        self.closed = False
        self.close_code = None
        self.on_ping = None  # called at each ping (live messages arriving meanwhile)

    def send_frame_nowait(self, frame, force=False, now=None):
        if self.closed:
            return False
        self.unread += len(frame)
        if self.unread > self.outbox_max:
            self.evict(4003, "slow consumer: outbound queue overflowed", "slow_consumer")
            return False
        self.most_unread = max(self.most_unread, self.unread)
        self.received.append(frame)
        return True

    async def ping_within(self, seconds):
        self.pings += 1
        if self.on_ping is not None:
            self.on_ping(self.pings)
        if not self.answers:
            await trio.sleep(seconds)
            return False
        await trio.sleep(self.rtt)
        self.unread = 0
        return True

    def deliver_live(self, conversation, msg_id, frame):
        assert not self.live, "held messages only while replaying"
        self.held.append((conversation, msg_id, frame))

    def release_held(self):
        held, self.held = self.held, []
        if not held:
            self.live = True
        return held

    def evict(self, code, reason, metric):
        if self.close_code is None:
            self.close_code = code
        self.closed = True


def backlog(count, size=4200, conversations=5):
    return [(f"c{i % conversations}", i + 1, b"%d;" % (i + 1) + b"x" * size) for i in range(count)]


def test_windows_are_bounded_in_count_and_bytes():
    items = [("c", i, b"x" * 100) for i in range(25)]
    assert [len(w) for w in windows(items, 10, 10_000)] == [10, 10, 5]
    assert [len(w) for w in windows(items, 100, 1_000)] == [10, 10, 5]
    assert [len(w) for w in windows([("c", 1, b"x" * 5000), ("c", 2, b"y")], 10, 1_000)] == [1, 1]
    assert list(windows([], 10, 10)) == []


async def test_a_backlog_four_times_the_outbox_gets_through_a_client_that_reads(autojump_clock):
    connection = FakeConnection(outbox_max=1 << 20)
    stored = backlog(1000)  # ~4.2 MB
    confirmed = []

    async def confirm(positions):
        confirmed.append(dict(positions))

    assert await replay(connection, stored, PACING, confirm)
    assert connection.received == [frame for _, _, frame in stored] and connection.close_code is None
    assert connection.most_unread <= PACING.window_bytes  # never more than a window in flight
    assert connection.pings == len(confirmed) == len(list(windows(stored, 100, PACING.window_bytes)))
    assert confirmed[-1] == {f"c{i}": 996 + i for i in range(5)}  # the newest per conversation, at the end
    assert connection.live


async def test_a_client_that_stops_reading_is_evicted_after_the_timeout_with_nothing_confirmed(autojump_clock):
    connection = FakeConnection(answers=False)
    confirmed = []

    async def confirm(positions):
        confirmed.append(positions)

    start = trio.current_time()
    assert not await replay(connection, backlog(1000), PACING, confirm)
    assert trio.current_time() - start == PACING.timeout
    assert connection.close_code == 4003 and connection.pings == 1 and confirmed == []
    assert len(connection.received) == len(next(windows(backlog(1000), 100, PACING.window_bytes)))
    assert not connection.live


async def test_live_messages_held_meanwhile_follow_once_in_order_then_the_connection_goes_live(autojump_clock):
    connection = FakeConnection()

    def frame(conversation, msg_id):
        return f"{conversation}:{msg_id}".encode()

    # while the stored replay's first window waits for its pong, live messages arrive:
    # c1's 5 is in the stored replay too (committed between login and the store query)
    connection.held = [("c1", 5, frame("c1", 5)), ("c1", 6, frame("c1", 6)), ("c2", 3, frame("c2", 3))]

    def more_live(ping):
        if ping == 2:  # arrives while the held ones are being sent: held again, sent after
            connection.deliver_live("c2", 4, frame("c2", 4))

    connection.on_ping = more_live
    confirmed = {}

    async def confirm(positions):
        confirmed.update(positions)

    stored = [(c, m, frame(c, m)) for c, m in (("c1", 4), ("c1", 5), ("c2", 2))]
    assert await replay(connection, stored, PACING, confirm)
    assert [f.decode() for f in connection.received] == ["c1:4", "c1:5", "c2:2", "c1:6", "c2:3", "c2:4"]
    assert confirmed == {"c1": 6, "c2": 4} and connection.live and connection.pings == 3


@pytest.mark.parametrize("closes_at_ping", [1, 2])
async def test_a_connection_that_closes_ends_the_replay_quietly(autojump_clock, closes_at_ping):
    connection = FakeConnection()

    async def ping_within(seconds):
        connection.pings += 1
        if connection.pings == closes_at_ping:
            connection.closed = True
            return None
        await trio.sleep(0.01)
        return True

    connection.ping_within = ping_within
    confirmed = []

    async def confirm(positions):
        confirmed.append(positions)

    assert not await replay(connection, backlog(300), PACING, confirm)
    assert len(confirmed) == closes_at_ping - 1 and connection.close_code is None

"""A control-frame flooder is cut off within a bounded number of frames and bytes
(issue 20), authenticated or not: the token bucket's burst plus its strikes, then at
most AFTER_CLOSE_FRAMES / AFTER_CLOSE_BYTES while the close is exchanged; nothing it
sends is parsed after that, however long it goes on."""

from __future__ import annotations

import trio
import trio.testing
from wsproto.events import Ping, Pong

from broker.session.connection import Session
from broker.transport.websocket import AFTER_CLOSE_BYTES, AFTER_CLOSE_FRAMES, YIELD_EVERY
from tests.support.helpers import RawClient
from tests.support.virtual import virtual_broker
from tests.support.websocket import CountingStream

FLOOD_FRAMES = 100_000  # 600 KB of empty pongs, queued at once


async def flood_and_count(tmp_path, monkeypatch, target: str, frame) -> tuple[int, int, tuple[int, str]]:
    """Frames the session took, bytes it read, and the close the flooder got."""
    taken = 0
    control_frame = Session._control_frame

    def counting(self):
        nonlocal taken
        taken += 1
        return control_frame(self)

    monkeypatch.setattr(Session, "_control_frame", counting)
    async with virtual_broker(tmp_path) as broker, trio.open_nursery() as nursery:
        server_end, client_end = trio.testing.memory_stream_pair()
        counted = CountingStream(server_end)
        nursery.start_soon(broker.http_front().handle_tcp, counted)
        client = RawClient(client_end)
        assert (await client.handshake(target))[0] == 101
        read_at_upgrade = counted.received
        one = client.ws.send(frame)
        await client_end.send_all(one * FLOOD_FRAMES)
        with trio.fail_after(30):
            close = await client.expect_close()
        await trio.sleep(5)  # the close wait is over: later frames are not read either
        try:
            await client_end.send_all(one * 1000)
        except trio.BrokenResourceError:
            pass  # the broker dropped the socket
        await trio.sleep(5)
        return taken, counted.received - read_at_upgrade, close


def frame_bound(broker_limits) -> int:
    return broker_limits.message_burst + broker_limits.rate_limit_strikes + YIELD_EVERY + AFTER_CLOSE_FRAMES


async def test_an_unauthenticated_pong_flooder_is_cut_off_within_a_bound(tmp_path, monkeypatch, autojump_clock):
    from broker.config.sections import LimitsConfig

    taken, read, close = await flood_and_count(tmp_path, monkeypatch, "/ws", Pong(b""))
    assert close[0] == 4008
    assert taken <= frame_bound(LimitsConfig())
    assert read <= 65536 + AFTER_CLOSE_BYTES  # one receive buffer, then the after-close bound


async def test_an_authenticated_ping_flooder_is_cut_off_within_a_bound(tmp_path, monkeypatch, autojump_clock):
    from broker.config.sections import LimitsConfig

    taken, read, close = await flood_and_count(tmp_path, monkeypatch, "/ws?token=demo-token", Ping(b"x"))
    assert close[0] == 4008
    assert taken <= frame_bound(LimitsConfig())
    assert read <= 65536 + AFTER_CLOSE_BYTES

"""Once its close is decided, a connection is read no further than a bound (issue 20):
a flooder's frames are not parsed for the whole close wait, a well-behaved peer's
close answer is still awaited and seen."""

from __future__ import annotations

import trio
import trio.testing
from wsproto.events import CloseConnection

from broker.transport.websocket import AFTER_CLOSE_BYTES, AFTER_CLOSE_FRAMES, ServerWebSocket
from broker.transport.wire import WireStream
from tests.support.clients import client_frame
from tests.support.websocket import CountingStream, Peer, connected


async def test_a_flooder_is_read_no_further_than_the_bound_after_our_close(autojump_clock):
    asked: list[int] = []
    async with connected(control_budget=lambda: asked.append(1) or True) as (ws, peer):
        pong = client_frame(0xA, b"")
        await peer.send(pong * 40_000)  # 240 KB queued before the close is decided
        before = len(asked)
        with trio.fail_after(1):  # no waiting out the caller's bound: it returns by itself
            await ws.aclose(4008, "rate limit exceeded repeatedly")
        parsed_after = len(asked) - before
        assert parsed_after <= AFTER_CLOSE_FRAMES
        assert (await peer.next_event()).code == 4008  # the peer still gets our close frame
        await peer.send(pong * 10_000)  # sent after the close: nothing of it is read
        await trio.sleep(1)
        assert len(asked) - before == parsed_after


async def test_bytes_read_after_the_close_are_bounded_too(autojump_clock):
    """Few frames, many bytes: one message's fragments, each under the message bound."""
    server_end, client_end = trio.testing.memory_stream_pair()
    counting = CountingStream(server_end)
    async with trio.open_nursery() as nursery:
        ws = ServerWebSocket(WireStream(counting, spawn=nursery.start_soon), max_message_bytes=1 << 30)
        peer = Peer(client_end)
        ws.accept(peer.key)
        await peer.next_event()
        fragment = client_frame(0x0, b"y" * 30_000, fin=False)
        await peer.send(client_frame(0x1, b"x", fin=False))
        before = counting.received
        with trio.fail_after(1):
            async with trio.open_nursery() as closing:
                closing.start_soon(ws.aclose, 1000, "")
                for _ in range(40):  # 1.2 MB, sent while the server waits for our close's answer
                    await peer.send(fragment)
        assert counting.received - before <= AFTER_CLOSE_BYTES
        nursery.cancel_scope.cancel()


async def test_a_peer_answering_the_close_is_still_heard():
    async with connected() as (ws, peer):
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def close() -> None:
                await ws.aclose(4003, "slow consumer")
                done.set()

            nursery.start_soon(close)
            ours = await peer.next_event()
            await peer.send(client_frame(0xA, b"") * (AFTER_CLOSE_FRAMES // 2))  # in flight when it saw our close
            await peer.send_event(ours.response())
            with trio.fail_after(5):
                await done.wait()
        assert ws.closed is not None and ws.closed.code == 4003
        assert isinstance(ours, CloseConnection)

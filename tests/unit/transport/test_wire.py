"""WireStream over a real socket pair: ordering, bounds, cancel-safety, replay."""


import pytest
import trio
import trio.testing

from broker.transport.wire import OutboxFull, WireStream
from tests.support.helpers import socket_streams


async def read_exactly(stream, n):
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(65536)
        assert chunk, "peer closed early"
        data += chunk
    return bytes(data)


async def test_small_writes_go_straight_to_the_kernel_in_order():
    local, peer = socket_streams()
    wire = WireStream(local)
    for i in range(100):
        wire.write_nowait(b"%03d" % i)
    assert wire.backlog_bytes == 0
    assert await read_exactly(peer, 300) == b"".join(b"%03d" % i for i in range(100))


@pytest.mark.slow
async def test_backlog_is_bounded_and_flushes_in_order_when_peer_reads():
    local, peer = socket_streams()
    async with trio.open_nursery() as nursery:
        wire = WireStream(local, max_backlog=200_000, spawn=nursery.start_soon)
        chunks = [bytes([i % 251]) * 10_000 for i in range(60)]
        written = []
        with pytest.raises(OutboxFull):
            for chunk in chunks:
                wire.write_nowait(chunk)
                written.append(chunk)
        assert 0 < wire.backlog_bytes <= 200_000
        expected = b"".join(written)
        assert await read_exactly(peer, len(expected)) == expected
    assert wire.backlog_bytes == 0  # the flush task sent it all and ended


async def test_cancelled_send_all_never_leaves_half_a_frame():
    local, peer = socket_streams()
    wire = WireStream(local)
    big = b"A" * 500_000
    with trio.move_on_after(0.05) as scope:
        await wire.send_all(big)  # the peer is not reading: this blocks
    assert scope.cancelled_caught
    wire.write_nowait(b"B" * 10, force=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wire.send_all, b"")
        assert await read_exactly(peer, 500_010) == big + b"B" * 10


async def test_preread_bytes_are_replayed_first():
    local, peer = socket_streams()
    wire = WireStream(local, preread=b"GET / HTTP/1.1\r\n")
    await peer.send_all(b"rest")
    assert await wire.receive_some(4) == b"GET "
    assert await wire.receive_some() == b"/ HTTP/1.1\r\n"
    assert await wire.receive_some() == b"rest"


async def test_peer_gone_makes_writes_raise_broken():
    local, peer = socket_streams()
    wire = WireStream(local)
    await peer.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(1000):
            wire.write_nowait(b"x" * 1000)
            await trio.sleep(0)
    assert wire.failure is not None


async def test_closed_stream_refuses_writes():
    local, _peer = socket_streams()
    wire = WireStream(local)
    await wire.aclose()
    with pytest.raises(trio.ClosedResourceError):
        wire.write_nowait(b"x")


async def test_cork_sends_several_writes_in_one():
    local, peer = socket_streams()
    wire = WireStream(local)
    wire.cork()
    await wire.send_all(b"HTTP/1.1 101 ...\r\n\r\n")
    wire.write_nowait(b"greeting")
    assert wire.bytes_out == 0 and wire.backlog_bytes > 0
    wire.uncork()
    assert wire.backlog_bytes == 0
    assert await read_exactly(peer, 28) == b"HTTP/1.1 101 ...\r\n\r\ngreeting"


async def test_generic_stream_path_used_for_non_socket_transports():
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        wire = WireStream(left, spawn=nursery.start_soon)
        wire.write_nowait(b"hello ")
        wire.write_nowait(b"world")
        assert await read_exactly(right, 11) == b"hello world"

"""broker.transport.websocket.ServerWebSocket on its own: handshake, framing, control frames,
the close handshake, protocol errors and cancellation.

Rules: the peer is a wsproto client (or raw bytes where the test breaks the
protocol on purpose) over an in-memory stream or a loopback socket pair; every wait
is under ``fail_after``; anything timed runs on the virtual clock.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)

from broker.transport.websocket import ConnectionClosed, ServerWebSocket, choose_subprotocol, switching_protocols
from broker.transport.wire import WireStream
from tests.support.clients import client_frame
from tests.support.helpers import socket_streams
from tests.support.websocket import Peer, connected


async def expect_closed(ws: ServerWebSocket) -> ConnectionClosed:
    with trio.fail_after(5), pytest.raises(ConnectionClosed) as info:
        await ws.receive_message()
    return info.value


# -- handshake -----------------------------------------------------------------


def test_switching_protocols_answers_the_rfc_example_key():
    response = switching_protocols(b"dGhlIHNhbXBsZSBub25jZQ==", "chat")
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert b"\r\nSec-WebSocket-Protocol: chat\r\n" in response and response.endswith(b"\r\n\r\n")
    assert b"Sec-WebSocket-Protocol" not in switching_protocols(b"dGhlIHNhbXBsZSBub25jZQ==")


def test_the_client_s_first_supported_subprotocol_is_chosen():
    assert choose_subprotocol(["b", "a"], ("a", "b")) == "b"
    assert choose_subprotocol(["x"], ("a",)) is None
    assert choose_subprotocol([], ("a",)) is None


# -- messages and control frames ---------------------------------------------


async def test_text_and_binary_messages_both_ways():
    async with connected() as (ws, peer):
        await peer.send_event(TextMessage(data="héllo"))
        await peer.send_event(BytesMessage(data=b"\x00\x01"))
        assert await ws.receive_message() == "héllo"
        assert await ws.receive_message() == b"\x00\x01"
        await ws.send_message("to you")
        await ws.send_message(b"\xff")
        assert (await peer.next_event()).data == "to you"
        assert (await peer.next_event()).data == b"\xff"


async def test_a_ping_is_answered_with_its_payload():
    async with connected() as (ws, peer), trio.open_nursery() as reading:
        reading.start_soon(ws.receive_message)
        await peer.send_event(Ping(payload=b"abc"))
        pong = await peer.next_event()
        assert isinstance(pong, Pong) and pong.payload == b"abc"
        reading.cancel_scope.cancel()


async def test_fragments_are_reassembled_with_control_frames_between():
    async with connected() as (ws, peer):
        await peer.send_event(TextMessage(data="one ", message_finished=False))
        await peer.send_event(Ping(payload=b"p"))
        await peer.send_event(TextMessage(data="two ", message_finished=False))
        await peer.send_event(TextMessage(data="three", message_finished=True))
        await peer.send_event(BytesMessage(data=b"ab", message_finished=False))
        await peer.send_event(BytesMessage(data=b"cd", message_finished=True))
        assert await ws.receive_message() == "one two three"
        assert await ws.receive_message() == b"abcd"
        assert isinstance(await peer.next_event(), Pong)


async def test_a_message_over_the_bound_closes_with_1009():
    async with connected(max_message_bytes=1000) as (ws, peer):
        await peer.send_event(TextMessage(data="x" * 1000))
        assert await ws.receive_message() == "x" * 1000  # at the bound: accepted
        await peer.send_event(TextMessage(data="y" * 1001))
        closed = await expect_closed(ws)
        assert (closed.code, closed.by_peer) == (1009, False)
        close = await peer.next_event()
        assert isinstance(close, CloseConnection) and close.code == 1009


async def test_fragments_adding_up_over_the_bound_close_with_1009():
    async with connected(max_message_bytes=1000) as (ws, peer):
        for _ in range(3):
            await peer.send_event(BytesMessage(data=b"z" * 400, message_finished=False))
        assert (await expect_closed(ws)).code == 1009
        assert (await peer.next_event()).code == 1009


async def test_the_bound_counts_utf8_bytes_not_characters():
    async with connected(max_message_bytes=1000) as (ws, peer):
        await peer.send_event(TextMessage(data="é" * 501))  # 1002 bytes
        assert (await expect_closed(ws)).code == 1009


# -- protocol violations: the RFC's close codes, never a silent drop ------------


@pytest.mark.parametrize(("frame", "code"), [
    (client_frame(0x1, b"hello", mask=False), 1002),  # a client frame must be masked
    (client_frame(0x3, b"?"), 1002),  # a reserved opcode
    (client_frame(0x9, b"ping", fin=False), 1002),  # a fragmented control frame
    (client_frame(0x1, b"x", rsv=0x40), 1002),  # an extension bit nobody agreed on
    (client_frame(0x0, b"orphan"), 1002),  # a continuation with nothing to continue
    (client_frame(0x1, b"\xff\xfe bad utf-8"), 1007),
    (client_frame(0x1, b"ok \xe2\x82", fin=False) + client_frame(0x0, b"\x28"), 1007),  # broken across fragments
])
async def test_protocol_violations_get_a_close_frame_with_the_rfc_code(frame, code):
    async with connected() as (ws, peer):
        await peer.send(frame)
        closed = await expect_closed(ws)
        assert (closed.code, closed.by_peer) == (code, False)
        close = await peer.next_event()
        assert isinstance(close, CloseConnection) and close.code == code
        with trio.fail_after(5):
            await ws.aclose()  # nothing more is read from a peer that broke the protocol


# -- closing -------------------------------------------------------------------


async def test_the_peer_s_close_is_answered_with_its_code():
    async with connected() as (ws, peer):
        await peer.send_event(TextMessage(data="last"))
        await peer.send_event(CloseConnection(code=4321, reason="bye"))
        assert await ws.receive_message() == "last"  # what came before the close is delivered
        closed = await expect_closed(ws)
        assert (closed.code, closed.reason, closed.by_peer) == (4321, "bye", True)
        answer = await peer.next_event()
        assert isinstance(answer, CloseConnection) and answer.code == 4321
        with pytest.raises(ConnectionClosed):
            await ws.send_message("too late")
        with trio.fail_after(5):
            await ws.aclose(1000)  # already closed both ways: returns at once


async def test_our_close_waits_for_the_peer_s_answer_and_drops_data_meanwhile():
    async with connected() as (ws, peer):
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def close():
                await ws.aclose(4003, "slow consumer")
                done.set()

            nursery.start_soon(close)
            close_frame = await peer.next_event()
            assert (close_frame.code, close_frame.reason) == (4003, "slow consumer")
            assert not done.is_set()
            await peer.send(client_frame(0x1, b"sent before it saw our close"))
            await peer.send_event(close_frame.response())
            with trio.fail_after(5):
                await done.wait()
        assert not ws.send_frame_nowait(b"\x81\x00")  # nothing after the close frame


async def test_a_peer_that_never_answers_the_close_is_bounded_by_the_caller(autojump_clock):
    async with connected() as (ws, peer):
        with trio.move_on_after(5) as bounded:
            await ws.aclose(1001, "going away")
        assert bounded.cancelled_caught
        assert (await peer.next_event()).code == 1001


async def test_a_vanished_peer_is_1006():
    async with connected() as (ws, peer):
        await peer.stream.aclose()
        closed = await expect_closed(ws)
        assert (closed.code, closed.by_peer) == (1006, True)


# -- pings ---------------------------------------------------------------------


async def test_ping_within_reads_by_itself_and_keeps_messages_for_the_reader(autojump_clock):
    async with connected() as (ws, peer):
        async with trio.open_nursery() as nursery:
            result = []

            async def ping():
                result.append(await ws.ping_within(10))

            nursery.start_soon(ping)
            ping_event = await peer.next_event()
            await peer.send_event(TextMessage(data="first"))
            await peer.send_event(TextMessage(data="second"))
            await peer.send_event(ping_event.response())
        assert result == [True]
        assert await ws.receive_message() == "first"  # nothing lost, order kept
        assert await ws.receive_message() == "second"


async def test_ping_within_waits_on_a_concurrent_reader(autojump_clock):
    async with connected() as (ws, peer):
        async with trio.open_nursery() as nursery:
            received = []

            async def read():
                received.append(await ws.receive_message())

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            pinged = []

            async def ping():
                pinged.append(await ws.ping_within(10))

            nursery.start_soon(ping)
            await peer.send_event((await peer.next_event()).response())
            await peer.send_event(TextMessage(data="after the pong"))
        assert pinged == [True] and received == ["after the pong"]


async def test_ping_within_false_without_a_pong_and_none_once_closed(autojump_clock):
    async with connected() as (ws, peer):
        start = trio.current_time()
        assert await ws.ping_within(7) is False
        assert trio.current_time() - start == 7
        assert isinstance(await peer.next_event(), Ping)
        await peer.send_event(CloseConnection(code=1000))
        assert await ws.ping_within(7) is None


async def test_a_pong_answers_every_earlier_ping(autojump_clock):
    async with connected() as (ws, peer):
        first, second = ws.ping_nowait(), ws.ping_nowait()
        await peer.next_event()
        await peer.send_event((await peer.next_event()).response())  # only the second is answered
        with trio.fail_after(1):
            await ws.wait_pong(first)
            await ws.wait_pong(second)
        assert ws.pings_answered == second


# -- fairness and budgets ----------------------------------------------------------


async def test_control_frames_ask_the_budget_and_a_refused_ping_gets_no_pong():
    asked = []
    async with connected(control_budget=lambda: asked.append(1) or len(asked) <= 2) as (ws, peer):
        await peer.send(client_frame(0x9, b"1") + client_frame(0xA, b"x") + client_frame(0x9, b"3")
                        + client_frame(0x1, b"then a message"))
        assert await ws.receive_message() == "then a message"
        assert len(asked) == 3
        assert (await peer.next_event()).payload == b"1"  # the third frame, over budget, got no pong
        await ws.send_message("marker")
        assert (await peer.next_event()).data == "marker"


async def test_a_flood_of_frames_in_one_read_lets_other_tasks_run():
    async with connected() as (ws, peer):
        frames = 3200
        await peer.send(client_frame(0xA, b"unsolicited") * frames + client_frame(0x1, b"end"))
        rounds = 0
        finished = False

        async def other_task():
            nonlocal rounds
            while not finished:
                rounds += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            assert await ws.receive_message() == "end"
            finished = True
        assert rounds >= frames // 32 - 5  # about one turn per YIELD_EVERY frames


# -- cancellation ---------------------------------------------------------------


async def test_a_cancelled_receive_loses_nothing_of_a_half_received_message():
    async with connected() as (ws, peer):
        frame = client_frame(0x1, b"0123456789" * 100)
        await peer.send(frame[:500])
        with trio.move_on_after(0.05) as waited:
            await ws.receive_message()
        assert waited.cancelled_caught
        await peer.send(frame[500:])
        with trio.fail_after(5):
            assert await ws.receive_message() == "0123456789" * 100


async def test_a_cancelled_send_and_the_close_after_it_reach_the_peer_whole():
    local, remote = socket_streams()
    async with trio.open_nursery() as nursery:
        ws = ServerWebSocket(WireStream(local, spawn=nursery.start_soon))
        peer = Peer(remote)
        ws.accept(peer.key)
        assert isinstance(await peer.next_event(), AcceptConnection)
        big = b"B" * 600_000
        with trio.move_on_after(0.05) as waited:
            await ws.send_message(big)  # the peer is not reading: this blocks mid-frame
        assert waited.cancelled_caught
        nursery.start_soon(ws.aclose, 4001, "replaced")
        received = b""
        event = await peer.next_event()
        while isinstance(event, Message):
            received += event.data
            event = await peer.next_event()
        assert received == big  # the whole frame, then a well-formed close frame
        assert isinstance(event, CloseConnection) and event.code == 4001
        await peer.send_event(event.response())


# -- the reader as timer -----------------------------------------------------------


async def test_receive_returns_none_at_the_deadline_and_when_woken(autojump_clock):
    async with connected() as (ws, peer):
        start = trio.current_time()
        assert await ws.receive_message(start + 3) is None
        assert trio.current_time() - start == 3
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: trio.sleep(1))
            woken = []

            async def read():
                woken.append(await ws.receive_message(start + 100))

            nursery.start_soon(read)
            await trio.sleep(1)
            ws.wake()
        assert woken == [None] and trio.current_time() - start == 4
        seq = ws.ping_nowait()
        ws.wake_on_pong(seq)
        await peer.send_event((await peer.next_event()).response())
        with trio.fail_after(1):
            assert await ws.receive_message(math.inf) is None  # the pong woke it
        await peer.send_event(TextMessage(data="after"))
        assert await ws.receive_message(trio.current_time() + 1) == "after"


async def test_a_past_deadline_still_yields():
    async with connected() as (ws, peer):
        ran = []

        async def other():
            ran.append(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            for _ in range(3):
                assert await ws.receive_message(0) is None
            assert ran == [1]

import pytest
import trio
import trio.testing

from actors import Mailbox, MailboxClosed, MailboxFull, Reply


async def test_send_nowait_raises_when_full_and_stats_show_depth():
    box: Mailbox[int] = Mailbox(2)
    box.send_nowait(1)
    box.send_nowait(2)
    assert box.stats().depth == 2 and box.stats().capacity == 2
    with pytest.raises(MailboxFull):
        box.send_nowait(3)
    assert await box.receive() == 1
    box.send_nowait(3)
    assert [await box.receive(), await box.receive()] == [2, 3]


async def test_send_waits_for_room(autojump_clock):
    box: Mailbox[str] = Mailbox(1)
    box.send_nowait("a")
    sent_at = []

    async def sender():
        await box.send("b")
        sent_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.sleep(10)
        assert box.stats().waiting_senders == 1
        assert await box.receive() == "a"
    assert sent_at == [10]
    assert await box.receive() == "b"


async def test_closed_mailbox_refuses_senders():
    box: Mailbox[int] = Mailbox(4)
    box.close()
    with pytest.raises(MailboxClosed):
        box.send_nowait(1)
    with pytest.raises(MailboxClosed):
        await box.send(1)


async def test_close_sending_lets_owner_drain_then_ends_iteration():
    box: Mailbox[int] = Mailbox(4)
    for i in range(3):
        box.send_nowait(i)
    box.close_sending()
    assert [m async for m in box] == [0, 1, 2]


async def test_receive_run_nowait_keeps_order_and_returns_leftover():
    box: Mailbox[str] = Mailbox(10)
    for m in ["w2", "w3", "r1", "w4"]:
        box.send_nowait(m)
    run, leftover = box.receive_run_nowait("w1", lambda m: m.startswith("w"), limit=10)
    assert run == ["w1", "w2", "w3"] and leftover == "r1"
    run, leftover = box.receive_run_nowait(await box.receive(), lambda m: True, limit=1)
    assert run == ["w4"] and leftover is None
    assert box.is_empty()


async def test_receive_run_past_nowait_takes_passing_messages_apart_and_stops_at_others():
    box: Mailbox[str] = Mailbox(10)
    for m in ["f1", "w2", "f2", "w3", "x1", "w4"]:
        box.send_nowait(m)
    run, passed, leftover = box.receive_run_past_nowait(
        "w1", lambda m: m.startswith("w"), lambda m: m.startswith("f"), limit=10)
    assert run == ["w1", "w2", "w3"] and passed == ["f1", "f2"] and leftover == "x1"
    run, passed, leftover = box.receive_run_past_nowait(
        await box.receive(), lambda m: True, lambda m: False, limit=1)
    assert run == ["w4"] and passed == [] and leftover is None
    assert box.is_empty()


async def test_reply_value_and_error():
    ok: Reply[int] = Reply()
    ok.set(5)
    assert await ok.wait() == 5
    with pytest.raises(RuntimeError):
        ok.set(6)
    bad: Reply[int] = Reply()
    bad.fail(ValueError("nope"))
    with pytest.raises(ValueError):
        await bad.wait()

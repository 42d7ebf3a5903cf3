import pytest
import trio

from actors import ChildGaveUp, ChildState, Restart, RestartIntensity, open_supervisor


async def test_crashing_child_does_not_take_siblings_down(autojump_clock):
    ticks = []

    async def steady():
        for i in range(5):
            await trio.sleep(1)
            ticks.append(i)

    async def crasher():
        await trio.sleep(0.5)
        raise RuntimeError("boom")

    async with open_supervisor() as sup:
        good = sup.spawn(steady, name="steady")
        bad = sup.spawn(crasher, name="crasher")
    assert ticks == [0, 1, 2, 3, 4]
    assert good.state is ChildState.EXITED
    assert bad.state is ChildState.CRASHED and isinstance(bad.last_error, RuntimeError)


async def test_transient_child_restarts_until_intensity_exceeded(autojump_clock):
    runs = []

    async def flaky():
        runs.append(trio.current_time())
        await trio.sleep(1)
        raise RuntimeError("flaky")

    async with open_supervisor() as sup:
        handle = sup.spawn(
            flaky, restart=Restart.TRANSIENT, intensity=RestartIntensity(max_restarts=3, within=10)
        )
    # started at 0, restarted at 1, 2, 3; the 4th restart within 10 s is refused
    assert runs == [0, 1, 2, 3]
    assert handle.restarts == 3
    assert handle.state is ChildState.GAVE_UP


async def test_restarts_spread_over_time_stay_within_intensity(autojump_clock):
    runs = []

    async def slow_flaky():
        runs.append(trio.current_time())
        await trio.sleep(4)
        if len(runs) < 6:
            raise RuntimeError("again")

    async with open_supervisor() as sup:
        handle = sup.spawn(
            slow_flaky, restart=Restart.TRANSIENT, intensity=RestartIntensity(max_restarts=2, within=5)
        )
    assert len(runs) == 6 and handle.state is ChildState.EXITED and handle.restarts == 5


async def test_transient_child_normal_exit_is_not_restarted():
    count = 0

    async def once():
        nonlocal count
        count += 1

    async with open_supervisor() as sup:
        handle = sup.spawn(once, restart=Restart.TRANSIENT)
    assert count == 1 and handle.state is ChildState.EXITED


async def test_permanent_child_restarts_after_normal_exit(autojump_clock):
    count = 0

    async def short_lived():
        nonlocal count
        count += 1
        await trio.sleep(10)

    async with open_supervisor() as sup:
        handle = sup.spawn(short_lived, restart=Restart.PERMANENT, intensity=RestartIntensity(2, 100))
    assert count == 3 and handle.state is ChildState.GAVE_UP


async def test_stop_records_reason_and_is_not_restarted(autojump_clock):
    async def forever():
        await trio.sleep_forever()

    async with open_supervisor() as sup:
        handle = sup.spawn(forever, restart=Restart.PERMANENT)
        await trio.sleep(3)
        handle.stop("evicted")
        handle.stop("second reason is ignored")
        await handle.wait()
        assert handle.state is ChildState.STOPPED and handle.stop_reason == "evicted"
        assert sup.children == []


async def test_escalating_child_cancels_the_supervisor(autojump_clock):
    sibling_cancelled = False

    async def sibling():
        nonlocal sibling_cancelled
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            sibling_cancelled = True
            raise

    async def broken():
        raise OSError("disk gone")

    with pytest.RaisesGroup(ChildGaveUp, flatten_subgroups=True):
        async with open_supervisor() as sup:
            sup.spawn(sibling)
            sup.spawn(broken, restart=Restart.TRANSIENT, intensity=RestartIntensity(1, 5), escalate=True)
    assert sibling_cancelled


async def test_start_waits_for_task_status_and_cancelling_stops_everything(autojump_clock):
    async def server(port, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started(port + 1)
        await trio.sleep_forever()

    with trio.move_on_after(5):
        async with open_supervisor() as sup:
            handle, value = await sup.start(server, 8080, name="server")
            assert value == 8081 and handle.name == "server"
    assert trio.current_time() == 5

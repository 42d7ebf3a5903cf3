"""The accept loop under descriptor exhaustion, in virtual time, with a scripted listener;
the open-file limit the CLI raises."""

import errno
import logging
import subprocess
import sys

import pytest
import trio

from broker.transport.accept import Episode, accept_connections


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


class ScriptedListener(trio.abc.Listener):
    """``accept`` returns (or raises) the script's items in order, then waits forever;
    a number in the script is a pause of that many seconds."""

    def __init__(self, script) -> None:
        self.script = list(script)
        self.closed = False

    async def accept(self):
        await trio.lowlevel.checkpoint()
        if not self.script:
            await trio.sleep_forever()
        item = self.script.pop(0)
        if isinstance(item, (int, float)):
            await trio.sleep(item)
            item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        self.closed = True


def emfile() -> OSError:
    return OSError(errno.EMFILE, "Too many open files")


async def serve_until(listener, handled: dict, count: int, handler=None, **backoff):
    """Run the accept loop until ``count`` connections were handled."""
    done = trio.Event()

    async def record(conn):
        handled[conn.name] = trio.current_time()
        if len(handled) == count:
            done.set()
        if handler is not None:
            await handler(conn)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: accept_connections(record, [listener], handler_nursery=nursery, **backoff))
        with trio.fail_after(100):
            await done.wait()
        nursery.cancel_scope.cancel()


async def test_emfile_backs_off_doubling_to_a_cap_and_logs_one_episode(autojump_clock, caplog):
    caplog.set_level(logging.INFO, "broker.accept")
    handled: dict = {}
    first, later = Conn("first"), Conn("later")
    listener = ScriptedListener([emfile()] * 10 + [OSError(errno.ENFILE, "File table overflow"), first,
                                 emfile(), Conn("flapping"), 10, later])
    await serve_until(listener, handled, 3, lambda conn: trio.sleep_forever(),  # connections stay open
                      min_backoff=0.01, max_backoff=1.0)
    delays = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0, 1.0, 1.0]
    assert handled["first"] == pytest.approx(sum(delays))
    assert handled["flapping"] == pytest.approx(sum(delays) + 0.01)  # a new failure backs off from the start
    assert first.closed and listener.closed  # closed when the loop was cancelled
    records = [r for r in caplog.records if r.name == "broker.accept"]
    assert [r.levelname for r in records] == ["WARNING", "WARNING"]  # a start; the end only after quiet
    assert "EMFILE" in records[0].getMessage() and "12 times in all" in records[1].getMessage()
    assert not any(r.exc_info for r in records)


async def test_a_closing_connection_ends_the_backoff_at_once(autojump_clock):
    handled: dict = {}

    async def hold_first(conn):
        if conn.name == "first":
            await trio.sleep(1)  # then it closes: a descriptor is free

    listener = ScriptedListener([Conn("first"), 0.5, emfile(), Conn("second")])
    await serve_until(listener, handled, 2, hold_first, min_backoff=50, max_backoff=50)
    assert handled["second"] == pytest.approx(handled["first"] + 1)


async def test_other_accept_errors_propagate(autojump_clock):
    listener = ScriptedListener([OSError(errno.EBADF, "Bad file descriptor")])
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await accept_connections(lambda conn: trio.sleep(0), [listener], handler_nursery=nursery)
    assert caught.group_contains(OSError, match="Bad file descriptor")


def test_an_episode_logs_its_start_a_summary_per_interval_and_its_end(caplog):
    caplog.set_level(logging.INFO, "test.episode")
    episode = Episode(logging.getLogger("test.episode"), "refused", interval=60, quiet=5)
    for now in (0, 1, 2, 30):
        episode.occurred("bound", now)
    episode.occurred("bound", 61)  # an interval after the first report: the summary
    episode.occurred("bound", 62)
    episode.over(66)  # not quiet long enough yet
    episode.over(67)
    episode.over(90)  # nothing more: it is already over
    assert [r.getMessage() for r in caplog.records] == [
        "refused (bound)", "refused 4 more times in 61 s (latest: bound)", "refused 6 times in all; over now"]


@pytest.mark.slow
def test_raise_descriptor_limit_lifts_the_soft_limit_up_to_the_hard_one():
    """In a child process (the limit is process-wide): soft 64, hard 256."""
    code = """
import logging, resource
from broker.transport.accept import raise_descriptor_limit
logging.basicConfig(level=logging.WARNING, format="%(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 256))
print(raise_descriptor_limit(128), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
print(raise_descriptor_limit(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
print(raise_descriptor_limit(100), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["128 128", "256 256", "256 256"]  # never lowered
    assert result.stderr.count("open-file limit 256 is below the 1000 descriptors") == 1

"""Pipelined HTTP publishes: a keep-alive client may send its next publishes without
waiting for each answer. The task that reads requests queues each publish in its
job's room at once (one commit can take them together) and hands the answer to come
to the task that writes answers, through a :class:`PublishPipeline`, so they are
written in request order. Bounded: the reader waits while PIPELINE_DEPTH answers are
not written (backpressure on that connection only).
"""

from __future__ import annotations

import attrs
import trio

from .api import PublishAnswer

PIPELINE_DEPTH = 16  # pipelined publishes of one connection waiting for their answers


class PublishPipeline:
    """One connection's pipelined publishes, from the task that reads requests to the
    one that writes their answers, in order; bounded (PIPELINE_DEPTH: the reader waits
    while that many are not written)."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[PublishAnswer](PIPELINE_DEPTH)
        self._unwritten = 0
        self._idle = trio.Event()
        self._idle.set()

    async def add(self, answer: PublishAnswer) -> None:
        self._unwritten += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        await self._send.send(answer)

    async def next(self) -> PublishAnswer:
        """The oldest answer not taken yet; raises EndOfChannel once closed and empty."""
        return await self._receive.receive()

    def next_nowait(self) -> PublishAnswer | None:
        """The oldest answer not taken yet, if one is queued."""
        try:
            return self._receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return None

    def written(self, count: int) -> None:
        self._unwritten -= count
        if self._unwritten == 0:
            self._idle.set()

    @property
    def busy(self) -> bool:
        """Some answer queued is not written yet."""
        return self._unwritten > 0

    async def drained(self) -> None:
        """Return once every answer queued so far is written."""
        await self._idle.wait()

    def close(self) -> None:
        self._send.close()


@attrs.frozen
class Pipelined:
    """The first publish a client pipelined: its answer, still to be written."""

    answer: PublishAnswer


async def drained(pipeline: PublishPipeline | None) -> None:
    """Return once every answer queued on ``pipeline`` (if any) is written."""
    if pipeline is not None:
        await pipeline.drained()

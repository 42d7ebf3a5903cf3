"""A room's occupancy reports (broker/jobs/occupancy.py) with a fake backplane and
sink: only crossings the backplane gives this node are recorded, a backplane that
cannot be reached leaves the room unsettled, and events the store refused are kept
and recorded first, in order, at the next try."""

from __future__ import annotations

import json

from broker.cluster import BackplaneUnavailable
from broker.jobs.occupancy import Occupancy
from broker.store import StoreError


class Sink:
    def __init__(self, wanted=("job.occupied", "job.vacated")) -> None:
        self.wanted = set(wanted)
        self.recorded: list[tuple[str, str]] = []
        self.refuse = False

    def wants(self, event_type: str) -> bool:
        return event_type in self.wanted

    def statements(self, event_type, key, data):
        return []

    def committed(self) -> None:
        pass

    async def record(self, event_type: str, key: str, data: bytes) -> None:
        if self.refuse:
            raise StoreError("disk full")
        self.recorded.append((event_type, json.loads(data)["jobId"]))


class Shared:
    """A backplane that answers as told and remembers what it was asked."""

    clustered = True

    def __init__(self) -> None:
        self.answers: list[bool | Exception] = []
        self.asked: list[bool] = []
        self.ended: list[str] = []

    async def room_changed(self, job_id: str, occupied: bool) -> bool:
        self.asked.append(occupied)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def room_ended(self, job_id: str) -> None:
        self.ended.append(job_id)

    async def sweep(self):
        return []


async def test_only_the_crossings_given_to_this_node_are_recorded():
    sink, shared = Sink(), Shared()
    occupancy = Occupancy("j", sink, shared)
    shared.answers = [False, True]  # another node's room had members: occupied before; then the last to leave
    await occupancy.report(True)
    assert occupancy.settled(True) and sink.recorded == []
    await occupancy.report(True)  # no crossing: the backplane is not asked
    await occupancy.report(False)
    assert shared.asked == [True, False]
    assert sink.recorded == [("job.vacated", "j")] and occupancy.settled(False)


async def test_an_unreachable_backplane_leaves_the_room_unsettled_until_it_answers():
    sink, shared = Sink(), Shared()
    occupancy = Occupancy("j", sink, shared)
    shared.answers = [BackplaneUnavailable("redis: down"), True]
    await occupancy.report(True)
    assert not occupancy.settled(True) and sink.recorded == []
    await occupancy.report(True)
    assert occupancy.settled(True) and sink.recorded == [("job.occupied", "j")]


async def test_events_the_store_refused_are_recorded_first_and_in_order():
    sink, shared = Sink(), Shared()
    occupancy = Occupancy("j", sink, shared)
    sink.refuse = True
    shared.answers = [True, True]
    await occupancy.report(True)
    assert not occupancy.settled(True)  # decided, not recorded
    await occupancy.report(True)  # still refused: the vacate waits behind it
    sink.refuse = False
    await occupancy.report(False)
    assert sink.recorded == [("job.occupied", "j"), ("job.vacated", "j")] and occupancy.settled(False)


async def test_nothing_is_asked_when_no_endpoint_takes_job_events():
    sink, shared = Sink(wanted=()), Shared()
    occupancy = Occupancy("j", sink, shared)
    assert occupancy.settled(True)
    await occupancy.report(True)
    occupancy.ended()
    assert shared.asked == [] and shared.ended == []


async def test_a_failed_room_whose_members_counted_gives_them_up():
    sink, shared = Sink(), Shared()
    occupancy = Occupancy("j", sink, shared)
    shared.answers = [True]
    await occupancy.report(True)
    occupancy.ended()
    assert shared.ended == ["j"]

"""A broker without sockets for virtual-time tests (``autojump_clock``): the real broker
with an in-memory job store (SQLite's worker threads would race the jumping clock), and
clients through its real front end over in-memory streams."""

from __future__ import annotations

from contextlib import asynccontextmanager

import trio
import trio.testing

from actors import open_supervisor
from broker.app import Broker
from broker.cluster import LocalBackplane
from broker.jobs.job_rooms import JobRooms

from .helpers import MemoryStore, RawClient, make_config


@asynccontextmanager
async def virtual_broker(tmp_path, **sections):
    config = make_config(tmp_path, **sections)
    broker = Broker(config)
    async with open_supervisor("rooms") as rooms:
        broker.store = MemoryStore()
        backplane = LocalBackplane(broker.store, broker.hub)
        broker.job_rooms = JobRooms(rooms, backplane.job_log, backplane.presence, config.jobs, broker.metrics)
        yield broker
        rooms.stop_all()


async def connect(nursery, broker, target="/ws?token=demo-token", answer_pings=True,
                  pair=trio.testing.memory_stream_pair):
    """A client through the real front end over an in-memory stream, and its session."""
    server_end, client_end = pair()
    before = set(broker.hub.sessions())
    nursery.start_soon(broker.http_front().handle_tcp, server_end)
    client = RawClient(client_end, answer_pings=answer_pings)
    assert (await client.handshake(target))[0] == 101
    (session,) = set(broker.hub.sessions()) - before
    return session, client


def broker_event(job_id, index):
    """A job_status event of about 1 KB, numbered ``index``."""
    from broker.protocols import JobEvent

    return JobEvent(job_id, "job_status", {"status": "RUNNING", "pad": "x" * 1000, "i": index})

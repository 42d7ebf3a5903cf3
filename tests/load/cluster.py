"""The ``cluster`` scenario: three broker nodes sharing one redis-server (AOF,
``appendfsync always``) and one PostgreSQL store, pinned to the server CPU together; subscribers of one job
spread over the nodes; HTTP publishers on every node. Phases:

* ``max``: closed loop, at most ``window`` events in flight: total deliveries/s;
* ``fixed``: ``rate`` deliveries/s offered: cross-node publish-to-receive latency;
* ``churn``: while events flow, subscribers drop and reconnect to a random node with
  ``lastSeq``: every one must still see every event once, in order.

Every subscriber checks every event's seq (missed, duplicated, reordered).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from array import array
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.support.services import free_port

from .engine import Client, Engine
from .harness import Progress, Server, latency_summary
from .publishers import HttpPublisher
from .scenarios import JOB, FanOut, Watch, publish_at_rate

PUBLISHERS_PER_NODE = 6


class RedisProcess:
    """redis-server on a free port in a temporary directory, as docs/CLUSTER.md says."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="trio-broker-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisProcess:
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [redis, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16) == b"+PONG\r\n":
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


class ClusterFanOut(FanOut):
    """FanOut over several nodes: subscribers and publishers spread round-robin."""

    def __init__(self, engine: Engine, servers: list[Server], latency_stride: int = 1) -> None:
        super().__init__(engine, servers[0], latency_stride)
        self.servers = servers

    def connect(self, index: int, watch: Watch, last_seq: int | None = None) -> Client:
        server = self.servers[index % len(self.servers)]
        join = server.join_message(JOB, last_seq)

        def on_message(client: Client, opcode: int, payload: bytes) -> None:
            if payload.startswith(b'{"type":"connection_established"'):
                client.send_text(join)
            self.on_message(client, opcode, payload)

        return self.engine.connect(server.host, server.port, server.subscribe_path(), on_message, tag=watch)

    def subscribe_all(self, count: int, window: int = 256, deadline: float = 120.0) -> list[Client]:
        clients: list[Client] = []
        progress = Progress("subscribe")
        end = time.perf_counter() + deadline
        while len(clients) < count and time.perf_counter() < end:
            in_flight = sum(1 for c in clients if c.state in ("connecting", "handshake"))
            for _ in range(min(window - in_flight, count - len(clients))):
                clients.append(self.connect(len(clients), Watch()))
            self.engine.run_until(lambda: False, time.perf_counter() + 0.01)
            progress.tick(f"{self.engine.open:,} open")
        self.engine.run_until(lambda: all(c.tag.joined or c.state == "closed" for c in clients), end)
        if sum(1 for c in clients if c.tag.joined) < count:
            raise RuntimeError("not every subscriber joined")
        self.sentinel = clients[-1]
        return clients

    def start_publishers(self, per_node: int = PUBLISHERS_PER_NODE) -> None:
        self.publisher = [HttpPublisher(self.engine, s.host, s.port)
                          for s in self.servers for _ in range(per_node)]


def cluster(subscribers: int, duration: float, rate: float, nodes: int = 3, window: int = 200,
            churn_share: float = 0.2, quiet: bool = False, seed: int = 7,
            publishers_per_node: int = PUBLISHERS_PER_NODE) -> list[dict[str, Any]]:
    """``publishers_per_node`` keep-alive HTTP connections per node, each with up to 8
    requests pipelined (a node queues a connection's pipelined publishes together and
    answers them in order, so a node can batch up to 8 per connection).
    ``window``: at most this many events the sentinel subscriber has not received."""
    from tests.support.services import postgres

    rng = random.Random(seed)
    with RedisProcess() as redis, postgres() as database, ExitStack() as stack:
        servers = [stack.enter_context(Server("trio-broker", broker_overrides=(
            f'[cluster]\nredis_url = "{redis.url}"\nnode_id = "load-{i}"\n'), store_url=database.url))
            for i in range(nodes)]
        engine = Engine()
        run = ClusterFanOut(engine, servers, latency_stride=max(1, subscribers // 200))
        clients = run.subscribe_all(subscribers)
        run.start_publishers(publishers_per_node)
        rows = []

        # maximum rate (closed loop)
        progress = Progress("cluster max", quiet)
        started = time.perf_counter()
        first = run.deliveries
        while time.perf_counter() < started + duration:
            while run.in_flight() < window and min(p.pending for p in run.publisher) < 8:
                run.publish(1)
            engine.run_until(lambda: False, time.perf_counter() + 0.0005)
            progress.tick(f"{run.deliveries - first:,} deliveries")
        complete = run.wait_all(clients, 30)
        elapsed = run.last_delivery - started
        rows.append({"phase": "max", "nodes": nodes, "subscribers": subscribers, "events": run.published,
                     "events_per_s": round(run.published / elapsed) if elapsed > 0 else 0,
                     "publishers": len(run.publisher), "window": window,
                     "deliveries": run.deliveries - first,
                     "deliveries_per_s": round((run.deliveries - first) / elapsed) if elapsed > 0 else 0,
                     **latency_summary(run.latencies), **run.totals(clients), "complete": complete,
                     "publish_failures": sum(p.failures for p in run.publisher)})

        # fixed offered rate: cross-node latency
        run.latencies = array("q")
        run.latency_stride = max(1, int(rate * duration) // 200_000)
        interval = subscribers / rate
        progress = Progress("cluster fixed", quiet)
        first = run.deliveries
        started = publish_at_rate(engine, lambda: run.publish(1), interval, duration,
                                  lambda: progress.tick(f"{run.deliveries - first:,} deliveries"))
        complete = run.wait_all(clients, 30)
        rows.append({"phase": "fixed", "nodes": nodes, "subscribers": subscribers, "offered_per_s": rate,
                     "events": run.published, "deliveries": run.deliveries - first,
                     "deliveries_per_s": round((run.deliveries - first) / (time.perf_counter() - started)),
                     **latency_summary(run.latencies), **run.totals(clients), "complete": complete})

        # churn: drop and reconnect to a random node with lastSeq while events flow
        reconnects = 0
        churners = list(range(int(subscribers * churn_share)))
        running = True

        def drop(index: int) -> None:
            nonlocal reconnects
            if not running or clients[index].state == "closed":
                return
            clients[index].close()
            reconnects += 1
            engine.call_at(time.perf_counter() + rng.uniform(0.0, 0.2), lambda: back(index))

        def back(index: int) -> None:
            if clients[index].state != "closed":
                return  # one connection per subscriber: a late scheduled reconnect finds it back already
            watch = clients[index].tag
            clients[index] = run.connect(rng.randrange(nodes), watch, watch.last)
            if running:
                engine.call_at(time.perf_counter() + rng.uniform(0.2, 1.0), lambda: drop(index))

        for index in churners:
            engine.call_at(time.perf_counter() + rng.uniform(0.0, 1.0), lambda i=index: drop(i))
        progress = Progress("cluster churn", quiet)
        publish_at_rate(engine, lambda: run.publish(1), interval, duration,
                        lambda: progress.tick(f"{reconnects:,} reconnects"))
        running = False
        engine.run_until(lambda: all(c.state != "connecting" for c in clients), time.perf_counter() + 5)
        deadline = time.perf_counter() + 30
        complete = False
        while not complete and time.perf_counter() < deadline:  # as real clients do: retry until back
            for index in churners:
                if clients[index].state == "closed":
                    back(index)
            complete = engine.run_until(lambda: all(c.tag.last >= run.published for c in clients),
                                        min(deadline, time.perf_counter() + 0.5))
        if not complete:
            from collections import Counter

            behind = [c for c in clients if c.tag.last < run.published]
            print("churn: behind", len(behind), Counter(c.state for c in behind),
                  Counter(run.published - c.tag.last for c in behind).most_common(5), flush=True)
        rows.append({"phase": "churn", "nodes": nodes, "subscribers": subscribers, "events": run.published,
                     "reconnects": reconnects, **run.totals(clients), "complete": complete})
        run.stop_publisher()
        engine.close_all()
        return rows

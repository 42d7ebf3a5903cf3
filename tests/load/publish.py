"""The ``publish`` scenario: how fast one publisher's events are committed and delivered.

Most users publish from one backend with one keep-alive HTTP client, each request
waiting for its answer. Two phases, N subscribers in the job's room checking every
event (seq gap-free, in order, nothing missed):

* ``sequential``: one connection, one request at a time (the next is sent when the
  answer arrives);
* ``pipelined``: ``publishers`` connections each keeping ``depth`` requests in flight.

A request is ``POST /api/publish`` answered once the event is committed (trio-broker),
``emit("publish", event, ack)`` answered by its ack (socket.io), or a frame on
``/publish?ack=1`` answered by an ``ack`` frame once broadcast (the websockets and
trio-websocket baselines). An event counts as published once answered; every
subscriber must then get it. Each row also has the server's CPU time (user + kernel,
from /proc) per publish and per delivery, and the kernel's share of it.
"""

from __future__ import annotations

import time
from array import array
from typing import Any

from .engine import Engine
from .harness import CpuWatch, Progress, Server, latency_summary
from .publishers import HttpPublisher, WsPublisher, event_payload
from .scenarios import FanOut

Publisher = HttpPublisher | WsPublisher


def publish(server: Server, subscribers: int, duration: float, publishers: int = 1, depth: int = 16,
            quiet: bool = False) -> list[dict[str, Any]]:
    """Run the sequential phase, then the pipelined one; returns their rows."""
    engine = Engine()
    run = FanOut(engine, server, latency_stride=max(1, subscribers // 200))
    clients = run.subscribe(subscribers) if subscribers else []
    rows = [
        _phase(run, clients, "sequential", 1, 1, duration, quiet),
        _phase(run, clients, "pipelined", publishers, depth, duration, quiet),
    ]
    engine.close_all()
    return rows


def _phase(run: FanOut, clients: list[Any], name: str, connections: int, depth: int, duration: float,
           quiet: bool) -> dict[str, Any]:
    engine, server = run.engine, run.server
    running = True
    sent = 0

    def send(publisher: Publisher) -> None:
        nonlocal sent
        publisher.post(event_payload(server.protocol, sent))
        sent += 1

    def on_answer(publisher: Any, ok: bool) -> None:
        nonlocal last_answer
        last_answer = time.perf_counter()
        if ok:
            run.published += 1  # answered: in the job now, every subscriber must get it
        if running and publisher.pending < depth:
            send(publisher)

    pool: list[Publisher] = [
        HttpPublisher(engine, server.host, server.port, on_answer) if server.is_broker
        else WsPublisher(engine, server, on_answer) for _ in range(connections)
    ]
    run.latencies = array("q")
    first_published, first_deliveries = run.published, run.deliveries
    progress = Progress(f"publish {name}", quiet)
    cpu = CpuWatch(server)
    started = last_answer = time.perf_counter()
    end = started + duration
    while time.perf_counter() < end:
        for publisher in pool:  # answers send the next request; this refills after a lost connection
            while publisher.pending < depth:
                send(publisher)
        engine.run_until(lambda: any(p.pending < depth for p in pool), min(end, time.perf_counter() + 0.1))
        progress.tick(f"{run.published - first_published:,} published, "
                      f"{(run.published - first_published) / (time.perf_counter() - started):,.0f}/s")
    running = False
    engine.run_until(lambda: not any(p.pending for p in pool), time.perf_counter() + 30)
    complete = run.wait_all(clients, 30) and not any(p.pending for p in pool)
    cpu_columns = cpu.columns(publish=run.published - first_published, delivery=run.deliveries - first_deliveries)
    published = run.published - first_published
    deliveries = run.deliveries - first_deliveries
    delivery_elapsed = (run.last_delivery if deliveries else last_answer) - started
    latencies = array("q")
    for publisher in pool:
        latencies.extend(publisher.latencies)
        publisher.close()
    answer = latency_summary(latencies)
    delivery = latency_summary(run.latencies)
    return {
        "phase": name, "subscribers": len(clients), "publishers": connections, "depth": depth,
        "events": published, "publishes_per_s": round(published / (last_answer - started)),
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / delivery_elapsed) if deliveries and delivery_elapsed > 0 else 0,
        "publish_p50_ms": answer["p50_ms"], "publish_p99_ms": answer["p99_ms"],
        "delivery_p50_ms": delivery["p50_ms"], "delivery_p99_ms": delivery["p99_ms"],
        "failed": sum(p.failures for p in pool), "unanswered": sum(p.unanswered for p in pool),
        **run.totals(clients), "complete": complete,
        **cpu_columns,
    }

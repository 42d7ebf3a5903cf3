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
from /proc) per publish and per delivery, and the kernel's share of it: at the maximum
rate, the floor no user-space speed-up removes.

The publishers run in a process of their own (``publisher_process.py``), as a
backend's do, bounded by a window of events the last subscriber has not received yet
(``window_held_pct``: how much of the phase that window held them).
"""

from __future__ import annotations

import multiprocessing
import time
from array import array
from typing import Any

from . import publisher_process
from .engine import Engine
from .harness import CpuWatch, Progress, Server, latency_summary
from .scenarios import FanOut


def publish(server: Server, subscribers: int, duration: float, publishers: int = 1, depth: int = 16,
            window: int = 200, quiet: bool = False) -> list[dict[str, Any]]:
    """Run the sequential phase, then the pipelined one; returns their rows."""
    engine = Engine()
    run = FanOut(engine, server, latency_stride=max(1, subscribers // 200))
    clients = run.subscribe(subscribers) if subscribers else []
    context = multiprocessing.get_context("spawn")  # a fresh process: none of this one's sockets
    run.seen = context.RawValue("q", 0)
    rows = []
    for name, connections, phase_depth in (("sequential", 1, 1), ("pipelined", publishers, depth)):
        plan = publisher_process.Plan(server.target, server.protocol, server.host, server.port, connections,
                                      phase_depth, duration, window if clients else 0)
        rows.append(_phase(context, run, clients, name, plan, quiet))
    engine.close_all()
    return rows


def _phase(context: Any, run: FanOut, clients: list[Any], name: str, plan: publisher_process.Plan,
           quiet: bool) -> dict[str, Any]:
    engine, server = run.engine, run.server
    pipe, child_end = context.Pipe()
    process = context.Process(target=publisher_process.run, args=(plan, run.seen, child_end), daemon=True)
    process.start()
    child_end.close()
    try:
        if not engine.run_until(pipe.poll, time.perf_counter() + 60):  # subscribers keep being served
            raise RuntimeError("the publisher process did not start")
        message = pipe.recv()
        if message != "ready":
            raise RuntimeError(f"publisher: {message}")
        run.latencies = array("q")
        first_deliveries = run.deliveries
        cpu = CpuWatch(server)  # its generator columns are the subscribers' process, not the publishers'
        started = run.last_delivery = time.perf_counter()
        pipe.send("go")
        progress = Progress(f"publish {name}", quiet)
        give_up = started + plan.duration + 90
        while not engine.run_until(pipe.poll, min(give_up, time.perf_counter() + 0.5)):
            if time.perf_counter() >= give_up:
                raise RuntimeError("the publisher process did not finish")
            progress.tick(f"{run.deliveries - first_deliveries:,} deliveries")
        result = pipe.recv()
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
        pipe.close()
    if "error" in result:
        raise RuntimeError(f"publisher: {result['error']}")
    published = result["published"]
    run.published += published
    complete = run.wait_all(clients, 30) and result["pending"] == 0
    deliveries = run.deliveries - first_deliveries
    answering = result["answering_s"]
    delivering = run.last_delivery - started if deliveries else answering
    answer = result["latency"]
    delivery = latency_summary(run.latencies)
    return {
        "phase": name, "subscribers": len(clients), "publishers": plan.connections, "depth": plan.depth,
        "events": published, "publishes_per_s": round(published / answering) if answering > 0 else 0,
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / delivering) if deliveries and delivering > 0 else 0,
        "publish_p50_ms": answer["p50_ms"], "publish_p99_ms": answer["p99_ms"],
        "delivery_p50_ms": delivery["p50_ms"], "delivery_p99_ms": delivery["p99_ms"],
        "failed": result["failed"], "unanswered": result["unanswered"] + result["pending"],
        **run.totals(clients), "complete": complete,
        **cpu.columns(publish=published, delivery=deliveries),
        "window_held_pct": result["window_held_pct"] if plan.window else None,
    }

"""The publish scenario's publishers, in a process of their own, as a backend's are.

A sequential publisher's pace is the time from its request to the server's answer. On
the subscribers' loop that answer waits behind the reading of N sockets (milliseconds
at N=1 000, measured: it halved the one-publisher rate), so the load generator, not the
server, would set the pace. Here the publishers wait for nothing but the server and the
scheduler (this process shares the load CPU with the subscribers').

:func:`run` is the process's entry point: it connects the plan's publishers
(``publishers.py``), says ``"ready"`` on its pipe, waits for ``"go"``, publishes for the
plan's duration (each answer sends the next request at once), waits for the answers
still pending and sends back a result dict (or ``{"error": ...}``).

The window bounds what is in flight end to end: at most ``window`` events answered or
pending and not yet received by the last subscriber (a shared counter the subscribers'
process updates), so no target is driven past what the subscribers read. A
sequential publisher behind a server that answers before fan-out is held by it too;
``window_held_pct`` says how much of the phase it was.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass
from typing import Any

from .engine import Engine
from .harness import LOAD_CPU, latency_summary, pin
from .publishers import HttpPublisher, WsPublisher, event_payload


@dataclass(frozen=True)
class Plan:
    """One phase's publishers; also what :class:`WsPublisher` reads of a server."""

    target: str
    protocol: str
    host: str
    port: int
    connections: int
    depth: int  # requests in flight per connection
    duration: float
    window: int  # events not yet received by the last subscriber; 0: no bound


def run(plan: Plan, seen: Any, pipe: Any) -> None:
    """The process: connect, "ready", wait for "go", publish, send the result."""
    pin(0, LOAD_CPU)
    try:
        pipe.send(_Phase(plan, seen).run(pipe))
    except Exception as exc:  # the scenario reports it instead of waiting for a result
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


class _Phase:
    def __init__(self, plan: Plan, seen: Any) -> None:
        self.plan = plan
        self.seen = seen
        self.seen_at_start = 0
        self.engine = Engine()
        self.running = False
        self.sent = 0
        self.last_answer = 0.0
        self.pool: list[HttpPublisher | WsPublisher] = [
            HttpPublisher(self.engine, plan.host, plan.port, self._on_answer) if plan.protocol == "broker"
            else WsPublisher(self.engine, plan, self._on_answer)  # type: ignore[arg-type]
            for _ in range(plan.connections)
        ]

    def window_open(self) -> bool:
        window = self.plan.window
        return not window or self.sent - (self.seen.value - self.seen_at_start) < window

    def fill(self, publisher: HttpPublisher | WsPublisher) -> None:
        while self.running and publisher.pending < self.plan.depth and self.window_open():
            publisher.post(event_payload(self.plan.protocol, self.sent))
            self.sent += 1

    def _on_answer(self, publisher: Any, ok: bool) -> None:
        self.last_answer = time.perf_counter()
        self.fill(publisher)  # a sequential publisher sends its next request at once

    def run(self, pipe: Any) -> dict[str, Any]:
        engine, plan = self.engine, self.plan
        pipe.send("ready")
        pipe.recv()  # "go"
        self.seen_at_start = self.seen.value
        self.running = True
        started = self.last_answer = time.perf_counter()
        end = started + plan.duration
        held = 0.0
        while (now := time.perf_counter()) < end:
            for publisher in self.pool:  # answers refill; this covers a reconnect and the window
                self.fill(publisher)
            window_closed = not self.window_open()
            engine.run_until(lambda: False, min(end, now + (0.0005 if window_closed else 0.05)))
            if window_closed:
                held += time.perf_counter() - now
        self.running = False
        engine.run_until(lambda: not any(p.pending for p in self.pool), time.perf_counter() + 30)
        pending = sum(p.pending for p in self.pool)
        latencies = array("q")
        for publisher in self.pool:
            latencies.extend(publisher.latencies)
            publisher.close()
        return {
            "published": sum(p.answered for p in self.pool),  # answered: every subscriber must get it
            "failed": sum(p.failures for p in self.pool), "unanswered": sum(p.unanswered for p in self.pool),
            "pending": pending, "answering_s": self.last_answer - started,
            "window_held_pct": round(100 * held / plan.duration, 1),
            "latency": latency_summary(latencies),
        }

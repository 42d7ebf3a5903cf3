"""The load scenarios. Each one is bounded in count and time and returns result rows.

All subscribers check every job event they get: ``seq`` must be the previous one plus
one (else it is counted as missed, duplicated or reordered); latency is the receive
time minus the publish time carried in the event (``t``, ns, same machine clock).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any

from tests.support.services import free_port

from .engine import Client, Engine, SocketIO, client_frame, socketio_emit
from .harness import (
    JWT_SECRET,
    LOAD_CPU,
    ROOT,
    TOKEN,
    CpuWatch,
    Progress,
    Server,
    latency_summary,
    pin,
)
from .publishers import JOB, PAD, HttpPublisher, WsPublisher, event_body, event_payload


class Watch:
    """What one subscriber saw."""

    __slots__ = ("last", "received", "missed", "duplicated", "reordered", "joined", "seqs")

    def __init__(self, keep_seqs: bool = False) -> None:
        self.last = 0
        self.received = 0
        self.missed = 0
        self.duplicated = 0
        self.reordered = 0
        self.joined = False
        self.seqs: list[int] | None = [] if keep_seqs else None


class FanOut:
    """Subscribers, a publisher, and the checks, shared by the fan-out style scenarios."""

    def __init__(self, engine: Engine, server: Server, latency_stride: int = 1) -> None:
        self.engine = engine
        self.server = server
        self.latencies = array("q")
        self.latency_stride = latency_stride
        self._count = 0
        self.published = 0
        self.deliveries = 0
        self.last_delivery = 0.0
        self.publisher: Any = None
        self.sentinel: Client | None = None
        self.seen: Any = None  # a counter shared with a publisher process: the sentinel's receipts

    # subscribers ---------------------------------------------------------

    def on_message(self, client: Client, opcode: int, payload: bytes) -> None:
        watch: Watch = client.tag
        if payload.startswith(b'{"type":"joined"'):
            watch.joined = True
            return
        i = payload.find(b'"seq":')
        if i < 0:
            return
        seq = int(payload[i + 6: payload.index(b",", i)])
        j = payload.find(b'"t":', i)
        sent_ns = int(payload[j + 4: payload.index(b",", j)])
        self.deliveries += 1
        self.last_delivery = time.perf_counter()
        self._count += 1
        if self._count % self.latency_stride == 0:
            self.latencies.append((time.time_ns() - sent_ns) // 1000)
        if seq == watch.last + 1:
            watch.last = seq
        elif seq == watch.last:
            watch.duplicated += 1
        elif seq < watch.last:  # an older seq after a newer one: a duplicate or a late arrival
            watch.reordered += 1
        else:
            watch.missed += seq - watch.last - 1
            watch.last = seq
        watch.received += 1
        if watch.seqs is not None:
            watch.seqs.append(seq)
        if client is self.sentinel and self.seen is not None:
            self.seen.value = watch.received

    def subscribe(self, count: int, window: int = 256, deadline: float = 120.0, last_seq: int | None = None,
                  receive_buffer: int | None = None, small_buffer_first: int = 0, deflate: bool = False) -> list[Client]:
        """Open ``count`` subscribers (at most ``window`` handshakes at once), joined."""
        engine, server = self.engine, self.server
        clients: list[Client] = []
        join = server.join_message(JOB, last_seq)
        progress = Progress("subscribe")

        def on_message(client: Client, opcode: int, payload: bytes) -> None:
            if payload.startswith(b'{"type":"connection_established"') and join is not None:
                client.send_text(join)
            self.on_message(client, opcode, payload)

        if server.protocol == "socketio":  # join the room with an ack: the ack means subscribed
            on_message = SocketIO(  # type: ignore[assignment]
                on_connect=lambda client: socketio_emit(client, "join", json.dumps(JOB).encode(), 1),
                on_event=lambda client, payload: self.on_message(client, 0x1, payload),
                on_ack=lambda client, ack_id, payload: setattr(client.tag, "joined", True),
            )

        end = time.perf_counter() + deadline
        while len(clients) < count and time.perf_counter() < end:
            in_flight = sum(1 for c in clients if c.state in ("connecting", "handshake"))
            for _ in range(min(window - in_flight, count - len(clients))):
                buffer = receive_buffer if len(clients) < small_buffer_first else None
                client = engine.connect(server.host, server.port, server.subscribe_path(), on_message, tag=Watch(),
                                        receive_buffer=buffer, deflate=deflate)
                clients.append(client)
            engine.run_until(lambda: False, time.perf_counter() + 0.01)
            progress.tick(f"{engine.open:,} open")
        if server.protocol == "plain":  # these baselines send no greeting: open means subscribed
            engine.run_until(lambda: all(c.state in ("open", "closed") for c in clients), end)
            for client in clients:
                client.tag.joined = client.state == "open"
        engine.run_until(lambda: all(c.tag.joined or c.state == "closed" for c in clients), end)
        joined = [c for c in clients if c.tag.joined]
        if len(joined) < count:
            raise RuntimeError(f"only {len(joined)} of {count} subscribers joined "
                               f"(closed: {sum(1 for c in clients if c.state == 'closed')})")
        self.sentinel = clients[-1] if clients else None
        return clients

    # publishing ----------------------------------------------------------

    def start_publisher(self) -> None:
        if self.server.is_broker:  # many publishers, as a workflow engine's workers are
            self.publisher = [HttpPublisher(self.engine, self.server.host, self.server.port) for _ in range(16)]
        else:  # the baselines' one publishing socket streams events, unanswered
            self.publisher = WsPublisher(self.engine, self.server, acks=False)

    def publish(self, count: int, pad: str = PAD) -> None:
        """Publish ``count`` events now (one request or ``count`` frames)."""
        if self.server.is_broker:
            events = [event_body(self.published + i, pad) for i in range(count)]
            target = min(self.publisher, key=lambda p: p.pending)
            target.post(json.dumps(events if count > 1 else events[0]).encode())
        else:
            for i in range(count):
                self.publisher.post(event_payload(self.server.protocol, self.published + i, pad))
        self.published += count

    def in_flight(self) -> int:
        return self.published - (self.sentinel.tag.received if self.sentinel else 0)

    def stop_publisher(self) -> None:
        if isinstance(self.publisher, list):
            for publisher in self.publisher:
                self.engine.run_until(lambda p=publisher: p.pending == 0, time.perf_counter() + 10)
                publisher.close()
        elif self.publisher is not None:
            self.publisher.close()

    def wait_all(self, clients: list[Client], timeout: float) -> bool:
        return self.engine.run_until(
            lambda: all(c.tag.received >= self.published or c.state == "closed" for c in clients),
            time.perf_counter() + timeout,
        )

    def totals(self, clients: list[Client]) -> dict[str, int]:
        missed = sum(max(0, self.published - c.tag.last) + c.tag.missed for c in clients)
        return {"missed": missed, "duplicated": sum(c.tag.duplicated for c in clients),
                "reordered": sum(c.tag.reordered for c in clients)}


# -- scenarios ---------------------------------------------------------------


def publish_at_rate(engine: Engine, publish: Callable[[], None], interval: float, duration: float,
                    progress: Callable[[], None]) -> float:
    """An open loop: call ``publish`` every ``interval`` seconds for ``duration``
    seconds, running the engine in between and ``progress`` after each turn. Returns
    when it started (``time.perf_counter()``)."""
    started = next_at = time.perf_counter()
    end = started + duration
    while next_at < end:
        if time.perf_counter() >= next_at:
            publish()
            next_at += interval
        engine.run_until(lambda: False, min(next_at, end))
        progress()
    return started


def fanout(server: Server, subscribers: int, duration: float, rate: float, batch: int = 1, window: int = 200,
           quiet: bool = False) -> list[dict[str, Any]]:
    """Max-rate phase (closed loop: at most ``window`` events in flight), then a
    fixed-rate phase offering ``rate`` deliveries/s. ``batch`` events per publish
    request (trio-broker's batch publish); baselines always get one frame per event."""
    engine = Engine()
    run = FanOut(engine, server, latency_stride=max(1, subscribers // 200))
    clients = run.subscribe(subscribers)
    run.start_publisher()
    rows = []

    # maximum rate
    progress = Progress("fanout max", quiet)
    cpu = CpuWatch(server)
    started = time.perf_counter()
    first_deliveries = run.deliveries
    end = started + duration
    while time.perf_counter() < end:
        # top up every publisher each pass (a pass can take long while thousands of sockets
        # are read): HTTP/1.1 pipelining, up to 8 requests per connection, as the
        # baselines' publisher streams frames
        while run.in_flight() < window and (not server.is_broker or min(p.pending for p in run.publisher) < 8):
            run.publish(batch if server.is_broker else 1)
        engine.run_until(lambda: False, time.perf_counter() + 0.0005)
        progress.tick(f"{run.deliveries - first_deliveries:,} deliveries, "
                      f"{(run.deliveries - first_deliveries) / (time.perf_counter() - started):,.0f}/s")
    complete = run.wait_all(clients, 30)
    cpu_columns = cpu.columns(delivery=run.deliveries - first_deliveries)
    elapsed = run.last_delivery - started
    rows.append({"phase": "max" if batch == 1 or not server.is_broker else f"max-batch{batch}",
                 "subscribers": subscribers, "events": run.published,
                 "deliveries": run.deliveries - first_deliveries,
                 "deliveries_per_s": round((run.deliveries - first_deliveries) / elapsed) if elapsed > 0 else 0,
                 **latency_summary(run.latencies), **run.totals(clients), "complete": complete,
                 **cpu_columns})

    # fixed offered rate
    if rate > 0:
        run.latencies = array("q")
        run.latency_stride = max(1, int(rate * duration) // 200_000)
        events_per_s = rate / subscribers
        interval = 1.0 / events_per_s
        progress = Progress("fanout fixed", quiet)
        first_deliveries = run.deliveries
        started = publish_at_rate(engine, lambda: run.publish(1), interval, duration,
                                  lambda: progress.tick(f"{run.deliveries - first_deliveries:,} deliveries"))
        complete = run.wait_all(clients, 30)
        rows.append({"phase": "fixed", "subscribers": subscribers, "offered_per_s": rate, "events": run.published,
                     "deliveries": run.deliveries - first_deliveries,
                     "deliveries_per_s": round((run.deliveries - first_deliveries) / (time.perf_counter() - started)),
                     **latency_summary(run.latencies), **run.totals(clients), "complete": complete})
    run.stop_publisher()
    engine.close_all()
    return rows


def log_lines(size: int) -> list[dict[str, Any]]:
    """About ``size`` bytes of JSON shaped like a job's log (timestamps, stages, counts,
    ids): what a large job event carries, compressible as real data is, not as padding."""
    rng = random.Random(7)
    stages = ["PLAN", "OUTLINE", "STORYBOARD", "RENDER", "UPLOAD", "REVIEW"]
    lines: list[dict[str, Any]] = []
    while len(json.dumps(lines)) < size:
        n = len(lines)
        lines.append({"ts": f"2026-12-06T15:{n // 60 % 60:02d}:{n % 60:02d}.{rng.randrange(1000):03d}Z",
                      "stage": rng.choice(stages), "level": rng.choice(["INFO", "INFO", "INFO", "WARN", "DEBUG"]),
                      "worker": f"worker-{rng.randrange(64)}", "items": rng.randrange(100_000),
                      "message": f"processed batch {rng.randrange(1 << 20):x} in {rng.uniform(0.5, 900):.1f} ms"})
    return lines


def compression(start_server: Callable[[], Server], subscribers: int, duration: float, event_bytes: int = 16384,
                window: int = 64, quiet: bool = False) -> list[dict[str, Any]]:
    """The same large job event fanned out to ``subscribers`` without and with
    permessage-deflate, each on a fresh server: bytes on the wire and server CPU per
    delivery, and the server's resident memory per idle subscriber (joined, before any
    event)."""
    pad = log_lines(event_bytes)
    rows = []
    for deflate in (False, True):
        with start_server() as server:
            engine = Engine()
            run = FanOut(engine, server, latency_stride=max(1, subscribers // 200))
            rss_before = server.rss()
            clients = run.subscribe(subscribers, deflate=deflate)
            idle = (server.rss() - rss_before) / subscribers
            run.start_publisher()
            progress = Progress(f"compression {'on' if deflate else 'off'}", quiet)
            bytes_before = sum(c.bytes_in for c in clients)
            cpu = CpuWatch(server)
            started = time.perf_counter()
            while time.perf_counter() < started + duration:
                while run.in_flight() < window and min(p.pending for p in run.publisher) < 8:
                    run.publish(1, pad)
                engine.run_until(lambda: False, time.perf_counter() + 0.0005)
                progress.tick(f"{run.deliveries:,} deliveries")
            complete = run.wait_all(clients, 30)
            cpu_columns = cpu.columns(delivery=run.deliveries)
            elapsed = run.last_delivery - started
            wire = sum(c.bytes_in for c in clients) - bytes_before
            rows.append({"phase": f"compression {'on' if deflate else 'off'}", "subscribers": subscribers,
                         "event_bytes": len(json.dumps(pad)), "events": run.published, "deliveries": run.deliveries,
                         "deliveries_per_s": round(run.deliveries / elapsed) if elapsed > 0 else 0,
                         "wire_bytes_per_delivery": round(wire / max(1, run.deliveries)),
                         "idle_bytes_per_connection": round(idle), **latency_summary(run.latencies),
                         **run.totals(clients), "complete": complete, **cpu_columns})
            run.stop_publisher()
            engine.close_all()
    off, on = rows
    if on["deliveries"] and off["deliveries"]:
        rows.append({"phase": "on/off", "wire_bytes_ratio": round(on["wire_bytes_per_delivery"] / off["wire_bytes_per_delivery"], 3),
                     "cpu_ratio": round(on.get("server_cpu_us_per_delivery", 0) / max(1e-9, off.get("server_cpu_us_per_delivery", 0)), 3)})
    return rows


def connect(server: Server, connections: int, window: int = 256, quiet: bool = False,
            jwt: bool = False) -> list[dict[str, Any]]:
    """Connection set-up rate (authenticated) and resident memory per idle connection.
    With ``jwt`` each connection is a different user with its own HS256 token (made
    before the clock starts) instead of the shared static token."""
    paths: list[str] | None = None
    if jwt and server.is_broker:
        from broker.auth.tokens import issue_token

        paths = [f"/ws?token={issue_token(JWT_SECRET, f'user{i}', 3600)}" for i in range(connections)]
    engine = Engine()
    time.sleep(0.5)
    rss_before = server.rss()
    established = 0
    ready = 0  # JWT users whose offline replay is done (offline_complete)

    def on_message(client: Client, opcode: int, payload: bytes) -> None:
        nonlocal established, ready
        if payload.startswith(b'{"type":"connection_established"'):
            established += 1
        elif payload.startswith(b'{"type":"offline_complete"'):
            ready += 1

    progress = Progress("connect", quiet)
    clients: list[Client] = []
    started = time.perf_counter()
    cpu = CpuWatch(server)  # the set-up's server CPU, whatever else the machine runs
    deadline = started + 120
    while established < connections and time.perf_counter() < deadline:
        pending = len(clients) - established - engine.failed
        for _ in range(min(window - pending, connections - len(clients))):
            path = paths[len(clients)] if paths else server.subscribe_path()
            clients.append(engine.connect(server.host, server.port, path, on_message))
        engine.run_until(lambda: False, time.perf_counter() + 0.005)
        if not server.is_broker:
            established = engine.open
        progress.tick(f"{established:,} established")
        if engine.failed > connections // 10 + 10:
            break
    elapsed = time.perf_counter() - started
    cpu_columns = cpu.columns(connection=established)
    if paths and server.is_broker:
        # A chat user is ready once its offline replay is done: that work follows
        # connection_established, so the set-up's CPU above leaves it out.
        engine.run_until(lambda: ready >= established, time.perf_counter() + 30)
        cpu_columns["ready_per_s"] = round(ready / (time.perf_counter() - started))
        cpu_columns["server_cpu_us_per_ready"] = cpu.columns(ready=ready).get("server_cpu_us_per_ready")
    engine.run_until(lambda: False, time.perf_counter() + 2.0)  # settle
    rss_after = server.rss()
    rows = [{"phase": "connect", "auth": "jwt" if paths else "static", "connections": established,
             "failed": engine.failed,
             "connections_per_s": round(established / elapsed),
             "rss_before_mb": round(rss_before / 2**20, 1), "rss_after_mb": round(rss_after / 2**20, 1),
             "bytes_per_connection": round((rss_after - rss_before) / max(1, established)),
             "held": engine.open, **cpu_columns}]
    engine.close_all()
    return rows


def chat(server: Server, pairs: int, messages: int, window: int = 32, quiet: bool = False) -> list[dict[str, Any]]:
    """Pairs of JWT users exchanging private messages: stored and delivered per second."""
    from broker.auth.tokens import issue_token

    if not server.is_broker:
        raise SystemExit("the chat scenario needs --target trio-broker")
    engine = Engine()
    users: dict[str, Client] = {}
    received: dict[str, list[int]] = {}
    acked = 0
    ready = 0
    delivered = 0
    last_delivery = 0.0

    def on_message(client: Client, opcode: int, payload: bytes) -> None:
        nonlocal acked, ready, delivered, last_delivery
        if payload.startswith(b'{"type":"chat_ack"'):
            acked += 1
            client.tag["outstanding"] -= 1
            return
        if payload.startswith(b'{"type":"offline_complete"'):
            ready += 1
            return
        if payload.startswith(b'{"conversationId"'):
            message = json.loads(payload)
            received[client.tag["name"]].append(int(message["content"]))
            delivered += 1
            last_delivery = time.perf_counter()

    for i in range(pairs):
        for name in (f"alice{i}", f"bob{i}"):
            token = issue_token(JWT_SECRET, name, 3600)
            client = engine.connect(server.host, server.port, f"/ws?token={token}", on_message,
                                    tag={"name": name, "peer": name.replace("alice", "x").replace("bob", "alice")
                                         .replace("x", "bob"), "sent": 0, "outstanding": 0})
            users[name] = client
            received[name] = []
    engine.run_until(lambda: ready >= 2 * pairs, time.perf_counter() + 60)
    progress = Progress("chat", quiet)
    started = time.perf_counter()
    deadline = started + 120
    total = 2 * pairs * messages
    while (delivered < total or acked < total) and time.perf_counter() < deadline:
        for client in users.values():
            tag = client.tag
            while tag["sent"] < messages and tag["outstanding"] < window:
                client.send_text(json.dumps({"recvId": tag["peer"], "chatType": 2, "contentType": 1,
                                             "content": str(tag["sent"]), "conversationId": ""}))
                tag["sent"] += 1
                tag["outstanding"] += 1
        engine.run_until(lambda: False, time.perf_counter() + 0.002)
        progress.tick(f"{delivered:,} delivered, {acked:,} acked")
    elapsed = (last_delivery or time.perf_counter()) - started
    in_order = all(seen == list(range(messages)) for seen in received.values())
    rows = [{"phase": "chat", "pairs": pairs, "messages": total, "delivered": delivered, "acked": acked,
             "stored_and_delivered_per_s": round(delivered / elapsed) if elapsed > 0 else 0,
             "exactly_once_in_order": in_order}]
    engine.close_all()
    return rows


def slow(server: Server, subscribers: int, slow_share: float, duration: float, rate: float,
         quiet: bool = False) -> list[dict[str, Any]]:
    """A share of subscribers stop reading: memory stays bounded, they get 4003, the
    others keep their latency."""
    engine = Engine()
    run = FanOut(engine, server, latency_stride=1)
    slow_count = int(subscribers * slow_share)
    clients = run.subscribe(subscribers, receive_buffer=4096, small_buffer_first=slow_count)
    slow_clients = clients[:slow_count]
    fast_clients = clients[len(slow_clients):]
    for client in slow_clients:
        client.pause()
    run.sentinel = fast_clients[-1]
    run.start_publisher()
    rss_start = rss_max = server.rss()
    pad = "y" * 2000
    interval = 1.0 / rate
    progress = Progress("slow", quiet)
    started = next_at = time.perf_counter()
    next_sample = started
    while next_at < started + duration:
        now = time.perf_counter()
        if now >= next_at:
            run.publish(1, pad)
            next_at += interval
        if now >= next_sample:
            rss_max = max(rss_max, server.rss())
            next_sample = now + 0.25
        engine.run_until(lambda: False, min(next_at, next_sample))
        progress.tick(f"rss {rss_max / 2**20:,.0f} MB, {run.deliveries:,} deliveries")
    run.wait_all(fast_clients, 30)
    fast_latency = latency_summary(run.latencies)
    for client in slow_clients:  # read again: the queued frames, then the close
        client.paused = False
        engine._update(client)
    engine.run_until(lambda: all(c.state == "closed" for c in slow_clients), time.perf_counter() + 30)
    codes: dict[str, int] = {}
    for client in slow_clients:
        codes[str(client.close_code)] = codes.get(str(client.close_code), 0) + 1
    run.stop_publisher()
    # What the broker did (a client that never reads again cannot receive the close frame
    # queued behind its backlog: after close_timeout the broker drops it, and it sees 1006).
    evicted = _metric(server, 'broker_evictions_total{reason="slow_consumer"}') if server.is_broker else None
    rows = [{"phase": "slow", "subscribers": subscribers, "slow": len(slow_clients), "events": run.published,
             "evicted_4003": evicted,
             "slow_close_codes": json.dumps(codes, sort_keys=True), "rss_start_mb": round(rss_start / 2**20, 1),
             "rss_max_mb": round(rss_max / 2**20, 1), **{f"fast_{k}": v for k, v in fast_latency.items()},
             **run.totals(fast_clients)}]
    engine.close_all()
    return rows


def churn(server: Server, clients_count: int, duration: float, rate: float, quiet: bool = False,
          seed: int = 7) -> list[dict[str, Any]]:
    """Clients connect, join, leave and reconnect with lastSeq while events flow:
    every client must see every event once, in order, across its reconnects."""
    if not server.is_broker:
        raise SystemExit("the churn scenario needs --target trio-broker (lastSeq)")
    rng = random.Random(seed)
    engine = Engine()
    run = FanOut(engine, server)
    watches = [Watch(keep_seqs=True) for _ in range(clients_count)]
    live: dict[int, Client] = {}
    reconnects = 0

    def open_client(index: int) -> None:
        if index in live and live[index].state != "closed":
            return  # one connection per client: a late scheduled reconnect finds it already back
        watch = watches[index]
        join = server.join_message(JOB, watch.last if watch.seqs else 0)

        def on_message(client: Client, opcode: int, payload: bytes) -> None:
            if payload.startswith(b'{"type":"connection_established"'):
                client.send_text(join)
            run.on_message(client, opcode, payload)

        live[index] = engine.connect(server.host, server.port, server.subscribe_path(), on_message, tag=watch)
        engine.call_at(time.perf_counter() + rng.uniform(0.2, 1.0), lambda: drop(index))

    def drop(index: int) -> None:
        nonlocal reconnects
        if not running:
            return
        client = live.pop(index, None)
        if client is None:
            return
        client.close()
        reconnects += 1
        engine.call_at(time.perf_counter() + rng.uniform(0.0, 0.2), lambda: open_client(index))

    running = True
    run.start_publisher()
    for index in range(clients_count):
        open_client(index)
    progress = Progress("churn", quiet)
    interval = 1.0 / rate
    publish_at_rate(engine, lambda: run.publish(1), interval, duration,
                    lambda: progress.tick(f"{reconnects:,} reconnects, {run.published:,} events"))
    running = False
    for index in range(clients_count):  # everyone back, catching up with lastSeq
        if index not in live or live[index].state == "closed":
            open_client(index)
    engine.run_until(lambda: all(w.last >= run.published for w in watches), time.perf_counter() + 30)
    lost = sum(len(set(range(1, run.published + 1)) - set(w.seqs or ())) for w in watches)
    duplicated = sum(len(w.seqs or ()) - len(set(w.seqs or ())) for w in watches)
    reordered = sum(1 for w in watches if (w.seqs or []) != sorted(w.seqs or []))
    run.stop_publisher()
    engine.close_all()
    return [{"phase": "churn", "clients": clients_count, "events": run.published, "reconnects": reconnects,
             "missed": lost, "duplicated": duplicated, "reordered": reordered}]


def proxy(server_factory: Any, clients_count: int, frames: int, size: int, window: int = 8,
          quiet: bool = False) -> list[dict[str, Any]]:
    """Relay throughput through a proxy route to a local echo upstream."""
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "echo_upstream.py"), "--port",
                                 str(upstream_port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    pin(upstream.pid, LOAD_CPU)
    try:
        _wait_port(upstream_port)
        with server_factory(f"ws://127.0.0.1:{upstream_port}/") as server:
            engine = Engine()
            payload = bytes(range(256)) * (size // 256) + b"\x00" * (size % 256)
            state = {"echoed": 0, "corrupt": 0, "bytes": 0}

            def on_message(client: Client, opcode: int, data: bytes) -> None:
                if opcode == 0x2:
                    state["echoed"] += 1
                    state["bytes"] += len(data)
                    client.tag["outstanding"] -= 1
                    if data != payload:
                        state["corrupt"] += 1

            clients = [engine.connect(server.host, server.port, f"/proxy?token={TOKEN}", on_message,
                                      tag={"sent": 0, "outstanding": 0}) for _ in range(clients_count)]
            engine.run_until(lambda: all(c.state == "open" for c in clients), time.perf_counter() + 20)
            frame = client_frame(0x2, payload)
            progress = Progress("proxy", quiet)
            started = time.perf_counter()
            total = clients_count * frames
            while state["echoed"] < total and time.perf_counter() < started + 120:
                for client in clients:
                    tag = client.tag
                    while tag["sent"] < frames and tag["outstanding"] < window:
                        client.send_raw(frame)
                        tag["sent"] += 1
                        tag["outstanding"] += 1
                engine.run_until(lambda: False, time.perf_counter() + 0.002)
                progress.tick(f"{state['echoed']:,} frames echoed")
            elapsed = time.perf_counter() - started
            engine.close_all()
            relayed = 2 * state["echoed"]  # each echoed frame crossed the relay twice
            return [{"phase": "proxy", "clients": clients_count, "frame_bytes": size, "frames_relayed": relayed,
                     "frames_per_s": round(relayed / elapsed), "mb_per_s": round(2 * state["bytes"] / elapsed / 1e6, 1),
                     "corrupt": state["corrupt"], "complete": state["echoed"] == total}]
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


def _metric(server: Server, name: str) -> int:
    import socket

    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[-1]))
    return 0


def _wait_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("upstream did not start")

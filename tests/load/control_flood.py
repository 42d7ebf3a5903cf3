"""Control-frame flood vs a healthy subscriber (issue 20), run by hand::

    python -m tests.load.control_flood [--flooders 4] [--batch 512] [--flood-seconds 5]
                                       [--broker-root DIR] [--out FILE]

The broker and this measuring process share one CPU, the flooders (niced) the other,
so the flooders' own cost (their sends, the kernel's loopback work) is not counted as
the subscriber's delay: what remains is what the broker does for them.

A broker process with its default limits (``python -m broker serve``, from this tree or
``--broker-root``, e.g. an exported older commit for a before/after comparison). A
subscriber joins a job; a publisher posts an event every ``--interval`` seconds
stamped with its send time; the subscriber's delay per event is receive time minus
that stamp (publish, sequencing, store commit and delivery: everything a flood can slow).

Phases: ``quiet`` (no flood), then ``flood``: ``--flooders`` raw clients in another
process, each connecting without a token (so it sits in the pre-auth read loop),
completing the upgrade, then sending masked empty pong frames ``--batch`` at a time as
fast as its socket takes them, reconnecting whenever the broker closes it. Printed per
phase: p50/p99/max of the delay; for the flood, how the broker cut the flooders off
(connections, frames and bytes each sent before its close, the close codes) and the
broker's CPU time.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from .harness import API_KEY, LOAD_CPU, SERVER_CPU, TOKEN, _run_queue_wait, cpu_times, free_port, percentile, pin

ROOT = Path(__file__).resolve().parents[2]
PONG = b"\x8a\x80" + b"\x00\x00\x00\x00"  # FIN+pong, masked, empty payload, zero mask key


def broker_process(root: Path, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    config = workdir / "config.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n[store]\npath = "{workdir / "b.sqlite3"}"\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WS_AUTH_TOKEN": TOKEN, "BROKER_API_KEY": API_KEY,
           "BROKER_LOG_LEVEL": "WARNING", "PYTHONPATH": str(root)}
    with open(workdir / "server.log", "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([sys.executable, "-m", "broker", "serve", "--config", str(config)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                   preexec_fn=lambda: pin(0, SERVER_CPU))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if probe.recv(100).startswith(b"HTTP/1.1 200"):
                    return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"broker did not start: {(workdir / 'server.log').read_text()[-2000:]}")


# -- flooders (another process: blocking sockets, one thread each) ---------------


def _flood_one(port: int, batch: int, until: float, results: list[dict[str, Any]]) -> None:
    frames = PONG * batch
    while time.monotonic() < until:
        record: dict[str, Any] = {"frames": 0, "bytes": 0, "close": None, "upgrade_ms": None}
        started = time.monotonic()
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            key = base64.b64encode(os.urandom(16))
            sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed during the upgrade")
                head += chunk
            record["upgrade_ms"] = (time.monotonic() - started) * 1000
            if not head.startswith(b"HTTP/1.1 101"):
                record["close"] = head.split(b"\r\n", 1)[0].decode("latin-1")
                results.append(record)
                sock.close()
                time.sleep(0.01)
                continue
            sock.settimeout(0)
            rest = head.split(b"\r\n\r\n", 1)[1]
            while time.monotonic() < until:
                try:
                    sent = sock.send(frames)
                except BlockingIOError:
                    sent = 0
                    time.sleep(0.0005)
                record["bytes"] += sent
                record["frames"] += sent // len(PONG)
                try:
                    data = sock.recv(65536)
                    if not data:
                        break
                    rest += data
                    close = _close_code(rest)
                    if close is not None:
                        record["close"] = close
                        break
                except BlockingIOError:
                    pass
            sock.close()
        except OSError as exc:
            record["close"] = type(exc).__name__
        results.append(record)


def _close_code(data: bytes) -> int | None:
    """The code of a server close frame in ``data`` (unmasked frames), if one came."""
    while len(data) >= 2:
        opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            length, start = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            if len(data) < 10:
                return None
            length, start = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < start + length:
            return None
        if opcode == 0x8:
            return struct.unpack("!H", data[start:start + 2])[0] if length >= 2 else 1005
        data = data[start + length:]
    return None


def flood(port: int, flooders: int, batch: int, seconds: float, pipe: Any) -> None:
    pin(0, LOAD_CPU)
    os.nice(19)  # the flooders' own CPU use must not delay the measuring process beside them
    until = time.monotonic() + seconds
    results: list[dict[str, Any]] = []
    threads = [threading.Thread(target=_flood_one, args=(port, batch, until, results)) for _ in range(flooders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pipe.send(results)


# -- the healthy subscriber and its publisher (this process, trio) ----------------


async def measure(port: int, seconds: float, interval: float, job: str) -> list[float]:
    """Delays (ms) of the events published every ``interval`` for ``seconds``."""
    delays: list[float] = []
    sent = 0
    published = trio.Event()
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?token={TOKEN}") as ws:
        await ws.get_message()  # connection_established
        await ws.send_message(json.dumps({"type": "join_job", "jobId": job}))
        while json.loads(await ws.get_message()).get("type") != "joined":
            pass

        async def publisher() -> None:
            nonlocal sent
            with socket.create_connection(("127.0.0.1", port)) as sock:
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock.dup()))
                deadline = trio.current_time() + seconds
                while trio.current_time() < deadline:
                    body = json.dumps({"jobId": job, "type": "job_status",
                                       "data": {"status": "tick", "sentAt": time.time()}}).encode()
                    await stream.send_all(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode()
                                          + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                          % len(body) + body)
                    sent += 1
                    await trio.sleep(interval)
                published.set()
                await stream.aclose()

        async def subscriber() -> None:
            while True:
                message = json.loads(await ws.get_message())
                if message.get("type") == "job_status":
                    delays.append((time.time() - message["data"]["sentAt"]) * 1000)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            nursery.start_soon(subscriber)
            with trio.move_on_after(seconds + 15):
                await published.wait()
                while len(delays) < sent:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    return delays


def summary(delays: list[float]) -> dict[str, float]:
    ordered = sorted(delays)
    if not ordered:
        return {"events": 0}
    return {"events": len(ordered), "p50_ms": round(percentile(ordered, 0.5), 1),
            "p99_ms": round(percentile(ordered, 0.99), 1), "max_ms": round(ordered[-1], 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m tests.load.control_flood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument("--batch", type=int, default=512, help="pong frames per send")
    parser.add_argument("--flood-seconds", type=float, default=5.0)
    parser.add_argument("--quiet-seconds", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between published events")
    parser.add_argument("--broker-root", default=str(ROOT), help="the tree whose broker package is run")
    parser.add_argument("--out", help="JSON result file")
    args = parser.parse_args(argv)
    port = free_port()
    # the measuring process beside the broker, away from the flooders: what a flood costs
    # on its own CPU (the kernel's work for their sockets included) is not counted as delay
    pin(0, SERVER_CPU)
    with tempfile.TemporaryDirectory(prefix="control-flood-") as workdir:
        process = broker_process(Path(args.broker_root), port, Path(workdir))
        try:
            quiet = trio.run(measure, port, args.quiet_seconds, args.interval, "quiet-job")
            receive, send = multiprocessing.Pipe(duplex=False)
            flooders = multiprocessing.Process(target=flood, args=(port, args.flooders, args.batch,
                                                                   args.flood_seconds, send))
            cpu_before, waited_before = sum(cpu_times(process.pid)), _run_queue_wait(process.pid)
            flooders.start()
            flooded = trio.run(measure, port, args.flood_seconds, args.interval, "flood-job")
            records = receive.recv()
            flooders.join()
            cpu = sum(cpu_times(process.pid)) - cpu_before
            waited = _run_queue_wait(process.pid) - waited_before
        finally:
            process.terminate()
            process.wait(timeout=15)
    upgraded = [r for r in records if r["upgrade_ms"] is not None]
    closes: dict[str, int] = {}
    for record in records:
        closes[str(record["close"])] = closes.get(str(record["close"]), 0) + 1
    frames = sorted(r["frames"] for r in upgraded)
    result = {
        "broker_root": args.broker_root,
        "quiet": summary(quiet),
        "flood": summary(flooded),
        "flooder_connections": len(records),
        "frames_sent_per_connection": {"p50": percentile(frames, 0.5) if frames else 0,
                                       "max": frames[-1] if frames else 0},
        "bytes_sent_total": sum(r["bytes"] for r in records),
        "upgrade_ms_max": round(max((r["upgrade_ms"] for r in upgraded), default=0), 1),
        "closes": closes,
        "broker_cpu_s_during_flood": round(cpu, 2),
        # ready to run but waiting for its CPU (other processes had it): not the broker's doing
        "broker_run_queue_wait_s_during_flood": round(waited, 2),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""Harness plumbing: the server under test, CPU pinning, publishers, statistics, reports.

The server under test runs in its own process, pinned to CPU 0 where the machine has
two or more; this (load) process pins itself to CPU 1. Targets:

* ``trio-broker``: ``python -m broker serve`` with a generated config (limits raised
  for load, a static token, an API key, a JWT secret for chat);
* ``websockets`` / ``trio-websocket``: the baseline broadcast servers in
  ``benchmarks/``, driven by the same clients, so each report is a ratio measured in
  one run on one machine.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

from .engine import Engine

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench-token-0123456789"
API_KEY = "bench-api-key-0123456789"
JWT_SECRET = "bench-jwt-secret-0123456789-0123456789"
SERVER_CPU, LOAD_CPU = 0, 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(pid: int, cpu: int) -> bool:
    """Pin ``pid`` (0: this process) to ``cpu`` if the machine has it."""
    cpus = os.sched_getaffinity(0) | set(range(os.cpu_count() or 1))
    if len(cpus) < 2 or cpu not in cpus:
        return False
    os.sched_setaffinity(pid, {cpu})
    return True


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def raise_fd_limit() -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Server:
    """A server under test in a child process (or an external URL)."""

    def __init__(self, target: str, url: str | None = None, proxy_upstream: str | None = None,
                 broker_overrides: str = "", outbox_bytes: int = 4 << 20) -> None:
        self.target = target
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="trio-broker-load-"))
        self.proxy_upstream = proxy_upstream
        self.broker_overrides = broker_overrides
        self.outbox_bytes = outbox_bytes
        if url:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            self.host, self.port, self.external = parts.hostname or "127.0.0.1", parts.port or 80, True
        else:
            self.host, self.port, self.external = "127.0.0.1", free_port(), False
        self.pinned = False

    @property
    def is_broker(self) -> bool:
        return self.target == "trio-broker"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def __enter__(self) -> Server:
        if self.external:
            return self
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.is_broker:
            config = self.workdir / "config.toml"
            config.write_text(self._broker_config())
            command = [sys.executable, "-m", "broker", "serve", "--config", str(config)]
            env.update(WS_AUTH_TOKEN=TOKEN, BROKER_API_KEY=API_KEY, BROKER_JWT_SECRET=JWT_SECRET,
                       BROKER_LOG_LEVEL="WARNING")
        else:
            script = {"websockets": "websockets_broadcast.py", "trio-websocket": "trio_websocket_broadcast.py"}[self.target]
            command = [sys.executable, str(ROOT / "benchmarks" / script), "--port", str(self.port)]
        self.log = open(self.workdir / "server.log", "wb")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        preexec_fn=raise_fd_limit, cwd=ROOT)
        self.pinned = pin(self.process.pid, SERVER_CPU)
        self._wait_ready()
        return self

    def _broker_config(self) -> str:
        proxy = ""
        if self.proxy_upstream:
            proxy = f"""
[[proxy]]
path = "/proxy"
upstream = "{self.proxy_upstream}"
headers = {{ Authorization = "Bearer bench-upstream-key" }}
max_sessions_per_user = 100000
max_message_bytes = 1048576
"""
        return f"""
[server]
host = "127.0.0.1"
port = {self.port}
[websocket]
outbox_max_bytes = {self.outbox_bytes}
[limits]
max_connections = 1000000
max_connections_per_ip = 1000000
max_connections_per_user = 1000000
max_http_connections = 1000000
max_http_connections_per_ip = 1000000
message_rate = 1000000.0
message_burst = 1000000
[jobs]
history_size = 5000
room_inbox_size = 4096
[store]
path = "{self.workdir / 'bench.sqlite3'}"
{self.broker_overrides}
{proxy}
"""

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.target} exited: {(self.workdir / 'server.log').read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as probe:
                    if not self.is_broker:
                        return
                    probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if probe.recv(100).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.target} did not become ready")

    def rss(self) -> int:
        return rss_bytes(self.process.pid) if self.process else 0

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- protocol differences between targets ------------------------------

    def subscribe_path(self) -> str:
        return f"/ws?token={TOKEN}" if self.is_broker else "/"

    def join_message(self, job: str, last_seq: int | None = None) -> bytes | None:
        if not self.is_broker:
            return None
        message: dict[str, Any] = {"type": "join_job", "jobId": job}
        if last_seq is not None:
            message["lastSeq"] = last_seq
        return json.dumps(message).encode()


class HttpPublisher:
    """Keep-alive POSTs to /api/publish on the engine's loop (no extra threads)."""

    def __init__(self, engine: Engine, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setblocking(False)
        self.engine = engine
        self.host = f"{host}:{port}"
        self.pending = 0
        self.buffer = bytearray()
        self.failures = 0
        import selectors

        engine.selector.register(self.sock, selectors.EVENT_READ, self)

    def post(self, body: bytes) -> None:
        head = (f"POST /api/publish HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {API_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.sock.setblocking(True)
        self.sock.sendall(head + body)
        self.sock.setblocking(False)
        self.pending += 1

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0]) if b"content-length:" in head else 0
            if len(self.buffer) < end + 4 + length:
                return
            if not self.buffer.startswith(b"HTTP/1.1 200"):
                self.failures += 1
            del self.buffer[: end + 4 + length]
            self.pending -= 1

    def close(self) -> None:
        try:
            self.engine.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()


def percentile(sorted_values: Any, fraction: float) -> float:
    if not len(sorted_values):
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * (len(sorted_values) - 1)))))
    return float(sorted_values[index])


def latency_summary(samples_us: array) -> dict[str, float]:
    ordered = sorted(samples_us)
    return {
        "p50_ms": round(percentile(ordered, 0.50) / 1000, 3),
        "p95_ms": round(percentile(ordered, 0.95) / 1000, 3),
        "p99_ms": round(percentile(ordered, 0.99) / 1000, 3),
        "max_ms": round((ordered[-1] if ordered else float("nan")) / 1000, 3),
        "samples": len(ordered),
    }


class Progress:
    """One line a second while a phase runs."""

    def __init__(self, label: str, quiet: bool = False) -> None:
        self.label = label
        self.quiet = quiet
        self.started = time.perf_counter()
        self.last = self.started

    def tick(self, text: str) -> None:
        now = time.perf_counter()
        if now - self.last >= 1.0 and not self.quiet:
            self.last = now
            print(f"  [{self.label}] {now - self.started:5.1f}s  {text}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "server_cpu": SERVER_CPU, "load_cpu": LOAD_CPU}


def report(scenario: str, target: str, params: dict[str, Any], rows: list[dict[str, Any]], out: str | None,
           show: bool = True) -> dict[str, Any]:
    """Print a table and write the JSON file; returns the JSON document."""
    document = {"scenario": scenario, "target": target, "params": params, "results": rows, "machine": machine(),
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = Path(out) if out else ROOT / "tests" / "load" / "results" / f"{scenario}-{target}-{int(time.time())}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    if show:
        columns = sorted({key for row in rows for key in row}, key=lambda k: (k != "phase", k != "target", k))
        widths = {c: max(len(c), *(len(_fmt(row.get(c))) for row in rows)) for c in columns}
        print("  ".join(c.ljust(widths[c]) for c in columns))
        for row in rows:
            print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
        print(f"results: {path}")
    document["path"] = str(path)
    return document


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)

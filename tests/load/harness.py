"""Harness plumbing: the server under test, CPU pinning, publishers, statistics, reports.

The server under test runs in its own process, pinned to CPU 0 where the machine has
two or more; this (load) process pins itself to CPU 1. Targets:

* ``trio-broker``: ``python -m broker serve`` with a generated config (limits raised
  for load, a static token, an API key, a JWT secret for chat);
* ``websockets`` / ``trio-websocket``: the baseline broadcast servers in
  ``benchmarks/``, driven by the same clients, so each report is a ratio measured in
  one run on one machine;
* ``socket.io``: the Node socket.io baseline (``benchmarks/socketio_broadcast.js``,
  installed by ``make bench-setup``), spoken to over the Socket.IO wire.

The server is pinned before it starts, so every thread it makes (Node's included)
stays on its CPU, and :meth:`Server.cpu_times` reads its user and kernel time.
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

from tests.support.services import free_port

from .engine import SOCKETIO_PATH

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench-token-0123456789"
API_KEY = "bench-api-key-0123456789"
JWT_SECRET = "bench-jwt-secret-0123456789-0123456789"
SERVER_CPU, LOAD_CPU = 0, 1
BASELINE_SCRIPTS = {"websockets": "websockets_broadcast.py", "trio-websocket": "trio_websocket_broadcast.py",
                    "socket.io": "socketio_broadcast.js"}


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


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, kernel) CPU seconds used so far by process ``pid``, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


class CpuWatch:
    """CPU used over a phase: the server's (user and kernel, from /proc) and this load
    generator's own, each also as a share of the wall time ("busy": near 1.0 means that
    side was the bottleneck), and the share of the wall time each side's main thread
    was ready to run but waited for its CPU ("starved": other processes had it; a
    noisy machine, the numbers are not the code's)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.wall = time.perf_counter()
        self.server_before = server.cpu_times()
        self.server_waited = _run_queue_wait(server.pid)
        self.own_before = _own_cpu()
        self.own_waited = _run_queue_wait(os.getpid())

    def columns(self, **per: int) -> dict[str, Any]:
        """Server CPU in microseconds per unit of each ``per`` count (``delivery=...``),
        the kernel's share of it, and both sides' busy and starved shares, from the
        start until now."""
        wall = time.perf_counter() - self.wall
        columns: dict[str, Any] = {
            "generator_busy": round((_own_cpu() - self.own_before) / wall, 2),
            "generator_starved": round((_run_queue_wait(os.getpid()) - self.own_waited) / wall, 2),
        }
        after = self.server.cpu_times()
        if self.server_before is None or after is None:
            return columns
        user, kernel = after[0] - self.server_before[0], after[1] - self.server_before[1]
        for name, count in per.items():
            if count:
                columns[f"server_cpu_us_per_{name}"] = round((user + kernel) * 1e6 / count, 2)
        columns["server_sys_share"] = round(kernel / (user + kernel), 3) if user + kernel > 0 else None
        columns["server_busy"] = round((user + kernel) / wall, 2)
        columns["server_starved"] = round((_run_queue_wait(self.server.pid) - self.server_waited) / wall, 2)
        return columns


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _run_queue_wait(pid: int | None) -> float:
    """Seconds the main thread of ``pid`` has spent ready to run, waiting for a CPU."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _start_pinned() -> None:
    """In the child before it runs the server: lift the fd limit, pin to SERVER_CPU."""
    raise_fd_limit()
    pin(0, SERVER_CPU)


def raise_fd_limit() -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Server:
    """A server under test in a child process (or an external URL)."""

    def __init__(self, target: str, url: str | None = None, proxy_upstream: str | None = None,
                 broker_overrides: str = "", outbox_bytes: int = 4 << 20, store_url: str = "") -> None:
        self.target = target
        self.store_url = store_url  # a PostgreSQL store (cluster nodes), else a SQLite file
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
    def protocol(self) -> str:
        """How clients talk to it: "broker", "socketio", or "plain" (open = subscribed)."""
        return {"trio-broker": "broker", "socket.io": "socketio"}.get(self.target, "plain")

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
        elif self.target == "socket.io":
            if not (ROOT / "benchmarks" / "node_modules" / "socket.io").is_dir():
                raise SystemExit("the socket.io baseline is not installed: run `make bench-setup` "
                                 "(npm ci in benchmarks/), or leave it out with --baselines")
            command = ["node", str(ROOT / "benchmarks" / BASELINE_SCRIPTS[self.target]), "--port", str(self.port)]
        else:
            command = [sys.executable, str(ROOT / "benchmarks" / BASELINE_SCRIPTS[self.target]), "--port", str(self.port)]
        self.log = open(self.workdir / "server.log", "wb")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        preexec_fn=_start_pinned, cwd=ROOT)
        self.pinned = os.sched_getaffinity(self.process.pid) == {SERVER_CPU}
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
url = "{self.store_url}"
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

    def cpu_times(self) -> tuple[float, float] | None:
        """(user, kernel) CPU seconds of the server so far; None for an external one."""
        return cpu_times(self.process.pid) if self.process else None

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.log.close()
        if not os.environ.get("LOAD_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- protocol differences between targets ------------------------------

    def subscribe_path(self) -> str:
        return {"broker": f"/ws?token={TOKEN}", "socketio": SOCKETIO_PATH}.get(self.protocol, "/")

    def join_message(self, job: str, last_seq: int | None = None) -> bytes | None:
        if not self.is_broker:
            return None
        message: dict[str, Any] = {"type": "join_job", "jobId": job}
        if last_seq is not None:
            message["lastSeq"] = last_seq
        return json.dumps(message).encode()


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
           show: bool = True, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Print a table (then the summary, if any) and write the JSON file; returns the JSON document."""
    document = {"scenario": scenario, "target": target, "params": params, "results": rows, "machine": machine(),
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if summary:
        document["summary"] = summary
    path = Path(out) if out else ROOT / "tests" / "load" / "results" / f"{scenario}-{target}-{int(time.time())}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    if show:
        columns = sorted({key for row in rows for key in row}, key=lambda k: (k != "phase", k != "target", k))
        widths = {c: max(len(c), *(len(_fmt(row.get(c))) for row in rows)) for c in columns}
        print("  ".join(c.ljust(widths[c]) for c in columns))
        for row in rows:
            print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
        for key, value in (summary or {}).items():
            print(f"{key}: {_fmt(value)}")
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

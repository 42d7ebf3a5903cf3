"""Real services for the tests: throwaway servers on free loopback ports.

A function per service; each starts its server in a temporary directory, waits until it
accepts connections (under a deadline, never a fixed sleep), yields what a client needs
and stops the server by its PID. The packages come from ``scripts/ensure-*`` (run by
``make test``); when a package is missing, the fixture skips with the reason.

``nginx_front(directory, ports)``: nginx with the documented site config
(deploy/nginx/trio-broker.conf) balancing round-robin over brokers on ``ports``, no
stickiness; yields its port (scripts/ensure-nginx installs nginx).

``redis_server(tmp_path)``: an async context manager yielding a :class:`RedisServer`
(``url``, ``port``, ``stop()``, ``kill()``, ``start()``, ``restart()``) with the
persistence the cluster documents: AOF with ``appendfsync always``, no RDB snapshots.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import attrs
import pytest
import trio

from .helpers import ROOT

START_TIMEOUT = 30.0


class ServiceUnavailable(Exception):
    """The service's package is not installed here: the tests that need it skip."""


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(ready, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} did not become ready within {timeout:g}s\n{tail}")
        time.sleep(0.05)  # polling a readiness probe, bounded by the deadline above


# -- PostgreSQL ----------------------------------------------------------------


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise ServiceUnavailable("PostgreSQL is not installed (run scripts/ensure-postgres)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceUnavailable("PostgreSQL's `postgres` system user is missing (run scripts/ensure-postgres)") from None
    return Path(found[-1]).parent


@attrs.define
class Postgres:
    """A running throwaway PostgreSQL: ``url`` for clients, ``restart()``/``stop()`` for faults."""

    bin: Path
    data: Path
    port: int
    run_as: list[str]
    database: str = "broker"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run([*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=START_TIMEOUT)

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200")
        self._pg_ctl("start", "-l", str(self.data / "server.log"), "-o", options)
        _wait_until(self.accepts_connections, START_TIMEOUT, "PostgreSQL", self.data / "server.log")

    def accepts_connections(self) -> bool:
        probe = subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return probe.returncode == 0

    def pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        try:
            return int(pid_file.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def stop(self, mode: str = "fast") -> None:
        """Stop by PID: ``fast`` rolls back open transactions and disconnects clients;
        ``immediate`` is a crash (recovery runs on the next start)."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode])
        _wait_until(lambda: not _alive(pid), START_TIMEOUT, f"PostgreSQL (pid {pid}) stopping")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def create_database(self, name: str) -> None:
        subprocess.run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=START_TIMEOUT)

    def create_schema(self, name: str) -> str:
        """A fresh, empty schema in ``database``; returns a URL whose connections use it
        (``search_path``): as isolated as a database of its own, and much faster to make."""
        subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
                        self.database, "-q", "-v", "ON_ERROR_STOP=1", "-c", f'CREATE SCHEMA "{name}"'],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=START_TIMEOUT)
        return f"{self.url}?options=-c%20search_path%3D{name}"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent, here init, to reap it is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@contextmanager
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL on a free loopback port (trust auth, fsync off: tests only),
    with an empty database ``broker``. Runs as the ``postgres`` user when started as
    root (PostgreSQL refuses root); stopped by PID and its directory removed on exit."""
    bin_dir = _postgres_bin()
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    top = Path(tempfile.mkdtemp(prefix="broker-pg-"))
    data = top / "data"
    try:
        if as_root:
            os.chmod(top, 0o755)
            shutil.chown(top, "postgres", "postgres")
        subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        server = Postgres(bin_dir, data, free_port(), run_as)
        try:
            server.start()
            server.create_database(server.database)
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(top, ignore_errors=True)


# -- Redis ---------------------------------------------------------------------

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
START_DEADLINE = 10.0  # seconds for a service to answer after it was started


def require_redis() -> None:
    """Skip (or fail on CI) when redis-server is not installed."""
    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            raise RuntimeError("redis-server is missing: scripts/ensure-redis should have installed it")
        pytest.skip("redis-server not installed (run scripts/ensure-redis)")


async def _redis_ping(port: int) -> bool:
    """True when the server on ``port`` answers PING with PONG (not while loading its AOF)."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    async with stream:
        try:
            await stream.send_all(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                data = await stream.receive_some(256)
                if not data:
                    return False
                reply += data
        except (trio.BrokenResourceError, OSError):
            return False
    return reply == b"+PONG\r\n"


class RedisServer:
    """One redis-server process; stop/kill and start again on the same port and directory.
    ``extra_args`` go on its command line (``--replicaof host port`` for a replica)."""

    def __init__(self, directory: Path, port: int, extra_args: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.port = port
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start redis-server and wait (under a deadline) until it answers PING."""
        assert REDIS_SERVER is not None and (self.process is None or self.process.poll() is not None)
        with open(self.directory / "redis.log", "ab") as log:  # the server keeps its own descriptor
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                 "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no",
                 *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT,
            )
        with trio.fail_after(START_DEADLINE):
            while not await _redis_ping(self.port):
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {(self.directory / 'redis.log').read_text()[-2000:]}")
                await trio.sleep(0.02)

    def kill(self) -> None:
        """kill -9: no shutdown work (AOF with appendfsync always keeps every acknowledged write)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def restart(self, *, wipe: bool = False) -> None:
        """Stop and start again on the same port and directory; ``wipe`` deletes the data
        first (coordination state lost, as after a Redis without persistence restarts)."""
        self.kill()
        if wipe:
            for path in self.directory.iterdir():
                if path.name != "redis.log":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        await self.start()


@asynccontextmanager
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server on a free loopback port in ``tmp_path/redis``, stopped on exit."""
    require_redis()
    directory = tmp_path / "redis"
    directory.mkdir(exist_ok=True)
    server = RedisServer(directory, free_port())
    await server.start()
    try:
        yield server
    finally:
        server.kill()


async def redis_command(port: int, *args: str) -> bytes:
    """Send one command to the Redis on ``port`` (RESP) and return its raw reply: a
    simple or integer reply's line, a bulk string whole, a flat array's every element
    (a nested array: at least as many lines as it has elements)."""
    request = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        reply = b""
        while not _whole_reply(reply):
            data = await stream.receive_some(65536)
            if not data:
                break
            reply += data
    return reply


def _whole_reply(reply: bytes) -> bool:
    """Whether ``reply`` holds one whole RESP value (see :func:`redis_command`)."""
    if not reply.endswith(b"\r\n"):
        return False
    lines = reply.split(b"\r\n")[:-1]
    kind = lines[0][:1]
    if kind == b"$":
        return int(lines[0][1:]) < 0 or len(lines) >= 2 and len(b"\r\n".join(lines[1:])) >= int(lines[0][1:])
    if kind == b"*":
        count = int(lines[0][1:])
        return count <= 0 or len(lines) >= 1 + 2 * count
    return True


def require_nginx() -> None:
    if NGINX is None:
        if os.environ.get("CI"):
            raise RuntimeError("nginx is missing: scripts/ensure-nginx should have installed it")
        pytest.skip("nginx not installed (run scripts/ensure-nginx)")


def nginx_site(upstream_ports: list[int], listen_port: int) -> str:
    """The documented site config, its upstream block listing every broker."""
    site = (ROOT / "deploy" / "nginx" / "trio-broker.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in upstream_ports)
    site = site.replace("    server 127.0.0.1:8080;\n", servers)
    return site.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")


@asynccontextmanager
async def nginx_front(directory: Path, upstream_ports: list[int], port: int | None = None) -> AsyncIterator[int]:
    """nginx in front of ``upstream_ports`` (round-robin); yields the port it listens on."""
    require_nginx()
    assert NGINX is not None
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    temp = directory / "temp"
    temp.mkdir(exist_ok=True)
    (directory / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{nginx_site(upstream_ports, port)}
}}
""")
    process = subprocess.Popen([NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf"),
                                "-e", str(directory / "error.log")], stderr=subprocess.PIPE, text=True)
    try:
        with trio.fail_after(START_DEADLINE):
            while True:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                break
        yield port
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def nginx_site_with_timeout(broker_port: int, listen_port: int, read_timeout: str | None) -> str:
    """The documented site config in front of one broker, with ``read_timeout`` as
    nginx's proxy_read_timeout (None: nginx's default, 60 s)."""
    site = (ROOT / "deploy" / "nginx" / "trio-broker.conf").read_text()
    site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{broker_port};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    if read_timeout is None:  # nginx's default (60 s)
        site = re.sub(r"\n\s*proxy_read_timeout [^;]+;[^\n]*", "", site)
    else:
        site = re.sub(r"proxy_read_timeout [^;]+;", f"proxy_read_timeout {read_timeout};", site)
    return site


class Nginx:
    """nginx with the documented site config in front of one broker on ``broker_port``
    (``async with``: started and answering on ``.port``, then stopped with SIGQUIT)."""

    def __init__(self, tmp_path: Path, broker_port: int, read_timeout: str | None = None) -> None:
        self.port = free_port()
        self.prefix = tmp_path / "nginx"
        self.prefix.mkdir()
        temp = self.prefix / "temp"
        temp.mkdir()
        (self.prefix / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {self.prefix}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{nginx_site_with_timeout(broker_port, self.port, read_timeout)}
}}
""")
        self.process: subprocess.Popen | None = None

    async def __aenter__(self) -> Nginx:
        self.process = subprocess.Popen([NGINX, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                                         "-e", str(self.prefix / "error.log")], stderr=subprocess.PIPE, text=True)
        with trio.fail_after(10):
            while True:
                assert self.process.poll() is None, self.process.stderr.read()
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                    await stream.aclose()
                    return self
                except OSError:
                    await trio.sleep(0.05)

    async def __aexit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

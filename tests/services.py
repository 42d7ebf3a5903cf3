"""Real services for the tests: throwaway servers on free loopback ports.

A function per service; each starts its server in a temporary directory, waits until it
accepts connections (under a deadline, never a fixed sleep), yields what a client needs
and stops the server by its PID. The packages come from ``scripts/ensure-*`` (run by
``make test``); when a package is missing, the fixture skips with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

START_TIMEOUT = 30.0


class ServiceUnavailable(Exception):
    """The service's package is not installed here: the tests that need it skip."""


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

"""Redis run the way production runs it: a master, replicas and Sentinel, as real processes.

``redis_ha(tmp_path)`` starts a master and ``replicas`` replicas (each with the AOF the
cluster documents: ``appendfsync always``) and one Sentinel watching them with quorum 1,
``down-after-milliseconds`` 1000 and ``failover-timeout`` 5000, so a master killed with
kill -9 is replaced by a replica within a few seconds. It waits (under a deadline,
never a fixed sleep) until every replica is in sync and Sentinel knows them all, yields
a :class:`RedisHA` and kills every process on exit.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from .services import REDIS_SERVER, START_DEADLINE, RedisServer, free_port, redis_command, require_redis

MASTER_NAME = "broker-master"
FAILOVER_DEADLINE = 30.0  # seconds for Sentinel to promote a replica after the master died


async def redis_info_field(port: int, section: str, field: str) -> str | None:
    """One field of ``INFO section`` from the Redis on ``port`` (None if it does not answer)."""
    try:
        reply = await redis_command(port, "INFO", section)
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return None


class Sentinel:
    """One ``redis-server --sentinel`` process watching ``MASTER_NAME``."""

    def __init__(self, directory: Path, port: int, master_port: int) -> None:
        self.directory = directory
        self.port = port
        self.master_port = master_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        assert REDIS_SERVER is not None
        config = self.directory / "sentinel.conf"  # Sentinel rewrites its file: one of its own
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
        )
        with open(self.directory / "sentinel.log", "ab") as log:
            self.process = subprocess.Popen([REDIS_SERVER, str(config), "--sentinel"], stdout=log,
                                            stderr=subprocess.STDOUT)
        with trio.fail_after(START_DEADLINE):
            while await self.master_port_now() is None:
                if self.process.poll() is not None:
                    raise RuntimeError(f"sentinel exited: {(self.directory / 'sentinel.log').read_text()[-2000:]}")
                await trio.sleep(0.05)

    async def master_port_now(self) -> int | None:
        """The master's port as this Sentinel sees it now (None if it does not answer)."""
        try:
            reply = await redis_command(self.port, "SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        except OSError:
            return None
        lines = reply.split(b"\r\n")
        return int(lines[4]) if reply.startswith(b"*2") and len(lines) > 4 else None

    async def known_replicas(self) -> int:
        """How many replicas of the master this Sentinel has discovered (the array's length)."""
        reply = await redis_command(self.port, "SENTINEL", "replicas", MASTER_NAME)
        return int(reply.split(b"\r\n")[0][1:] or b"0")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class RedisHA:
    """The master, its replicas and the Sentinel; ``master`` follows failovers."""

    def __init__(self, servers: list[RedisServer], sentinel: Sentinel) -> None:
        self.servers = servers  # servers[0] is the first master
        self.sentinel = sentinel
        self.master_name = MASTER_NAME

    @property
    def sentinels(self) -> list[str]:
        """``host:port`` of every Sentinel, as ``[cluster] redis_sentinels`` takes them."""
        return [self.sentinel.address]

    async def master(self) -> RedisServer:
        """The server Sentinel names as master now."""
        port = await self.sentinel.master_port_now()
        return next(server for server in self.servers if server.port == port)

    async def wait_for_new_master(self, old: RedisServer) -> RedisServer:
        """Wait (under FAILOVER_DEADLINE) until Sentinel has promoted a server other
        than ``old`` and that server answers as a master."""
        with trio.fail_after(FAILOVER_DEADLINE):
            while True:
                port = await self.sentinel.master_port_now()
                if port is not None and port != old.port and await redis_info_field(port, "replication",
                                                                                    "role") == "master":
                    return next(server for server in self.servers if server.port == port)
                await trio.sleep(0.05)

    async def wait_replicas_in_sync(self, master: RedisServer, count: int) -> None:
        """Wait until ``master`` has ``count`` replicas online: their full sync done
        (a connected replica may still wait for it: ``state=wait_bgsave``, holding nothing)."""
        with trio.fail_after(START_DEADLINE * 2):
            while True:
                online = 0
                for i in range(count):
                    replica = await redis_info_field(master.port, "replication", f"slave{i}")
                    online += replica is not None and "state=online" in replica
                if online >= count:
                    return
                await trio.sleep(0.05)


    async def wait_replicas_caught_up(self, master: RedisServer) -> None:
        """Wait until every replica of ``master`` has acknowledged all it wrote so far
        (replication is asynchronous: a write made just before a kill -9 may be lost)."""
        with trio.fail_after(START_DEADLINE):
            while True:
                offset = await redis_info_field(master.port, "replication", "master_repl_offset")
                replicas = [await redis_info_field(master.port, "replication", f"slave{i}")
                            for i in range(len(self.servers) - 1)]
                if offset is not None and all(r is not None and f"offset={offset}," in r for r in replicas):
                    return
                await trio.sleep(0.02)


@asynccontextmanager
async def redis_ha(tmp_path: Path, replicas: int = 1) -> AsyncIterator[RedisHA]:
    """A master + ``replicas`` replicas (AOF, ``appendfsync always``) + one Sentinel, all
    killed on exit; yields once the replicas are in sync and Sentinel knows them."""
    require_redis()
    base = tmp_path / "redis-ha"
    servers: list[RedisServer] = []
    sentinel: Sentinel | None = None
    try:
        master_dir = base / "master"
        master_dir.mkdir(parents=True)
        master = RedisServer(master_dir, free_port())
        servers.append(master)
        await master.start()
        # a diskless full sync waits 5 s by default for more replicas to join it: start at once
        await redis_command(master.port, "CONFIG", "SET", "repl-diskless-sync-delay", "0")
        for i in range(replicas):
            directory = base / f"replica{i}"
            directory.mkdir()
            replica = RedisServer(directory, free_port(), ("--replicaof", "127.0.0.1", str(master.port)))
            servers.append(replica)
            await replica.start()
        ha_dir = base / "sentinel"
        ha_dir.mkdir()
        sentinel = Sentinel(ha_dir, free_port(), master.port)
        ha = RedisHA(servers, sentinel)
        await ha.wait_replicas_in_sync(master, replicas)
        await sentinel.start()
        with trio.fail_after(START_DEADLINE * 2):
            while await sentinel.known_replicas() < replicas:
                await trio.sleep(0.05)
        yield ha
    finally:
        if sentinel is not None:
            sentinel.kill()
        for server in servers:
            server.kill()


@asynccontextmanager
async def redis_pair(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, RedisServer]]:
    """A master and its replica (AOF, ``appendfsync always``) without Sentinel, so a test
    can promote and demote them by hand (``REPLICAOF``); killed on exit. Yields once the
    replica is in sync."""
    require_redis()
    servers: list[RedisServer] = []
    try:
        for name in ("master", "replica"):
            directory = tmp_path / "redis-pair" / name
            directory.mkdir(parents=True)
            follow = ("--replicaof", "127.0.0.1", str(servers[0].port)) if servers else ()
            servers.append(RedisServer(directory, free_port(), follow))
            await servers[-1].start()
            # a full sync (at start, or after REPLICAOF) begins at once, not after 5 s
            await redis_command(servers[-1].port, "CONFIG", "SET", "repl-diskless-sync-delay", "0")
        master, replica = servers
        await wait_replica_online(master)
        yield master, replica
    finally:
        for server in servers:
            server.kill()


async def wait_replica_online(master: RedisServer) -> None:
    """Until ``master``'s first replica is past its initial sync (``state=online``)."""
    with trio.fail_after(START_DEADLINE * 2):
        while "state=online" not in (await redis_info_field(master.port, "replication", "slave0") or ""):
            await trio.sleep(0.05)


async def wait_replica_caught_up(master: RedisServer, replica: RedisServer) -> None:
    """Until ``replica`` has applied everything ``master`` has written so far."""
    with trio.fail_after(START_DEADLINE):
        while True:
            offset = await redis_info_field(master.port, "replication", "master_repl_offset")
            applied = await redis_info_field(replica.port, "replication", "slave_repl_offset")
            if offset is not None and offset == applied:
                return
            await trio.sleep(0.02)

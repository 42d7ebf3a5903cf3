"""Helpers for tests with several broker nodes sharing one real redis-server: nodes in
this trio program (:func:`nodes`) or real ``broker serve`` processes (:func:`start_node`,
:func:`node_processes`).

Where they take ``redis``, it is a ``redis_url`` or, for Redis through Sentinel, the
``[cluster]`` keys :func:`sentinel_settings` gives (a :class:`~.redis_ha.RedisHA`'s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
import trio_websocket

from broker import serve
from broker.app import BrokerHandle

from .helpers import API_KEY, JWT_SECRET, ROOT, make_config, recv_json
from .services import free_port

if TYPE_CHECKING:
    from .redis_ha import RedisHA

RedisAt = str | Mapping[str, Any]  # a redis_url, or the [cluster] keys of Redis through Sentinel


def sentinel_settings(ha: RedisHA) -> dict[str, Any]:
    """The ``[cluster]`` keys that point a node at ``ha``'s Sentinel-managed master."""
    return {"redis_sentinels": tuple(ha.sentinels), "redis_master_name": ha.master_name}


def redis_environment(redis: RedisAt) -> dict[str, str]:
    """The environment variables that give a ``broker serve`` process ``redis``."""
    if isinstance(redis, str):
        return {"BROKER_CLUSTER_REDIS_URL": redis}
    return {"BROKER_CLUSTER_REDIS_SENTINELS": ",".join(redis["redis_sentinels"]),
            "BROKER_CLUSTER_REDIS_MASTER_NAME": redis["redis_master_name"]}


def node_config(tmp_path: Path, redis: RedisAt, store_url: str, name: str, **sections: Any):
    """A node's config: its own port, the shared Redis and the shared PostgreSQL store."""
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    at = {"redis_url": redis} if isinstance(redis, str) else dict(redis)
    cluster = {**at, "node_id": name, **sections.pop("cluster", {})}
    store = {"url": store_url, **sections.pop("store", {})}
    return make_config(directory, cluster=cluster, store=store, **sections)


@asynccontextmanager
async def nodes(tmp_path: Path, redis: RedisAt, store_url: str, count: int, **sections: Any):
    """``count`` brokers in this trio program, each on its own port, one Redis, one
    PostgreSQL store; stopped on exit."""
    async with trio.open_nursery() as nursery:
        handles: list[BrokerHandle] = []
        for index in range(count):
            handles.append(await nursery.start(serve, node_config(tmp_path, redis, store_url, f"n{index}", **sections)))
        for handle in handles:
            await wait_feed_up(handle)
        yield handles
        nursery.cancel_scope.cancel()


async def wait_feed_up(handle: BrokerHandle, timeout: float = 10) -> None:
    """Until the node's backplane reports no problem (subscribed, heartbeat written)."""
    with trio.fail_after(timeout):
        while handle.broker.backplane.problem() is not None:
            await trio.sleep(0.01)


async def wait_healthy(port: int, process) -> None:
    """Until the node on ``port`` answers /health with 200 (listening, and its backplane
    reaches Redis), under a deadline; fails at once if the process exited. The deadline
    is generous: a node importing its packages on a machine loaded with other test
    processes took over 30 s once (a deadline, not a speed check)."""
    from broker.tools.httpclient import http_request

    with trio.fail_after(60):
        while True:
            assert process.poll() is None, f"the node exited with {process.returncode}"
            try:
                if (await http_request("GET", f"http://127.0.0.1:{port}/health", timeout=1)).status == 200:
                    return
            except (OSError, trio.TooSlowError):  # not listening yet, or too busy starting to answer within 1 s
                pass
            await trio.sleep(0.05)  # polling the readiness probe, bounded by the deadline above


def start_node(tmp_path: Path, redis: RedisAt, store_url: str, name: str,
               extra_env: dict[str, str] | None = None, config: Path | None = None) -> tuple[subprocess.Popen, int]:
    """``broker serve`` as a cluster node on a free port (``config``, or the repository's config.toml)."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "WS_AUTH_TOKEN": "demo-token",
           "BROKER_API_KEY": API_KEY, "BROKER_DB_PATH": str(tmp_path / f"{name}.sqlite3"),
           "BROKER_JWT_SECRET": JWT_SECRET, **redis_environment(redis),
           "BROKER_CLUSTER_NODE_ID": name, "BROKER_STORE_URL": store_url, **(extra_env or {})}
    with open(tmp_path / f"{name}.log", "ab") as log:  # never a pipe nobody reads: it would fill and stall the node
        process = subprocess.Popen([sys.executable, "-m", "broker", "serve", "--config",
                                    str(config or ROOT / "config.toml")],
                                   env=env, stdout=subprocess.DEVNULL, stderr=log)
    return process, port


@asynccontextmanager
async def node_process_handles(tmp_path: Path, redis: RedisAt, store_url: str, names: Sequence[str],
                               extra_env: dict[str, str] | None = None,
                               config: Path | None = None) -> AsyncIterator[list[tuple[subprocess.Popen, int]]]:
    """One ``broker serve`` process per name (:func:`start_node`), started together;
    yields (process, port) pairs once every one answers /health with 200, so a test can
    kill one. Killed (-9) and reaped on exit."""
    processes = [start_node(tmp_path, redis, store_url, name, extra_env, config) for name in names]
    try:
        for process, port in processes:
            await wait_healthy(port, process)
        yield processes
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@asynccontextmanager
async def node_processes(tmp_path: Path, redis: RedisAt, store_url: str, names: list[str],
                         extra_env: dict[str, str] | None = None) -> AsyncIterator[list[int]]:
    """:func:`node_process_handles`, yielding the ports only."""
    async with node_process_handles(tmp_path, redis, store_url, names, extra_env) as processes:
        yield [port for _, port in processes]


# webhook timings for node processes: a killed node swept within 2 s, an event leased by
# a node that died (its 2xx maybe not stored) sent again by another 3 s later
FAST_WEBHOOK_ENV = {"BROKER_CLUSTER_NODE_TTL": "2", "BROKER_WEBHOOKS_POLL_INTERVAL": "0.1",
                    "BROKER_WEBHOOKS_TIMEOUT": "1", "BROKER_WEBHOOKS_LEASE": "3"}


def config_with_webhook(tmp_path: Path, url: str, events: Sequence[str], secret: str) -> Path:
    """The repository's config.toml plus one ``[[webhook]]`` ("app": ``events`` to ``url``)."""
    config = tmp_path / "config.toml"
    config.write_text((ROOT / "config.toml").read_text() + f"""
[[webhook]]
name = "app"
url = "{url}"
events = {json.dumps(list(events))}
secrets = ["{secret}"]
""")
    return config


class Subscriber:
    """A client of one job that records every event it gets and resumes with
    lastSeq/lastEpoch when its connection is closed."""

    def __init__(self, url: str, job_id: str) -> None:
        self.url = url
        self.job_id = job_id
        self.events: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.epoch: str | None = None
        self.joined = trio.Event()
        self.connections = 0
        self.close_codes: list[int | None] = []

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events]

    async def run(self, url: str | None = None) -> None:
        """Follow the job until cancelled; on a close, reconnect (to ``url`` if changed)."""
        while True:
            try:
                await self._follow(url or self.url)
            except trio_websocket.ConnectionClosed as exc:
                self.close_codes.append(exc.reason.code)
                await trio.sleep(0.05)
            except (trio_websocket.HandshakeError, OSError):
                await trio.sleep(0.05)

    async def _follow(self, url: str) -> None:
        async with trio_websocket.open_websocket_url(url) as ws:
            await recv_json(ws)  # connection_established
            self.connections += 1
            join: dict[str, Any] = {"type": "join_job", "jobId": self.job_id}
            if self.events:
                join["lastSeq"] = self.events[-1]["seq"]
                join["lastEpoch"] = self.epoch
            await ws.send_message(json.dumps(join))
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "joined":
                    self.epoch = message.get("epoch")
                    self.joined.set()
                elif message["type"] == "error":
                    self.errors.append(message)
                elif "seq" in message:
                    if self.events and message["seq"] <= self.events[-1]["seq"] and message.get("epoch") == self.epoch:
                        raise AssertionError(f"duplicate or reordered: {message['seq']} after {self.seqs[-3:]}")
                    self.epoch = message.get("epoch", self.epoch)
                    self.events.append(message)

    async def wait_for(self, count: int, timeout: float = 20) -> None:
        with trio.fail_after(timeout):
            while len(self.events) < count:
                await trio.sleep(0.01)


class NoFeed:
    """The backplane's callbacks for a test that drives a backplane without rooms:
    every callback does nothing."""

    def deliver_remote(self, job_id, epoch, events): pass
    def resync_all(self): pass
    def presence_changed(self, job_ids): pass
    def presence_changed_all(self): pass
    def deliver_remote_chat(self, data): pass
    def remote_group_changed(self, group_id): pass
    def evict_replaced(self, session_ids): pass

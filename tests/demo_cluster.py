"""``make cluster``: a demo cluster on this machine. Redis (AOF, appendfsync always),
PostgreSQL (the shared store), three ``broker serve`` nodes and nginx in front (the
documented site config, round-robin, no stickiness). Prints the URL; Ctrl-C stops
everything.

    python -m tests.demo_cluster [--port 8080] [--nodes 3]

Everything lives in temporary directories removed at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from tests.support.cluster import wait_healthy
from tests.support.helpers import ROOT
from tests.support.services import RedisServer, free_port, nginx_front, postgres, require_nginx, require_redis

DEV_ENV = {"WS_AUTH_TOKEN": "demo-token", "BROKER_API_KEY": "dev-api-key",
           "BROKER_JWT_SECRET": "dev-only-jwt-secret-change-me-0123456789"}


async def run(port: int, count: int, directory: Path, store_url: str) -> None:
    redis = RedisServer(directory / "redis", free_port())
    redis.directory.mkdir()
    await redis.start()
    nodes: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        for index in range(count):
            node_port = free_port()
            env = {**os.environ, **{k: os.environ.get(k, v) for k, v in DEV_ENV.items()},
                   "PORT": str(node_port), "HOST": "127.0.0.1", "BROKER_CLUSTER_REDIS_URL": redis.url,
                   "BROKER_CLUSTER_NODE_ID": f"node-{index}", "BROKER_STORE_URL": store_url,
                   "BROKER_SERVER_TRUSTED_PROXIES": "127.0.0.1"}
            with open(directory / f"node-{index}.log", "wb") as log:  # the node keeps its own descriptor
                nodes.append((subprocess.Popen([sys.executable, "-m", "broker", "serve", "--config",
                                                str(ROOT / "config.toml")],
                                               env=env, stdout=log, stderr=subprocess.STDOUT), node_port))
        for process, node_port in nodes:
            await wait_healthy(node_port, process)
        async with nginx_front(directory / "nginx", [p for _, p in nodes], port) as front:
            print(f"cluster of {count} nodes behind nginx: ws://127.0.0.1:{front}/ws?token=demo-token", flush=True)
            print(f"  publish: curl -X POST 127.0.0.1:{front}/api/publish -H 'Authorization: Bearer "
                  f"{DEV_ENV['BROKER_API_KEY']}' -d '{{\"jobId\":\"job-1\",\"type\":\"job_status\","
                  f"\"data\":{{\"status\":\"RUNNING\"}}}}'", flush=True)
            print(f"  redis: {redis.url}   postgresql: {store_url}", flush=True)
            print(f"  logs: {directory}   Ctrl-C stops it all", flush=True)
            await trio.sleep_forever()
    finally:
        for process, _ in nodes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in nodes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.demo_cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    require_redis()
    require_nginx()
    with tempfile.TemporaryDirectory(prefix="broker-cluster-") as directory, postgres() as database:
        try:
            trio.run(run, args.port, args.nodes, Path(directory), database.url)
        except KeyboardInterrupt:
            print("stopped", flush=True)


if __name__ == "__main__":
    main()

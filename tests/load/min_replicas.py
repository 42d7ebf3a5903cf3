"""What ``[cluster] min_replicas`` costs a publish: ``python -m tests.load.min_replicas``.

One ``broker serve`` node on a Redis master with one replica (both AOF, ``appendfsync
always``, on this machine) and a throwaway PostgreSQL, run once per setting
(``--settings``, default 0 and 1). Two phases each, HTTP publishes to one job over
keep-alive connections, each answered before the next is sent on its connection:

* ``sequential``: one connection: the latency of one publish (p50, p99);
* ``concurrent``: ``--publishers`` connections at once: events/s, and the latency.

With min_replicas = 0 a publish is answered once the master has it on disk; with 1, once
the replica has it too (a WAIT after the append script; scripts sent while a WAIT is on
its way share the next one). Bounded in time: each phase runs ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.support.cluster import start_node, wait_healthy
from tests.support.helpers import API_KEY
from tests.support.redis_ha import redis_ha
from tests.support.services import postgres


async def _phase(port: int, connections: int, duration: float, job: str) -> dict[str, Any]:
    """``connections`` closed-loop publishers for ``duration`` seconds: events/s and latency."""
    latencies: list[float] = []
    failures = 0
    body = {"jobId": job, "type": "job_status", "data": {"status": "RUNNING"}}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    end = time.perf_counter() + duration

    async def publisher(client: httpx.AsyncClient) -> None:
        nonlocal failures
        while time.perf_counter() < end:
            started = time.perf_counter()
            response = await client.post("/api/publish", json=body, headers=headers)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(publisher, client)
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {"publishers": connections, "events": len(latencies), "events_per_s": round(len(latencies) / elapsed),
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
            "failures": failures}


async def run(settings: list[int], publishers: int, duration: float) -> list[dict[str, Any]]:
    rows = []
    with postgres() as database, tempfile.TemporaryDirectory(prefix="broker-min-replicas-") as directory:
        async with redis_ha(Path(directory)) as ha:
            for min_replicas in settings:
                env = {"BROKER_CLUSTER_MIN_REPLICAS": str(min_replicas), "BROKER_LOG_LEVEL": "WARNING"}
                process, port = start_node(Path(directory), ha.servers[0].url, database.url, f"n{min_replicas}", env)
                try:
                    await wait_healthy(port, process)
                    for phase, connections in (("sequential", 1), ("concurrent", publishers)):
                        row = await _phase(port, connections, duration, f"job-{min_replicas}-{phase}")
                        rows.append({"min_replicas": min_replicas, "phase": phase, **row})
                finally:
                    process.kill()
                    process.wait()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load.min_replicas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", type=int, nargs="+", default=[0, 1], help="min_replicas values to run")
    parser.add_argument("--publishers", type=int, default=16, help="connections in the concurrent phase")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = trio.run(run, args.settings, args.publishers, args.duration)
    columns = ("min_replicas", "phase", "publishers", "events", "events_per_s", "p50_ms", "p99_ms", "failures")
    print("results:")
    print("  ".join(f"{c:>12}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>12}" for c in columns))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Chat ack latency with and without a webhook receiver that sleeps 30 s per request.

``python -m tests.load.webhook_ack_latency [--senders 20] [--messages 100] [--rounds 3] [--runs none,slow,fast]
[--backlog N]``

Three runs of the same load, each on a fresh broker (SQLite in a temporary directory)
in this process: no webhooks; a receiver that answers at once; a receiver that sleeps
30 s before answering (``[webhooks] timeout`` 60 s, so every request hangs for the
whole 30 s). Each sender sends one private message, waits for its ``chat_ack``, and
sends the next; the latency is send to ack. ``--backlog N`` first records N events
(``user.online``, ``--backlog-per-key`` per user, default 10, as after a receiver
was down for a while), so the
webhook runs start with that many pending rows. Prints p50/p99/max per run, the events
delivered by then, and the store thread's transactions and read calls; writes nothing.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio_websocket

from broker import serve
from broker.auth.tokens import issue_token
from broker.config.loader import WebhookEndpoint
from tests.support.helpers import JWT_SECRET, make_config
from tests.support.webhook_receiver import webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"latency-secret-0123456789ab").decode()


async def record_backlog(handle, events: int, per_key: int) -> None:
    """``events`` pending rows for the endpoint, ``per_key`` per user, as if the receiver had been down."""
    outbox = handle.broker.outbox
    for start in range(0, events, 1000):
        statements = []
        for i in range(start, min(events, start + 1000)):
            statements += outbox.statements("user.online", f"user:backlog{i // per_key}", b'{"userId":"backlog"}')
        await handle.broker.store.write(statements)


@asynccontextmanager
async def broker_with(directory: Path, receiver_url: str | None, backlog: int = 0, per_key: int = 10):
    sections = {"limits": {"message_rate": 100_000.0, "message_burst": 100_000}}
    config = make_config(directory, **sections)
    if receiver_url is not None:
        config = config.replace(webhooks={"timeout": 60.0, "lease": 120.0}, webhook=(
            WebhookEndpoint(url=receiver_url, name="app", events=("*",), secrets=(SECRET,)),))
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve, config)
        if receiver_url is not None and backlog:
            await record_backlog(handle, backlog, per_key)
        yield handle
        nursery.cancel_scope.cancel()


async def sender(url: str, index: int, messages: int, latencies: list[float]) -> None:
    name = f"sender{index}"
    headers = [(b"Authorization", f"Bearer {issue_token(JWT_SECRET, name, 3600)}".encode())]
    async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
        while json.loads(await ws.get_message()).get("type") != "offline_complete":
            pass
        for i in range(messages):
            started = time.perf_counter()
            await ws.send_message(json.dumps({"recvId": f"reader{index}", "chatType": 2, "content": f"m{i}",
                                              "contentType": 1}))
            while json.loads(await ws.get_message()).get("type") != "chat_ack":
                pass
            latencies.append(time.perf_counter() - started)


async def run(label: str, receiver_url: str | None, senders: int, messages: int, backlog: int = 0,
              per_key: int = 10) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        async with broker_with(Path(directory), receiver_url, backlog, per_key) as broker:
            latencies: list[float] = []
            with trio.fail_after(600):
                async with trio.open_nursery() as nursery:
                    for index in range(senders):
                        nursery.start_soon(sender, broker.url(), index, messages, latencies)
            stats = broker.broker.webhook_stats()
            store = broker.broker.store
            transactions, reads = store.batches, getattr(store, "read_batches", 0)
    latencies.sort()
    result = {
        "messages": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "max_ms": 1000 * latencies[-1],
        "webhook_pending": stats["pending"],
        "webhook_delivered": stats["delivered"],
        "store_commits": transactions,  # the store thread's transactions and read calls, whole run
        "store_reads": reads,
    }
    print(f"{label:<28} " + "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in result.items()), flush=True)
    return result


async def main(senders: int, messages: int, rounds: int, runs: set[str], backlog: int, per_key: int) -> None:
    async def sleeps_30s(request):
        await trio.sleep(30)
        return 204, []

    for _ in range(rounds):  # interleaved, so a busy moment of the machine hits every run alike
        if "none" in runs:
            await run("no webhooks", None, senders, messages)
        if "slow" in runs:
            async with webhook_receiver(sleeps_30s) as slow:
                await run("receiver sleeping 30 s", slow.url, senders, messages, backlog, per_key)
        if "fast" in runs:
            async with webhook_receiver() as fast:
                await run("receiver answering at once", fast.url, senders, messages, backlog, per_key)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", default="none,slow,fast", help="which of none, slow, fast to run, comma-separated")
    parser.add_argument("--backlog", type=int, default=0, help="events pending before each webhook run starts")
    parser.add_argument("--backlog-per-key", type=int, default=10, help="backlog events per user (fewer keys: longer queues)")
    args = parser.parse_args()
    trio.run(main, args.senders, args.messages, args.rounds, set(args.runs.split(",")), args.backlog,
             args.backlog_per_key)

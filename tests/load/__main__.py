"""``python -m tests.load SCENARIO [options]``: run a load scenario, print a table,
write a JSON file.

Scenarios: fanout, publish, connect, chat, slow, churn, proxy, cluster (three nodes on
one redis-server and one PostgreSQL: see tests/load/cluster.py). ``--compare`` runs
fanout, publish or connect against trio-broker and the baselines (``--baselines``:
socket.io, websockets, trio-websocket) in one run and adds the ratios. Every run is
bounded in count and time and stops by itself.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Any

from . import scenarios
from .harness import LOAD_CPU, Server, pin, raise_fd_limit, report
from .publish import publish

BASELINES = ("socket.io", "websockets", "trio-websocket")
COMPARABLE = ("fanout", "publish", "connect")  # the scenarios the baselines can run (they only broadcast)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["fanout", "publish", "connect", "chat", "slow", "churn", "proxy", "cluster",
                                                 "compression"])
    parser.add_argument("--target", default="trio-broker", choices=["trio-broker", *BASELINES])
    parser.add_argument("--compare", action="store_true", help="also run the baselines (fanout, publish, connect)")
    parser.add_argument("--baselines", nargs="+", choices=BASELINES, default=list(BASELINES),
                        help="the baselines --compare runs (socket.io needs `make bench-setup`)")
    parser.add_argument("--url", help="target a running server instead of starting one")
    parser.add_argument("--subscribers", type=int, default=1000, help="fanout/publish/slow: subscribers in the room")
    parser.add_argument("--publishers", type=int, default=None, help="publish: connections in the pipelined phase; cluster: HTTP publishers per node (default 6)")
    parser.add_argument("--depth", type=int, default=16,
                        help="publish: requests in flight per connection in the pipelined phase")
    parser.add_argument("--window", type=int, default=200,
                        help="publish/cluster: at most this many events the last subscriber has not received "
                             "(publish: 0 = no bound)")
    parser.add_argument("--connections", type=int, default=5000, help="connect: connections to open")
    parser.add_argument("--jwt", action="store_true",
                        help="connect: each connection a different user with its own JWT (default: the static token)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per timed phase")
    parser.add_argument("--rate", type=float, default=20000.0,
                        help="fanout: offered deliveries/s for the fixed phase (0: skip); slow/churn: events/s")
    parser.add_argument("--batch", type=int, default=1,
                        help="fanout: events per publish request to trio-broker (baselines: one frame per event)")
    parser.add_argument("--pairs", type=int, default=50, help="chat: user pairs")
    parser.add_argument("--messages", type=int, default=200, help="chat: messages per user; proxy: frames per client")
    parser.add_argument("--clients", type=int, default=200, help="churn/proxy: clients")
    parser.add_argument("--slow-share", type=float, default=0.2, help="slow: share of subscribers that stop reading")
    parser.add_argument("--frame-bytes", type=int, default=32768, help="proxy: binary frame size")
    parser.add_argument("--outbox-bytes", type=int, default=1 << 20,
                        help="slow: the broker's outbox bound (default: its 1 MiB default)")
    parser.add_argument("--nodes", type=int, default=3, help="cluster: broker nodes")
    parser.add_argument("--event-bytes", type=int, default=16384, help="compression: the job event's JSON size")
    parser.add_argument("--out", help="JSON result file (default tests/load/results/...)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def run_scenario(args: argparse.Namespace, target: str) -> list[dict[str, Any]]:
    q = args.quiet
    if args.scenario == "cluster":
        from .cluster import cluster

        rows = cluster(args.subscribers, args.duration, args.rate, nodes=args.nodes, quiet=q, window=args.window,
                       publishers_per_node=6 if args.publishers is None else args.publishers)
        for row in rows:
            row["target"] = target
        return rows
    if args.scenario == "compression":
        rows = scenarios.compression(lambda: Server(target, args.url, outbox_bytes=4 << 20), args.subscribers,
                                     args.duration, args.event_bytes, quiet=q)
        for row in rows:
            row["target"] = target
        return rows
    if args.scenario == "proxy":
        return scenarios.proxy(lambda upstream: Server(target, args.url, proxy_upstream=upstream),
                               args.clients, args.messages, args.frame_bytes, quiet=q)
    # the slow scenario measures the broker's own bound (its default 1 MiB unless told)
    outbox = args.outbox_bytes if args.scenario == "slow" else (4 << 20)
    with Server(target, args.url, outbox_bytes=outbox) as server:
        if args.scenario == "fanout":
            rows = scenarios.fanout(server, args.subscribers, args.duration, args.rate, batch=args.batch, quiet=q)
        elif args.scenario == "publish":
            connections = 1 if args.publishers is None else args.publishers
            rows = publish(server, args.subscribers, args.duration, connections, args.depth, args.window, quiet=q)
        elif args.scenario == "connect":
            rows = scenarios.connect(server, args.connections, quiet=q, jwt=args.jwt)
        elif args.scenario == "chat":
            rows = scenarios.chat(server, args.pairs, args.messages, quiet=q)
        elif args.scenario == "slow":
            rows = scenarios.slow(server, args.subscribers, args.slow_share, args.duration, args.rate, quiet=q)
        else:
            rows = scenarios.churn(server, args.clients, args.duration, args.rate, quiet=q)
        for row in rows:
            row["target"] = target
            row["server_pinned"] = server.pinned
        return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    raise_fd_limit()
    pin(0, LOAD_CPU)
    targets = [args.target]
    if args.compare:
        if args.scenario not in COMPARABLE:
            raise SystemExit(f"--compare is for {', '.join(COMPARABLE)} (the baselines only broadcast)")
        targets = ["trio-broker", *(b for b in BASELINES if b in args.baselines)]
    rows: list[dict[str, Any]] = []
    for target in targets:
        if not args.quiet:
            print(f"== {args.scenario} on {target}", file=sys.stderr, flush=True)
        rows += run_scenario(args, target)
    _add_ratios(rows)
    summary = _one_publisher(rows) if args.scenario == "publish" else None
    params = {k: v for k, v in vars(args).items() if k not in ("out", "quiet")}
    return report(args.scenario, "+".join(targets), params, rows, args.out, summary=summary)


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """trio-broker's rate over each baseline's, phase by phase, measured in this run."""
    key = next((k for k in ("deliveries_per_s", "connections_per_s") if rows and k in rows[0]), None)
    if key is None:
        return
    ours = {row["phase"]: row[key] for row in rows if row.get("target") == "trio-broker" and key in row}
    for row in rows:
        if row.get("target") in BASELINES and row["phase"] in ours and row[key]:
            row["trio_broker_ratio"] = round(ours[row["phase"]] / row[key], 2)


def _one_publisher(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Issue 9's comparison: deliveries/s with trio-broker's one sequential keep-alive
    HTTP publisher over socket.io's with its one publisher socket at its fastest (the
    pipelined phase, when it has one connection), both measured in this run."""
    ours = next((r for r in rows if r["target"] == "trio-broker" and r["phase"] == "sequential"), None)
    peer = next((r for r in rows if r["target"] == "socket.io" and r["phase"] == "pipelined"
                 and r["publishers"] == 1), None)
    if ours is None or peer is None or not peer["deliveries_per_s"] or not ours["deliveries"]:
        return None
    return {"trio_broker_sequential_deliveries_per_s": ours["deliveries_per_s"],
            "socketio_one_socket_deliveries_per_s": peer["deliveries_per_s"],
            "one_publisher_ratio": round(ours["deliveries_per_s"] / peer["deliveries_per_s"], 2),
            # server CPU per delivery: what a machine shared with other work disturbs least
            "trio_broker_sequential_us_per_delivery": ours.get("server_cpu_us_per_delivery"),
            "socketio_one_socket_us_per_delivery": peer.get("server_cpu_us_per_delivery")}


if __name__ == "__main__":
    partial(main)()

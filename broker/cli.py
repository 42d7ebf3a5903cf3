"""``broker``: serve, check-config, token, publish.

Exit codes: 0 success, 1 the operation failed (e.g. publish refused), 2 bad
configuration or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from .auth import issue_token
from .config import Config, ConfigError, load_config
from .redact import configure_logging

log = logging.getLogger("broker")


def _default_config_path() -> str | None:
    return "config.toml" if Path("config.toml").is_file() else None


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config if args.config else _default_config_path())


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import Broker

    config = _load(args)
    configure_logging(config.log.level)
    log.info("config: %s", config.source)
    if not config.auth.jwt_secret and not config.auth.jwt_public_key_file and not config.auth.static_tokens \
            and not config.auth.env_token:
        log.warning("no JWT key and no static token configured: every WebSocket client will be refused")
    if not config.api.keys:
        log.warning("no API key configured: POST %s is refused", config.server.publish_path)

    async def main() -> None:
        broker = Broker(config)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_signals, broker, nursery.cancel_scope)
            await broker.run()
            nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


async def _signals(broker: Any, scope: trio.CancelScope) -> None:
    """First SIGTERM/SIGINT drains gracefully; a second one stops at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        count = 0
        async for signum in signals:
            count += 1
            if count == 1:
                log.info("%s: draining (send again to stop at once)", signal.Signals(signum).name)
                broker.request_shutdown()
            else:
                log.warning("second signal: stopping now")
                scope.cancel()


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    from .auth import Authenticator

    Authenticator(config.auth)  # reads the public key file, if any
    server = config.server
    print(f"config OK: {config.source}")
    print(f"  listen {server.host}:{server.port}  ws {server.ws_path}  health {server.health_path}  "
          f"metrics {server.metrics_path}  publish {server.publish_path}")
    print(f"  store {config.store.path} (synchronous={config.store.synchronous})")
    jwt_mode = ", ".join(config.auth.jwt_algorithms) if (config.auth.jwt_secret or config.auth.jwt_public_key_file) else "off"
    static = len(config.auth.static_tokens) + (1 if config.auth.env_token else 0)
    print(f"  auth: JWT {jwt_mode}; {static} static token(s); {len(config.api.keys)} API key(s)")
    return 0


def _claim(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--claim takes key=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def cmd_token(args: argparse.Namespace) -> int:
    secret = args.secret or os.environ.get("BROKER_JWT_SECRET") or ""
    if not secret:
        try:
            secret = _load(args).auth.jwt_secret
        except ConfigError:
            secret = ""
    if len(secret) < 32:
        print("broker token: need an HMAC secret of 32+ characters (--secret, BROKER_JWT_SECRET or [auth] jwt_secret)",
              file=sys.stderr)
        return 2
    claims = dict(args.claim or [])
    print(issue_token(secret, args.sub, args.ttl, claims, algorithm=args.algorithm))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .httpclient import http_request

    try:
        data = json.loads(args.data) if args.data else {}
    except ValueError as exc:
        print(f"broker publish: --data is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if args.status:
        data.setdefault("status", args.status)
    api_key = args.api_key or os.environ.get("BROKER_API_KEY", "").split(",")[0]
    if not api_key:
        print("broker publish: need an API key (--api-key or BROKER_API_KEY)", file=sys.stderr)
        return 2
    url = args.url
    if url is None:
        port = os.environ.get("PORT", "8080")
        url = f"http://127.0.0.1:{port}/api/publish"
    body = json.dumps({"jobId": args.job_id, "type": args.type, "data": data}).encode()

    async def main() -> int:
        try:
            response = await http_request(
                "POST", url, body=body,
                headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            )
        except (OSError, trio.TooSlowError) as exc:
            print(f"broker publish: cannot reach {url}: {exc or type(exc).__name__}", file=sys.stderr)
            return 1
        print(response.text.strip())
        return 0 if response.status == 200 else 1

    return trio.run(main)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker", description="trio-broker: a WebSocket message broker")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the broker until SIGTERM/SIGINT")
    serve.add_argument("--config", help="config file (default: ./config.toml if present, else embedded defaults)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate the configuration and print a summary")
    check.add_argument("--config")
    check.set_defaults(func=cmd_check_config)

    token = sub.add_parser("token", help="print a signed JWT")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    token.add_argument("--claim", action="append", type=_claim, metavar="KEY=VALUE",
                       help='extra claim; VALUE is JSON if it parses (--claim \'jobs=["job-*"]\')')
    token.add_argument("--secret", help="HMAC secret (default: BROKER_JWT_SECRET, then the config)")
    token.add_argument("--algorithm", default="HS256", choices=["HS256", "HS384", "HS512"])
    token.add_argument("--config")
    token.set_defaults(func=cmd_token)

    publish = sub.add_parser("publish", help="publish a job event through POST /api/publish")
    publish.add_argument("job_id")
    publish.add_argument("--type", default="job_status", help="event type (default job_status)")
    publish.add_argument("--status", help="shortcut for data.status")
    publish.add_argument("--data", help="event data as a JSON object")
    publish.add_argument("--url", help="publish URL (default http://127.0.0.1:$PORT/api/publish)")
    publish.add_argument("--api-key", help="API key (default: BROKER_API_KEY)")
    publish.set_defaults(func=cmd_publish)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"broker: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

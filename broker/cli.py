"""``broker``: serve, check-config, config, token, publish, groups, client, doctor.

Exit codes: 0 success, 1 the operation failed (e.g. publish refused), 2 bad
configuration or usage.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from .auth.tokens import issue_token
from .config.defaults import default_config_text
from .config.dev import (
    ALLOW_DEV_SECRETS_ENV,
    DEV_FILE,
    apply_dev_defaults,
    dev_environ,
    dev_file_text,
    exposed_dev_secrets,
    remove_dev_file,
    write_dev_file,
)
from .config.loader import Config, ConfigError, describe_unknown, load_config, unknown_environment
from .observability.redact import configure_logging
from .tools.check import authentication_warning
from .tools.settings import DEV_HINT, base_url, client_token, setting, truthy

log = logging.getLogger("broker")


# The collector's young generation every 10 000 net allocations instead of 700. A broker
# keeps ~70 tracked objects per idle connection; with the default thresholds a burst of
# connections ran a full collection (one that walks every live connection) every few
# hundred connections, most of the burst's CPU (docs/PERFORMANCE.md, "Connections").
# Full collections still follow CPython's rule: when a quarter more objects survived.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """For the serving process only (embedding applications keep their own settings):
    objects made at start-up leave the collector's scans, young collections are rarer."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _default_config_path() -> str | None:
    return "config.toml" if Path("config.toml").is_file() else None


def _load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    return load_config(args.config if args.config else _default_config_path(), environ)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import Broker, start_banner
    from .transport.accept import raise_descriptor_limit

    environ: Mapping[str, str] = dev_environ(os.environ) if args.dev else os.environ
    config = _load(args, environ)
    if args.dev:
        config = apply_dev_defaults(config)
    configure_logging(config.log.level)
    exposed = exposed_dev_secrets(config)
    if exposed and not (args.allow_dev_secrets or truthy(os.environ.get(ALLOW_DEV_SECRETS_ENV))):
        print(f"broker serve: refusing to listen on {config.server.host or 'every interface'} with the publicly "
              f"known development secrets in {', '.join(exposed)}: anyone who can reach this address could use "
              f"them. Set your own secrets, or listen on loopback (HOST=127.0.0.1), or, knowingly, pass "
              f"--allow-dev-secrets ({ALLOW_DEV_SECRETS_ENV}=1).", file=sys.stderr)
        return 2
    log.info("config: %s", config.source)
    for name, closest in unknown_environment(environ):
        log.warning("%s", describe_unknown(name, closest))
    nobody = authentication_warning(config)
    if nobody:
        log.warning("%s", nobody)
    else:
        if not config.auth.jwt_secret and not config.auth.jwt_public_key_file and not config.auth.static_tokens \
                and not config.auth.env_token:
            log.warning("no JWT key and no static token configured: every WebSocket client will be refused")
        if not config.api.keys:
            log.warning("no API key configured: POST %s is refused", config.server.publish_path)
    limits = config.limits
    notes: list[str] = []
    wanted = limits.max_connections + limits.max_http_connections + 64  # + store, listeners, logs
    available = raise_descriptor_limit(wanted, warn=not args.dev)
    if args.dev and available < wanted:
        # development: fit the connection limits to what this machine allows, said once in the banner
        fitted = max(64, available - limits.max_http_connections - 64)
        config = config.replace(limits={"max_connections": fitted})
        notes.append(f"open files: limit {available}, so at most {fitted} WebSocket connections "
                     f"([limits] max_connections {limits.max_connections} needs {wanted}; ulimit -Hn raises it)")
    dev_folder = Path(args.config).resolve().parent if args.config else Path.cwd()

    async def main() -> None:
        broker = Broker(config)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_signals, broker, nursery.cancel_scope)
            handle = await nursery.start(broker.run)
            dev_file = write_dev_file(dev_folder, dev_file_text(config, handle.port)) if args.dev else None
            try:
                print(start_banner(handle, dev_file=str(dev_file) if dev_file else None, notes=tuple(notes)),
                      flush=True)
                await broker.stopped.wait()
            finally:
                if dev_file is not None:
                    remove_dev_file(dev_file)
            nursery.cancel_scope.cancel()

    from .store import StoreError

    tune_gc()
    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        store_errors, rest = group.split(StoreError)
        if store_errors is None or rest is not None:
            raise
        # the store could not be opened or claimed: one line says why, no traceback
        print(f"broker: store: {_first_leaf(store_errors)}", file=sys.stderr)
        return 1
    return 0


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


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
    from .tools.check import check_config

    return check_config(_load(args), strict=args.strict)


def cmd_config(args: argparse.Namespace) -> int:
    """``broker config --print-default``: the shipped config.toml, every option with its default."""
    sys.stdout.write(default_config_text())
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
    secret = args.secret or setting("BROKER_JWT_SECRET")[0]
    if not secret:
        try:
            secret = _load(args).auth.jwt_secret
        except ConfigError:
            secret = ""
    if len(secret) < 32:
        print("broker token: need an HMAC secret of 32+ characters: pass --secret, set BROKER_JWT_SECRET, or "
              f"[auth] jwt_secret in the config ({DEV_HINT})", file=sys.stderr)
        return 2
    claims = dict(args.claim or [])
    print(issue_token(secret, args.sub, args.ttl, claims, algorithm=args.algorithm))
    return 0


def _api_call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> int:
    """Call the broker's HTTP API; print the JSON answer; 0 on 2xx."""
    from .tools.httpclient import http_request

    api_key = args.api_key or setting("BROKER_API_KEY")[0].split(",")[0]
    if not api_key:
        print(f"broker {args.command}: need an API key: pass --api-key or set BROKER_API_KEY ({DEV_HINT})",
              file=sys.stderr)
        return 2
    base, where = base_url(args)
    url = base + path
    data = json.dumps(body).encode() if body is not None else b""

    async def main() -> int:
        try:
            response = await http_request(method, url, body=data, headers={
                "Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
        except (OSError, trio.TooSlowError) as exc:
            print(f"broker {args.command}: cannot reach {url} (from {where}): {exc or type(exc).__name__}; is the "
                  "broker running there? Pass --url or set PORT", file=sys.stderr)
            return 1
        print(response.text.strip())
        return 0 if 200 <= response.status < 300 else 1

    return trio.run(main)


def cmd_publish(args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.data) if args.data else {}
    except ValueError as exc:
        print(f"broker publish: --data is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(data, dict):
        print("broker publish: --data must be a JSON object", file=sys.stderr)
        return 2
    if args.status:
        data.setdefault("status", args.status)
    event: dict[str, object] = {"jobId": args.job_id, "type": args.type, "data": data}
    if args.idempotency_key is not None:
        event["idempotencyKey"] = args.idempotency_key
    return _api_call(args, "POST", "/api/publish", event)


def cmd_groups(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    group = quote(args.group, safe="") if getattr(args, "group", None) else ""
    if args.action == "create":
        return _api_call(args, "POST", "/api/groups", {"groupId": args.group, "name": args.name or args.group,
                                                        "members": args.member or []})
    if args.action == "add":
        return _api_call(args, "PUT", f"/api/groups/{group}/members", {"members": args.users})
    if args.action == "remove":
        status = 0
        for user in args.users:
            status |= _api_call(args, "DELETE", f"/api/groups/{group}/members/{quote(user, safe='')}")
        return status
    if args.action == "show":
        return _api_call(args, "GET", f"/api/groups/{group}")
    if args.action == "delete":
        return _api_call(args, "DELETE", f"/api/groups/{group}")
    return _api_call(args, "GET", f"/api/users/{quote(args.user, safe='')}/groups")


def cmd_client(args: argparse.Namespace) -> int:
    from .tools.terminal import run_client

    token = client_token(args)
    if not token:
        print(f"broker client: no token (--token, BROKER_TOKEN, or {DEV_FILE} from make run): the broker waits "
              '[websocket] auth_timeout for {"type":"auth","token":"..."} typed as the first line', file=sys.stderr)
    return trio.run(lambda: run_client(args.url, token, ca_file=args.ca, wait=args.wait))


def cmd_doctor(args: argparse.Namespace) -> int:
    from .tools.check import postgres_status
    from .tools.doctor import diagnose

    token = client_token(args)
    report = trio.run(lambda: diagnose(args.url, token, args.ca, args.origin))
    config = _load(args)
    if config.store.url:  # the broker's own dependency, checked from here: is it reachable at all?
        reachable, line = postgres_status(config.store.url, config.store.connect_timeout)
        report.add("postgresql", reachable, line,
                   "" if reachable else "check [store] url (BROKER_STORE_URL), that PostgreSQL runs and accepts "
                                        "this host (listen_addresses, pg_hba.conf)")
    print(report.render())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker", description="trio-broker: a WebSocket message broker")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the broker until SIGTERM/SIGINT")
    serve.add_argument("--config", help="config file (default: ./config.toml if present, else embedded defaults)")
    serve.add_argument("--dev", action="store_true",
                       help="development (make run): the known development secrets unless set, loopback unless HOST "
                            "is set, pages on http://localhost:* may connect, JWTs join every job; writes "
                            f"{DEV_FILE} beside the config for the CLI")
    serve.add_argument("--allow-dev-secrets", action="store_true",
                       help=f"start even with the publicly known development secrets on a non-loopback address "
                            f"(also {ALLOW_DEV_SECRETS_ENV}=1)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate the configuration, reach its store and Redis, and "
                                                "print a summary")
    check.add_argument("--config")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too (nothing can authenticate, "
                                                             "a BROKER_* variable that sets nothing)")
    check.set_defaults(func=cmd_check_config)

    config = sub.add_parser("config", help="the reference configuration")
    config.add_argument("--print-default", action="store_true", required=True,
                        help="print the default config.toml: every option, its default and what it does")
    config.set_defaults(func=cmd_config)

    token = sub.add_parser("token", help="print a signed JWT")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    token.add_argument("--claim", action="append", type=_claim, metavar="KEY=VALUE",
                       help='extra claim; VALUE is JSON if it parses (--claim \'jobs=["job-*"]\')')
    token.add_argument("--secret", help=f"HMAC secret (default: BROKER_JWT_SECRET, then {DEV_FILE}, then the config)")
    token.add_argument("--algorithm", default="HS256", choices=["HS256", "HS384", "HS512"])
    token.add_argument("--config")
    token.set_defaults(func=cmd_token)

    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--url", help=f"the broker's base URL (default http://127.0.0.1:$PORT, then {DEV_FILE}, "
                                   "then port 8080)")
    api.add_argument("--api-key", help=f"API key (default: BROKER_API_KEY, then {DEV_FILE})")

    publish = sub.add_parser("publish", parents=[api], help="publish a job event through POST /api/publish")
    publish.add_argument("job_id")
    publish.add_argument("--type", default="job_status", help="event type (default job_status)")
    publish.add_argument("--status", help="shortcut for data.status")
    publish.add_argument("--data", help="event data as a JSON object")
    publish.add_argument("--idempotency-key", help="a retry with the same key gets the first seq, not a second event")
    publish.set_defaults(func=cmd_publish)

    groups = sub.add_parser("groups", help="manage chat groups through the HTTP API")
    actions = groups.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", parents=[api], help="create a group")
    create.add_argument("group")
    create.add_argument("--name")
    create.add_argument("--member", action="append", metavar="USER", help="a member (repeat)")
    add = actions.add_parser("add", parents=[api], help="add members")
    add.add_argument("group")
    add.add_argument("users", nargs="+")
    remove = actions.add_parser("remove", parents=[api], help="remove members")
    remove.add_argument("group")
    remove.add_argument("users", nargs="+")
    for name, text in (("show", "the group and its members"), ("delete", "delete the group and its messages")):
        action = actions.add_parser(name, parents=[api], help=text)
        action.add_argument("group")
    of = actions.add_parser("of", parents=[api], help="the groups a user is in")
    of.add_argument("user")
    groups.set_defaults(func=cmd_groups)

    for name, func, text in (
        ("client", cmd_client, "interactive WebSocket client: send lines, print frames with timestamps"),
        ("doctor", cmd_doctor, "find where a client's connection breaks: DNS, TCP, TLS, upgrade, auth, heartbeat"),
    ):
        tool = sub.add_parser(name, help=text)
        tool.add_argument("url", help="e.g. ws://localhost:8080/ws or wss://broker.example.com/ws")
        tool.add_argument("--token", help="sent as Authorization: Bearer (default: BROKER_TOKEN, then the "
                                          f"development token in {DEV_FILE})")
        tool.add_argument("--ca", help="CA bundle to trust for wss:// (a private CA)")
        if name == "doctor":
            tool.add_argument("--origin", help="send Origin: as a page on this origin would (e.g. "
                                               "http://localhost:5173): is that page allowed to connect?")
            tool.add_argument("--config", help="also check the broker's PostgreSQL when [store] url is set "
                                               "(default: ./config.toml if present)")
        if name == "client":
            tool.add_argument("--wait", type=float, default=0.5,
                              help="seconds to keep printing replies after the end of input (default 0.5)")
        tool.set_defaults(func=func)
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

"""``broker doctor URL``: walk the path a failing client takes and say where it breaks.

DNS → TCP → TLS (chain, host name, expiry) → the HTTP upgrade → authentication →
a heartbeat round trip. Each step reports what it saw and, when it fails, what to fix,
in plain words. The first failing step ends the walk (later steps cannot run).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import ssl
import time
from urllib.parse import urlsplit

import attrs
import trio
import wsproto
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage

from .httpclient import http_request

TIMEOUT = 5.0


@attrs.define
class Step:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@attrs.define
class Report:
    url: str
    steps: list[Step] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    def add(self, name: str, ok: bool, detail: str, fix: str = "") -> bool:
        self.steps.append(Step(name, ok, detail, fix))
        return ok

    def render(self) -> str:
        lines = [f"broker doctor {self.url}"]
        for step in self.steps:
            lines.append(f"  {'ok  ' if step.ok else 'FAIL'} {step.name:<10} {step.detail}")
            if step.fix:
                lines.append(f"       {'':<10} {'note' if step.ok else 'fix'}: {step.fix}")
        lines.append("all checks passed" if self.ok else "the client's connection breaks at the step marked FAIL")
        return "\n".join(lines)


_STATUS_ADVICE = {
    400: ("the server (or a proxy) rejected the upgrade request as malformed",
          "a proxy must speak HTTP/1.1 to the broker and pass Upgrade/Connection on "
          "(nginx: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
          "proxy_set_header Connection \"upgrade\")"),
    401: ("the server wants credentials before the upgrade", "pass a token (--token)"),
    403: ("refused with 403", "if the body says 'origin not allowed', add the page's origin to [limits] allowed_origins"),
    404: ("nothing at this path", "the broker's WebSocket endpoint is /ws ([server] ws_path); proxy routes have their own "
                                  "paths; check the URL and any path rewriting in the proxy"),
    426: ("the request reached the server without its Upgrade header: a proxy in front stripped it",
          "nginx: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "
          "\"upgrade\" (see deploy/nginx/trio-broker.conf); cloud load balancers: enable WebSocket support"),
    429: ("too many connections (per address, per user, or on a static token)",
          "close other connections or raise [limits] (a static token: its max_connections)"),
    502: ("the proxy could not reach the broker", "check the proxy's upstream address and that the broker is running"),
    503: ("the broker is draining or at its connection limit", "retry shortly; check [limits] max_connections"),
    504: ("the proxy timed out reaching the broker", "check the proxy's upstream address and firewalls"),
}

_CLOSE_MEANINGS = {1000: "normal close", 1001: "server shutting down", 1008: "authentication failed / policy",
                   1009: "message too big", 1011: "internal error", 1013: "try again later", 4001: "replaced by a newer login",
                   4002: "heartbeat timeout", 4003: "slow consumer", 4004: "upstream unavailable",
                   4005: "token expired: get a new token, then reconnect", 4008: "rate limited",
                   4009: "disconnected by the application: do not reconnect by yourself"}


def close_meaning(code: int | None) -> str:
    return _CLOSE_MEANINGS.get(code or 0, "")


async def diagnose(url: str, token: str | None = None, ca_file: str | None = None,
                   origin: str | None = None) -> Report:
    """Run every step against ``url``; never raises for network trouble. With ``origin``
    the upgrade carries ``Origin:`` as a page on that origin would send it."""
    report = Report(url)
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        report.add("url", False, f"cannot use {url!r}", "give a ws://, wss://, http:// or https:// URL with a host")
        return report
    host, secure = parts.hostname, scheme == "wss"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/ws") + (f"?{parts.query}" if parts.query else "")

    try:
        with trio.fail_after(TIMEOUT):
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = sorted({str(info[4][0]) for info in infos})  # the host part of any sockaddr
        report.add("dns", True, f"{host} → {', '.join(addresses)}")
    except (OSError, trio.TooSlowError) as exc:
        report.add("dns", False, f"cannot resolve {host}: {_why(exc)}",
                   "check the host name (inside a container network, use the service name)")
        return report

    try:
        with trio.fail_after(TIMEOUT):
            tcp = await trio.open_tcp_stream(host, port)
        report.add("tcp", True, f"connected to {host}:{port}")
    except trio.TooSlowError:
        report.add("tcp", False, f"no answer from {host}:{port} within {TIMEOUT:g}s",
                   "a firewall or security group drops the traffic, or the address is wrong")
        return report
    except OSError as exc:
        report.add("tcp", False, f"nothing is listening on {host}:{port} ({_why(exc)})",
                   "is the broker running? check PORT / [server] port and the load balancer's target port")
        return report

    stream: trio.abc.Stream = tcp
    if secure:
        tls = await _check_tls(report, tcp, host, ca_file)
        if tls is None:
            await trio.aclose_forcefully(tcp)
            return report
        stream = tls
    try:
        await _check_websocket(report, stream, host, port, target, token, secure, origin)
    finally:
        await trio.aclose_forcefully(stream)
    await _check_cluster(report, host, port, secure, ca_file)
    return report


async def _check_cluster(report: Report, host: str, port: int, secure: bool, ca_file: str | None) -> None:
    """A cluster node's ``/health`` names the node and, while it cannot reach Redis, why
    (a load balancer then sends traffic elsewhere). One node: no step."""
    url = f"{'https' if secure else 'http'}://{host}:{port}/health"
    context = (ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()) if secure else None
    try:
        response = await http_request("GET", url, timeout=TIMEOUT, ssl_context=context, max_body=65536)
        body = json.loads(response.body)
    except Exception:  # noqa: BLE001 - informational: whatever went wrong, the steps above said it
        return
    if isinstance(body, dict) and isinstance(body.get("jwks"), dict):
        _report_jwks(report, body["jwks"])
    if not isinstance(body, dict) or "node" not in body:
        return
    where = _redis_where(body.get("redis"))
    if response.status == 200:
        report.add("cluster", True, f"node {body['node']} is healthy (Redis reachable{where})")
    else:
        report.add("cluster", False, f"node {body['node']}: {body.get('status')}: {body.get('reason', '')}".rstrip(": ")
                   + (f" ({where[2:]})" if where else ""),
                   "the node cannot reach Redis: check [cluster] redis_url (or redis_sentinels and "
                   "redis_master_name) and run `broker check-config` on the node")


def _redis_where(redis: object) -> str:
    """", master H:P" and, with Sentinel, the master's name and which sentinels answered
    (from the node's ``/health``); "" when the node does not say."""
    if not isinstance(redis, dict):
        return ""
    where = f", master {redis.get('master') or 'not found yet'}"
    sentinels = redis.get("sentinels")
    if isinstance(sentinels, dict):
        answered = [name for name, ok in sentinels.items() if ok]
        where += (f" of {redis.get('masterName')!r} via Sentinel: {len(answered)} of {len(sentinels)} sentinels "
                  f"answered ({', '.join(answered) or 'none'}); failovers seen: {redis.get('failovers', 0)}")
    return where


def _report_jwks(report: Report, jwks: dict) -> None:
    """The broker's JWKS key set, from its ``/health``: keys, their ids, age, last error."""
    kids = ", ".join(str(kid) for kid in jwks.get("kids") or []) or "none"
    age = jwks.get("age")
    fetched = f"fetched {age:g}s ago" if isinstance(age, int | float) else "never fetched"
    error = jwks.get("error")
    if not jwks.get("keys"):
        report.add("jwks", False, f"no keys ({fetched}){': ' + str(error) if error else ''}",
                   "JWT connections get 1013 / 503 until the broker can fetch [auth] jwks_url: check the URL "
                   "and that the broker host reaches the identity provider")
    elif error:
        report.add("jwks", False, f"{jwks['keys']} cached key(s) [{kids}], {fetched}; last fetch failed: {error}",
                   "cached keys keep working; a rotated key will not be found until the JWKS answers again")
    else:
        report.add("jwks", True, f"{jwks['keys']} key(s) [{kids}], {fetched}")


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


async def _check_tls(report: Report, tcp: trio.SocketStream, host: str, ca_file: str | None) -> trio.SSLStream | None:
    context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    tls = trio.SSLStream(tcp, context, server_hostname=host)
    try:
        with trio.fail_after(TIMEOUT):
            await tls.do_handshake()
    except trio.TooSlowError:
        report.add("tls", False, "no TLS handshake within the timeout", "is this port TLS at all? try ws:// / http://")
        return None
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            report.add("tls", False, *_certificate_advice(cause, host))
        elif isinstance(cause, ssl.SSLError) and "WRONG_VERSION_NUMBER" in (cause.reason or str(cause)).upper():
            report.add("tls", False, "the port answers in plain HTTP, not TLS",
                       "use ws:// (http://) for this port, or enable TLS ([server.tls] or the proxy)")
        else:
            report.add("tls", False, f"TLS handshake failed: {cause or exc}", "check the certificate and TLS settings")
        return None
    cert = tls.getpeercert() or {}
    not_after = cert.get("notAfter")
    days = None
    if not_after:
        expires = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), dt.UTC)
        days = (expires - dt.datetime.now(dt.UTC)).days
    issuer = dict(x[0] for x in cert.get("issuer", ())).get("organizationName", "?")
    detail = f"{tls.selected_alpn_protocol() or 'TLS'} ok, certificate for {host} issued by {issuer}"
    if days is not None:
        detail += f", expires in {days} days"
    fix = "renew the certificate soon" if days is not None and days < 14 else ""
    report.add("tls", True, detail, fix)
    return tls


def _certificate_advice(error: ssl.SSLCertVerificationError, host: str) -> tuple[str, str]:
    code = error.verify_code
    message = error.verify_message or str(error)
    if code == 10:
        return f"the certificate has expired ({message})", "renew it (certbot renew, or your provider's console)"
    if code == 62 or "hostname" in message.lower() or "IP address mismatch" in message:
        return (f"the certificate is not for {host} ({message})",
                "use the host name the certificate names, or issue one that names this host")
    if code in (18, 19):
        return f"self-signed certificate ({message})", "use a CA-signed certificate, or pass --ca with your CA bundle"
    if code in (20, 21):
        return (f"the certificate's issuer is not trusted here ({message})",
                "serve the full chain (leaf + intermediates), or pass --ca with your private CA")
    return f"certificate rejected: {message}", "check the certificate chain and names"


async def _check_websocket(report: Report, stream: trio.abc.Stream, host: str, port: int, target: str,
                           token: str | None, secure: bool, origin: str | None = None) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", "User-Agent: broker-doctor"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if origin:
        lines.append(f"Origin: {origin}")
    try:
        with trio.fail_after(TIMEOUT):
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            head, rest = await _read_head(stream)
    except (trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
        hint = "the server closed the connection without an HTTP answer"
        fix = "if the port speaks TLS, use wss:// (https://)" if not secure else "check the proxy or server logs"
        report.add("upgrade", False, f"{hint} ({type(exc).__name__})", fix)
        return
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        if status_line.startswith("\x15\x03"):
            report.add("upgrade", False, "the port answers in TLS", "use wss:// (https://) for this port")
        else:
            report.add("upgrade", False, f"not an HTTP answer: {status_line[:60]!r}", "is this the broker's port?")
        return
    if status != 101:
        body = rest.decode("utf-8", "replace").strip().splitlines()
        what, fix = _STATUS_ADVICE.get(status, (f"HTTP {status}", "check the URL and the proxy in front"))
        if status == 403 and body and "origin" in body[0]:
            fix = origin_fix(origin)
        report.add("upgrade", False, f"HTTP {status}: {what}" + (f" ({body[0][:100]})" if body else ""), fix)
        return
    report.add("upgrade", True, f"101 Switching Protocols on {target.split('?')[0]}")
    if origin:
        report.add("origin", True, f"pages on {origin} may connect")
    await _check_session(report, stream, rest, token)


def origin_fix(origin: str | None) -> str:
    """What to set so the broker admits pages on ``origin``."""
    if not origin:
        return ("the page's origin is not in the allow-list: run again with --origin <the page's origin> to check "
                "it, then add it to [limits] allowed_origins")
    shown = origin.strip().rstrip("/")
    return (f'add "{shown}" to [limits] allowed_origins in config.toml (or BROKER_LIMITS_ALLOWED_ORIGINS={shown}, '
            'comma-separated); `make run` (broker serve --dev) already allows http://localhost:* and '
            'http://127.0.0.1:*')


async def _read_head(stream: trio.abc.Stream) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise trio.BrokenResourceError("closed")
        data += chunk
        if len(data) > 65536:
            break
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def _check_session(report: Report, stream: trio.abc.Stream, buffered: bytes, token: str | None) -> None:
    ws = wsproto.Connection(wsproto.ConnectionType.CLIENT)
    ws.receive_data(buffered)

    async def next_event(timeout: float):
        with trio.fail_after(timeout):
            while True:
                for event in ws.events():
                    if isinstance(event, Ping):
                        await stream.send_all(ws.send(event.response()))
                        continue
                    return event
                data = await stream.receive_some(65536)
                ws.receive_data(bytes(data) if data else None)  # wsproto takes bytes

    if not token:  # an empty auth frame gets the broker's answer now, not after its auth timeout
        await stream.send_all(ws.send(TextMessage(data='{"type":"auth","token":""}')))
    try:
        event = await next_event(TIMEOUT)
    except trio.TooSlowError:
        report.add("auth", False, "no answer after the upgrade", "the broker sends connection_established at once "
                                                                   "after a valid token: pass --token")
        return
    except (trio.BrokenResourceError, OSError):
        report.add("auth", False, "the connection dropped after the upgrade", "check the proxy's timeouts and logs")
        return
    if isinstance(event, Message) and isinstance(event, (TextMessage, BytesMessage)):
        try:
            first = json.loads(event.data)
        except ValueError:
            first = {}
        if first.get("type") == "connection_established":
            interval = first.get("heartbeatInterval", 0) / 1000
            report.add("auth", True, f"connection_established as user {first.get('userId')!r}")
            await _check_heartbeat(report, stream, ws, next_event, interval)
            with trio.move_on_after(1):
                await stream.send_all(ws.send(CloseConnection(code=1000)))
            return
        if first.get("code") == "UNAUTHORIZED":
            fix = ("pass a token: --token (Authorization header), or send {\"type\":\"auth\"} first"
                   if not token else "the token was refused: get a new one (expired?), and check the broker's "
                                     "[auth] algorithms, secret or public key, audience and issuer")
            report.add("auth", False, "UNAUTHORIZED, then close 1008" if token else "no token given: UNAUTHORIZED", fix)
            return
        report.add("auth", False, f"unexpected first message: {str(event.data)[:80]}", "is this a trio-broker endpoint?")
        return
    if isinstance(event, CloseConnection):
        report.add("auth", False, f"closed {event.code} ({close_meaning(event.code)}) {event.reason or ''}".strip(),
                   "see the close code table in docs/PROTOCOL.md section 6")
        return
    report.add("auth", False, f"unexpected {type(event).__name__}", "is this a trio-broker endpoint?")


async def _check_heartbeat(report: Report, stream: trio.abc.Stream, ws: wsproto.Connection, next_event,
                           interval: float) -> None:
    started = time.perf_counter()
    try:
        await stream.send_all(ws.send(Ping(payload=b"doctor")))
        while not isinstance(await next_event(TIMEOUT), Pong):
            pass
        ping_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        await stream.send_all(ws.send(TextMessage(data='{"type":"ping"}')))
        while True:
            event = await next_event(TIMEOUT)
            if isinstance(event, TextMessage) and json.loads(event.data).get("type") == "pong":
                break
        app_ms = (time.perf_counter() - started) * 1000
    except (trio.TooSlowError, trio.BrokenResourceError, OSError):
        report.add("heartbeat", False, "no pong within the timeout", "something between client and broker drops "
                                                                     "WebSocket control frames")
        return
    detail = f"ping/pong {ping_ms:.1f} ms, application ping {app_ms:.1f} ms"
    fix = ""
    if interval:
        detail += f"; broker pings every {interval:g}s"
        fix = f"keep every proxy's idle/read timeout above {interval:g}s (nginx proxy_read_timeout, ALB idle timeout)"
    report.add("heartbeat", True, detail, fix)

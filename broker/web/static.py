"""The files the broker serves to browsers: the JS client package and the console page.

| path (defaults, ``[browser]`` in config.toml) | what |
|---|---|
| ``/client/broker-client.mjs`` (and ``.d.ts``, ``react.mjs``, ``adapters/wx.mjs``, ...) | the client package, importable with no build step |
| ``/console`` | a page to try the broker from a browser (``console.mjs``, ``console.css`` beside it) |
| ``/admin`` | the operator's page: the server API with the API key typed in (``admin.mjs``, ``admin.css``) |

Every file is read once, when the broker starts, from the ``static`` directory shipped
inside the package, into a table keyed by URL path. A request is answered from that
table or not at all: no request touches the file system, so no path, however encoded,
can reach a file outside it. Client files are public code: cached (``max-age`` plus an
``ETag`` for revalidation) and readable cross-origin. The console page is revalidated on
every load and sent with a restrictive Content-Security-Policy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import attrs

from ..config.loader import BrowserConfig
from .api import ApiResponse, require_method

STATIC_ROOT = Path(__file__).parent.parent / "static"  # the data folder beside the packages

CONTENT_TYPES = {
    ".mjs": "text/javascript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",  # declarations: read by tools and people, never executed
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
}

# connect-src: the typed URL may name any broker; over SSE the client fetches it by http(s)
CONSOLE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss: http: https:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# the admin page talks to the server API of its own origin only: no WebSocket, no other host
ADMIN_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@attrs.frozen
class StaticFile:
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...]

    @property
    def etag(self) -> str:
        return self.headers[0][1]


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


class StaticFiles:
    """The table of served files, built at start; ``respond`` answers from it."""

    def __init__(self, config: BrowserConfig, ws_path: str, root: Path = STATIC_ROOT, api_prefix: str = "/api",
                 publish_path: str = "/api/publish") -> None:
        self.files: dict[str, StaticFile] = {}
        if config.client_path:
            client_root = root / "client"
            for file in sorted(client_root.rglob("*")):
                if file.is_file() and file.suffix in CONTENT_TYPES:
                    url = f"{config.client_path}/{file.relative_to(client_root).as_posix()}"
                    self._add(url, file.read_bytes(), file.suffix, [
                        ("Cache-Control", f"public, max-age={config.cache_max_age}"),
                        ("Access-Control-Allow-Origin", "*"),
                    ])
        if config.console_path and config.client_path:
            page = (root / "console" / "index.html").read_text(encoding="utf-8")
            for name, value in (("CONSOLE_PATH", config.console_path), ("CLIENT_PATH", config.client_path),
                                ("WS_PATH", ws_path)):
                page = page.replace("{{" + name + "}}", value)
            page_headers = [("Cache-Control", "no-cache"), ("Content-Security-Policy", CONSOLE_POLICY),
                            ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY")]
            self._add(config.console_path, page.encode("utf-8"), ".html", page_headers)
            for name in ("console.mjs", "console.css"):
                self._add(f"{config.console_path}/{name}", (root / "console" / name).read_bytes(),
                          Path(name).suffix, [("Cache-Control", "no-cache")])

        if config.admin_path:
            self._add_page(root / "admin", config.admin_path, "admin", ADMIN_POLICY,
                           {"ADMIN_PATH": config.admin_path, "API_PREFIX": api_prefix.rstrip("/"),
                            "PUBLISH_PATH": publish_path})

    def _add_page(self, folder: Path, path: str, name: str, policy: str, values: dict[str, str]) -> None:
        """A page (``index.html`` with ``{{NAME}}`` filled in, never cached, under a strict
        policy) and its ``<name>.mjs`` and ``<name>.css``."""
        page = (folder / "index.html").read_text(encoding="utf-8")
        for key, value in values.items():
            page = page.replace("{{" + key + "}}", value)
        self._add(path, page.encode("utf-8"), ".html", [
            ("Cache-Control", "no-cache"), ("Content-Security-Policy", policy), ("Referrer-Policy", "no-referrer"),
            ("X-Frame-Options", "DENY")])
        for file in (f"{name}.mjs", f"{name}.css"):
            self._add(f"{path}/{file}", (folder / file).read_bytes(), Path(file).suffix, [("Cache-Control", "no-cache")])

    def _add(self, url: str, body: bytes, suffix: str, headers: list[tuple[str, str]]) -> None:
        headers = [("ETag", _etag(body)), *headers, ("X-Content-Type-Options", "nosniff")]
        self.files[url] = StaticFile(body, CONTENT_TYPES[suffix], tuple(headers))

    def owns(self, path: str) -> bool:
        return path in self.files

    def respond(self, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> ApiResponse:
        """GET or HEAD of a served file: 200, or 304 when ``If-None-Match`` names its ETag.
        Raises HttpError(405) for other methods."""
        require_method(method, "GET", "HEAD")
        file = self.files[path]
        if_none_match = next((value for key, value in headers if key == b"if-none-match"), None)
        if if_none_match is not None and _matches(if_none_match.decode("latin-1"), file.etag):
            return ApiResponse(304, b"", file.content_type, list(file.headers))
        return ApiResponse(200, file.body, file.content_type, list(file.headers))  # HEAD: the front drops the body


def _matches(if_none_match: str, etag: str) -> bool:
    candidates = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


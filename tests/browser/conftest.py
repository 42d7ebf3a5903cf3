"""Browser tests: the JS client, the React hook, the wx adapter and the console page in
Debian's chromium, driven by Python Playwright through ``executable_path`` (Playwright's
own browser download is never used; ``scripts/ensure-chromium`` installs chromium).

Rules: one browser for the whole session, a fresh context per test; each test starts its
own broker on port 0 (in a thread: Playwright's sync API owns this one). No sleeps: every
wait is for the state it means (``wait_for_function``) with a timeout. React and
TypeScript come from npm into tests/browser/js (``make browser-deps``: ``npm ci``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import trio

from broker import serve
from tests.support.browser import JS, NODE_BIN, PAGES, WAIT_MS
from tests.support.helpers import make_config

HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    # Test pages are fulfilled by Playwright (page.route) at the broker's origin; such a
    # document has no network address, so chromium's local-network checks would treat it
    # as public and block its WebSocket to 127.0.0.1. The console test loads a page the
    # broker serves itself, as users do.
    "--disable-features=LocalNetworkAccessChecks,LocalNetworkAccessChecksWebSockets",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here drives chromium: marked ``browser`` (``make test-fast`` leaves them out).
    The hook sees the whole session's items: only this folder's are marked."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.browser)


def _missing(what: str) -> None:
    """Outside CI a missing tool skips the browser tests; in CI it fails them."""
    message = f"{what} (run `make browser-deps`)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        _missing("chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed")
    args = list(CHROMIUM_ARGS)
    if hasattr(os, "getuid") and os.getuid() == 0:
        args.append("--no-sandbox")  # chromium's sandbox refuses to run as root
    manager = sync_playwright().start()
    try:
        # launch() gives chromium a fresh temporary --user-data-dir, removed on close
        launched = manager.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        yield launched
        launched.close()
    finally:
        manager.stop()


@pytest.fixture
def context(browser):
    new_context = browser.new_context(viewport={"width": 1200, "height": 1000})
    new_context.set_default_timeout(WAIT_MS)
    yield new_context
    new_context.close()


class BrokerThread:
    """A real broker (``serve``) in its own thread and trio loop, on loopback."""

    def __init__(self, config) -> None:
        self.config = config
        self.handle = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(15) or self.handle is None:
            raise RuntimeError(f"broker did not start: {self._error!r}")

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported by stop() and start
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.handle = await nursery.start(serve, self.config)
            self._ready.set()

    @property
    def port(self) -> int:
        return self.handle.port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def run(self, async_fn, *args):
        return trio.from_thread.run(async_fn, *args, trio_token=self._token)

    def run_sync(self, fn, *args):
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def publish(self, job_id: str, kind: str, data: dict) -> int:
        return self.run(self.handle.publish, job_id, kind, data)

    def evict_user(self, user: str, code: int) -> int:
        """Close every connection of ``user`` with ``code`` (as the broker does to a slow consumer)."""
        def evict() -> int:
            sessions = self.handle.broker.hub.sessions_of(user)
            for session in sessions:
                session.evict(code, "forced by the test", "slow_consumer")
            return len(sessions)
        return self.run_sync(evict)

    def stop(self) -> None:
        """Graceful shutdown (clients get 1001, the store is flushed), then wait for the thread."""
        if self._thread.is_alive() and self._error is None:
            self.run(self.handle.shutdown)
        self._thread.join(15)
        if self._thread.is_alive():
            raise RuntimeError("broker thread did not stop")
        if self._error is not None:
            raise self._error


@pytest.fixture
def start_broker(tmp_path):
    """start_broker(**config sections) -> a running BrokerThread; stopped after the test."""
    started: list[BrokerThread] = []

    def start(port: int = 0, **sections) -> BrokerThread:
        config = make_config(tmp_path, **sections)
        config = config.replace(server={"port": port}, websocket={"heartbeat_interval": 30.0})
        broker = BrokerThread(config)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


def _serve_test_files(route) -> None:
    name = route.request.url.split("/__test__/", 1)[1].split("?", 1)[0]
    files = {path.name: path for path in PAGES.iterdir()}
    files["react-bundle.mjs"] = JS / "build" / "react-bundle.mjs"
    path = files.get(name)
    if path is None or not path.is_file():
        route.fulfill(status=404, body="no such test file")
        return
    content_type = "text/html" if name.endswith(".html") else "text/javascript"
    route.fulfill(status=200, body=path.read_bytes(), headers={"Content-Type": content_type})


@pytest.fixture
def open_page(context):
    """open_page(broker, "client.html"[, in_context]) -> a page of tests/browser/pages served at the
    broker's own origin (so the broker's origin check passes and /client/ imports work)."""

    def open_(broker: BrokerThread, name: str = "client.html", in_context=None):
        page = (in_context or context).new_page()
        page.on("console", lambda message: print(f"[{name}] {message.type}: {message.text}"))
        page.on("pageerror", lambda error: print(f"[{name}] page error: {error}"))
        page.route("**/__test__/**", _serve_test_files)
        page.goto(f"{broker.http}/__test__/{name}")
        page.wait_for_function("window.ready === true")
        return page

    return open_


@pytest.fixture(scope="session")
def node_tools():
    """tests/browser/js/node_modules/.bin, with the React bundle built for the hook test."""
    if shutil.which("node") is None or not (NODE_BIN / "tsc").exists():
        _missing("the npm test tools are not installed")
    bundle = JS / "build" / "react-bundle.mjs"
    entry = JS / "react-entry.mjs"
    stamp = JS / "node_modules" / ".installed"
    newest_input = max(entry.stat().st_mtime, stamp.stat().st_mtime if stamp.exists() else 0)
    if not bundle.exists() or bundle.stat().st_mtime < newest_input:
        subprocess.run(
            [str(NODE_BIN / "esbuild"), str(entry), "--bundle", "--format=esm", f"--outfile={bundle}",
             "--define:process.env.NODE_ENV=\"development\"", "--log-level=warning"],
            check=True, cwd=JS, timeout=120,
        )
    return NODE_BIN

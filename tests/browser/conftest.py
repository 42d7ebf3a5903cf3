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
from pathlib import Path

import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, JS, NODE_BIN, PAGES, WAIT_MS, BrokerThread
from tests.support.helpers import make_config

HERE = Path(__file__).resolve().parent


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

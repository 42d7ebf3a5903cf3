"""What the browser tests (tests/browser/) share besides their fixtures: where chromium,
the pages and the npm tools are, a broker in a thread of its own (:class:`BrokerThread`:
Playwright's sync API owns the test's thread), a JWT for a page, and a wait for a page's
state (never a sleep)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import jwt
import trio

from broker import serve

from .helpers import JWT_SECRET, ROOT

BROWSER_TESTS = ROOT / "tests" / "browser"
PAGES = BROWSER_TESTS / "pages"
JS = BROWSER_TESTS / "js"
NODE_BIN = JS / "node_modules" / ".bin"
ARTIFACTS = BROWSER_TESTS / "artifacts"
WAIT_MS = 10_000
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


def make_jwt(user: str, jobs: list[str] | str = "*", ttl: float = 300) -> str:
    """A JWT for ``user`` (the tests' secret) allowing ``jobs``, valid ``ttl`` seconds."""
    return jwt.encode({"sub": user, "jobs": jobs, "exp": int(time.time() + ttl)}, JWT_SECRET, algorithm="HS256")


def wait(page, expression: str, arg=None, timeout: float = WAIT_MS):
    """Wait until ``expression`` (a JS function, or an expression) is truthy; its value.
    Expressions are made functions: the console page's CSP forbids Playwright's string eval.
    Raises Playwright's TimeoutError after ``timeout`` ms."""
    if not expression.lstrip().startswith(("(", "function", "async")):
        expression = f"() => ({expression})"
    return page.wait_for_function(expression, arg=arg, timeout=timeout).json_value()


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

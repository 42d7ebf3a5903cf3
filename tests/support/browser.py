"""What the browser tests (tests/browser/) share besides their fixtures: where the pages
and the npm tools are, a JWT for a page, and a wait for a page's state (never a sleep)."""

from __future__ import annotations

import time

import jwt

from .helpers import JWT_SECRET, ROOT

BROWSER_TESTS = ROOT / "tests" / "browser"
PAGES = BROWSER_TESTS / "pages"
JS = BROWSER_TESTS / "js"
NODE_BIN = JS / "node_modules" / ".bin"
ARTIFACTS = BROWSER_TESTS / "artifacts"
WAIT_MS = 10_000


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

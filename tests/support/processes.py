"""The ``broker`` command as a user runs it: a finished run (:func:`broker_cmd` with our
environment, :func:`cli` with a fresh shell's, :func:`clean_env`) or a started server's
log up to the line saying it listens (:func:`wait_listening`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio


def broker_cmd(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``python -m broker ARGS`` to completion (60 s at most) with ``env`` added to ours."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "broker", *args], capture_output=True, text=True,
                          env=full_env, timeout=60, **kwargs)


async def wait_listening(process: subprocess.Popen[str]) -> list[str]:
    """The broker's log lines up to the one saying it listens (then health answers).
    Fails after 20 s, or at once with the log if the broker exited."""
    lines: list[str] = []
    with trio.fail_after(20):
        while not (lines and "broker listening on" in lines[-1]):
            assert process.stderr is not None
            line = await trio.to_thread.run_sync(process.stderr.readline, abandon_on_cancel=True)
            assert line, "the broker exited: " + "".join(lines)
            lines.append(line)
    return lines


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no broker settings exported."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("BROKER_") and name not in ("PORT", "HOST", "WS_AUTH_TOKEN")}
    return {**env, **extra}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=60, input=stdin)

"""``broker serve --dev`` (what ``make run`` runs) and the CLI beside it, as a newcomer
uses them: real processes, a folder with config.toml, nothing exported.

The development broker prints a banner (URLs, development tokens, where data goes),
listens on loopback, admits pages on loopback origins, lets a plain JWT join jobs and
chat, and leaves .broker-dev.env for ``broker token/publish/groups`` in that folder.
``broker serve`` refuses the publicly known development secrets on a public address."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
import trio
import trio_websocket

from broker.config.dev import DEV_FILE, DEV_SECRETS
from tests.support.helpers import ROOT, recv_json, recv_until
from tests.support.processes import clean_env, cli
from tests.support.services import free_port

BANNER_END = "  data "  # the banner's last row (notes may follow on the next lines)


def checkout(tmp_path: Path) -> Path:
    """A folder that looks like the checkout: config.toml and nothing else."""
    folder = tmp_path / "checkout"
    folder.mkdir()
    shutil.copy(ROOT / "config.toml", folder / "config.toml")
    return folder


async def read_banner(process: subprocess.Popen[str]) -> list[str]:
    """The development banner's lines (stdout), up to its data row and any notes after it."""
    lines: list[str] = []
    with trio.fail_after(30):
        while not (lines and lines[-1].startswith(BANNER_END)):
            line = await trio.to_thread.run_sync(process.stdout.readline, abandon_on_cancel=True)  # type: ignore[union-attr]
            assert line, "the broker exited: " + "".join(lines)
            lines.append(line.rstrip("\n"))
    return lines


async def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    assert await trio.to_thread.run_sync(lambda: process.wait(timeout=20)) == 0


@pytest.mark.slow  # processes
async def test_dev_broker_banner_and_the_cli_beside_it(tmp_path):
    folder = checkout(tmp_path)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "broker", "serve", "--config", "config.toml", "--dev"],
                               cwd=folder, env=clean_env(PORT=str(port)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        banner = "\n".join(await read_banner(process))
        base = f"http://127.0.0.1:{port}"
        for expected in (f"ws://127.0.0.1:{port}/ws", f"{base}/console", f"{base}/health", f"{base}/metrics",
                         "for development only", DEV_SECRETS["WS_AUTH_TOKEN"], DEV_SECRETS["BROKER_API_KEY"],
                         DEV_SECRETS["BROKER_JWT_SECRET"], "http://localhost:*",
                         f"SQLite {folder / 'data' / 'broker.sqlite3'}", str(folder / DEV_FILE)):
            assert expected in banner, (expected, banner)
        assert (folder / DEV_FILE).stat().st_mode & 0o077 == 0  # the secrets file is the owner's only

        # the CLI in that folder, nothing exported (not even PORT)
        token = cli("token", "--sub", "alice", cwd=folder)
        assert token.returncode == 0, token.stderr
        claims = jwt.decode(token.stdout.strip(), DEV_SECRETS["BROKER_JWT_SECRET"], algorithms=["HS256"])
        assert claims["sub"] == "alice" and "jobs" not in claims
        alice = token.stdout.strip()
        bob = cli("token", "--sub", "bob", cwd=folder).stdout.strip()

        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?token={alice}") as ws:
            assert (await recv_json(ws))["userId"] == "alice"
            await ws.send_message('{"type":"join_job","jobId":"job-123"}')  # no jobs claim: development allows
            assert (await recv_until(ws, lambda m: m.get("type") in ("joined", "error")))["type"] == "joined"
            published = await trio.to_thread.run_sync(
                lambda: cli("publish", "job-123", "--status", "RUNNING", cwd=folder))
            assert published.returncode == 0, published.stderr
            assert json.loads(published.stdout)["seq"] == 1
            event = await recv_until(ws, lambda m: m.get("type") == "job_status")
            assert event["data"]["status"] == "RUNNING"
            await ws.send_message(json.dumps({"chatType": 2, "recvId": "bob", "content": "hi", "clientMsgId": "c1"}))
            assert (await recv_until(ws, lambda m: m.get("type") in ("chat_ack", "error")))["type"] == "chat_ack"
        assert bob

        created = cli("groups", "create", "team", "--member", "alice", "--member", "bob", cwd=folder)
        assert created.returncode == 0, created.stderr
        mine = cli("groups", "of", "alice", cwd=folder)
        assert json.loads(mine.stdout)["groups"] == ["team"]
        client = await trio.to_thread.run_sync(lambda: cli("client", f"ws://127.0.0.1:{port}/ws", cwd=folder,
                                                           stdin='{"type":"ping"}\n'))
        assert '"userId":"ws-client"' in client.stdout and '"type":"pong"' in client.stdout, client.stdout

        # a page on a Vite dev server's origin may connect to the development broker
        async with trio_websocket.open_websocket_url(
                f"ws://127.0.0.1:{port}/ws?token={alice}",
                extra_headers=[("Origin", "http://localhost:5173")]) as ws:
            assert (await recv_json(ws))["type"] == "connection_established"
        await stop(process)
        assert not (folder / DEV_FILE).exists()  # removed when the broker stops: no stale port or secrets
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.slow  # processes
def test_cli_errors_name_the_missing_flag_or_variable(tmp_path):
    folder = checkout(tmp_path)  # no broker ran here: no .broker-dev.env
    token = cli("token", "--sub", "alice", cwd=folder)
    assert token.returncode == 2
    assert "--secret" in token.stderr and "BROKER_JWT_SECRET" in token.stderr and "make run" in token.stderr
    publish = cli("publish", "job-1", "--status", "X", cwd=folder)
    assert publish.returncode == 2
    assert "--api-key" in publish.stderr and "BROKER_API_KEY" in publish.stderr
    groups = cli("groups", "of", "alice", cwd=folder)
    assert groups.returncode == 2 and "BROKER_API_KEY" in groups.stderr
    unreachable = cli("publish", "job-1", "--status", "X", cwd=folder,
                      env=clean_env(BROKER_API_KEY="key-12345678", PORT=str(free_port())))
    assert unreachable.returncode == 1
    assert "cannot reach" in unreachable.stderr and "--url" in unreachable.stderr and "PORT" in unreachable.stderr


@pytest.mark.slow  # processes
async def test_serve_refuses_development_secrets_on_a_public_address(tmp_path):
    folder = checkout(tmp_path)
    port = free_port()
    env = clean_env(PORT=str(port), HOST="0.0.0.0", **DEV_SECRETS)
    refused = cli("serve", "--config", "config.toml", cwd=folder, env=env)
    assert refused.returncode == 2
    for expected in ("WS_AUTH_TOKEN", "BROKER_API_KEY", "BROKER_JWT_SECRET", "--allow-dev-secrets",
                     "BROKER_ALLOW_DEV_SECRETS=1", "HOST=127.0.0.1"):
        assert expected in refused.stderr, (expected, refused.stderr)
    dev_public = cli("serve", "--config", "config.toml", "--dev", cwd=folder, env=clean_env(PORT=str(port),
                                                                                            HOST="0.0.0.0"))
    assert dev_public.returncode == 2 and "--allow-dev-secrets" in dev_public.stderr
    # knowingly: the override starts it
    process = subprocess.Popen([sys.executable, "-m", "broker", "serve", "--config", "config.toml"], cwd=folder,
                               env={**env, "BROKER_ALLOW_DEV_SECRETS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        banner = "\n".join(await read_banner(process))
        assert DEV_SECRETS["WS_AUTH_TOKEN"] not in banner  # secrets are printed in development only
        assert "1 static token(s)" in banner
        await stop(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.slow  # processes
async def test_open_file_limit_said_once_with_what_to_do(tmp_path):
    """Under a hard open-file limit below what [limits] allows: development fits the
    connection limit to it and says so in the banner (no warning); production warns once
    with the setting and the number."""
    folder = checkout(tmp_path)
    command = f"ulimit -n 4096 && exec {sys.executable} -m broker serve --config config.toml"
    for dev in (True, False):
        process = subprocess.Popen(["bash", "-c", command + (" --dev" if dev else "")], cwd=folder,
                                   env=clean_env(PORT=str(free_port()), HOST="127.0.0.1"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            banner = "\n".join(await read_banner(process))
            if dev:
                banner += await trio.to_thread.run_sync(process.stdout.readline)  # type: ignore[union-attr]
                assert "open files: limit 4096, so at most 3008 WebSocket connections" in banner, banner
            await stop(process)
            log = process.stderr.read()  # type: ignore[union-attr]
            warnings = [line for line in log.splitlines() if "open-file limit" in line]
            if dev:
                assert warnings == [], log
            else:
                assert len(warnings) == 1 and "BROKER_LIMITS_MAX_CONNECTIONS" in warnings[0] \
                    and "by 16992" in warnings[0], log
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.mark.slow  # processes
def test_make_run_installs_the_runtime_only():
    """``make run`` installs the project without extras; ``make test`` (setup) the test extras."""
    # as a user's shell would be, also under `make test`: no parent make's level or flags
    # (a nested make prints "Entering/Leaving directory" lines)
    env = {k: v for k, v in clean_env().items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    run = subprocess.run(["make", "--no-print-directory", "-n", "run", "VENV=/nonexistent/venv"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "/nonexistent/venv/bin/python -m pip install --quiet -e .;" in run.stdout, run.stdout
    assert "[test]" not in run.stdout and "[cluster]" not in run.stdout
    assert run.stdout.splitlines()[-1] == "/nonexistent/venv/bin/broker serve --config config.toml --dev"
    setup = subprocess.run(["make", "--no-print-directory", "-n", "setup", "VENV=/nonexistent/venv"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=30)
    assert "-e '.[test]'" in setup.stdout

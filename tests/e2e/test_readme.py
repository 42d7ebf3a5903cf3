"""The README as written: the embedding example runs, and the quick start works for a
newcomer (make run, then the CLI, a Python client and a browser page on another origin,
from another terminal with nothing exported)."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
import trio

from tests.support.helpers import ROOT
from tests.support.services import free_port


@pytest.mark.slow
def test_embedding_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- embed-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 RUNNING"
    assert (tmp_path / "data" / "embedded.sqlite3").exists()


# -- the quick start, walked as written ---------------------------------------------------


def _block(readme: str, marker: str, language: str = "sh") -> str:
    return re.search(rf"<!-- {marker} -->\n```{language}\n(.*?)```", readme, re.S).group(1)


def _shell_env() -> dict[str, str]:
    """A fresh terminal in the checkout: nothing of the broker's exported."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("BROKER_") and name not in ("PORT", "HOST", "WS_AUTH_TOKEN", "VIRTUAL_ENV")}
    env["PATH"] = ":".join(part for part in env.get("PATH", "").split(":") if ".venv" not in part)
    return {**env, "PYTHONUNBUFFERED": "1"}


async def _until(path: Path, text: str, process: subprocess.Popen | None = None) -> str:
    """The file's content once it contains ``text`` (polled: another process writes it)."""
    with trio.fail_after(30):
        while text not in (content := path.read_text() if path.exists() else ""):
            assert process is None or process.poll() is None, content
            await trio.sleep(0.05)
    return content


@pytest.mark.slow  # make run / a child interpreter
async def test_quick_start_as_written(tmp_path):
    """`make run`, then in another terminal of the checkout with nothing exported: the CLI
    block, the Python client block, and the browser snippet on another origin. Only the
    port (PORT, as the README allows) and the data file (kept out of the checkout) differ."""
    readme = (ROOT / "README.md").read_text()
    port = free_port()
    make_log = tmp_path / "make-run.log"
    with open(make_log, "w") as log:
        make = subprocess.Popen(["make", "run"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**_shell_env(), "PORT": str(port),
                                     "BROKER_DB_PATH": str(tmp_path / "broker.sqlite3")},
                                start_new_session=True)
    try:
        banner = await _until(make_log, "  data ", make)
        assert f"console     http://127.0.0.1:{port}/console" in banner and "for development only" in banner
        assert (ROOT / ".broker-dev.env").exists()

        # the CLI block, one command at a time, in a fresh shell (no PORT)
        commands = [line for line in _block(readme, "quickstart-cli").replace("8080", str(port)).splitlines()]
        script = "set -e\n" + "".join(f"{command}\necho '@@@'\n" for command in commands)
        ran = await trio.to_thread.run_sync(lambda: subprocess.run(
            ["bash", "-c", script], cwd=ROOT, env=_shell_env(), capture_output=True, text=True, timeout=120))
        assert ran.returncode == 0, ran.stdout + ran.stderr
        outputs = [out.strip() for out in ran.stdout.split("@@@")][:len(commands)]
        by_command = {command.split("#")[0].strip(): out for command, out in zip(commands, outputs, strict=True)}
        assert json.loads(by_command[f"curl localhost:{port}/health"]) == {"status": "ok"}
        assert json.loads(by_command[f"curl localhost:{port}/"])["endpoints"]["console"] == "/console"
        alice = by_command["broker token --sub alice"]
        assert jwt.decode(alice, options={"verify_signature": False})["sub"] == "alice"
        assert json.loads(by_command["broker publish job-123 --status RUNNING"])["seq"] == 1
        assert json.loads(by_command["broker groups of alice"])["groups"] == ["team"]

        # the client block: the client first, then (once it has joined) the publishes
        client_part, publish_part = _block(readme, "quickstart-client").replace("8080", str(port)).split("EOF\n\n")
        client_out = tmp_path / "client.out"
        starter = f". .venv/bin/activate\n{client_part}EOF\necho $! > {tmp_path / 'client.pid'}\n"
        with open(client_out, "w") as out:
            subprocess.run(["bash", "-c", starter], cwd=ROOT, env=_shell_env(), stdout=out, stderr=subprocess.STDOUT,
                           timeout=60, check=True)
        client_pid = int(await _until(tmp_path / "client.pid", "\n"))
        try:
            await _until(client_out, '"type":"joined"')
            published = await trio.to_thread.run_sync(lambda: subprocess.run(
                ["bash", "-c", f"set -e\n. .venv/bin/activate\n{publish_part}"], cwd=ROOT, env=_shell_env(),
                capture_output=True, text=True, timeout=60))
            assert published.returncode == 0, published.stderr
            seen = await _until(client_out, '"seq":3')
        finally:
            os.kill(client_pid, signal.SIGTERM)
        frames = [json.loads(line) for line in seen.splitlines() if line.startswith("{")]
        assert any(frame["type"] == "offline_complete" for frame in frames)  # its place among them varies
        frames = [frame for frame in frames if frame["type"] != "offline_complete"]
        kinds = [(frame["type"], frame.get("seq")) for frame in frames]
        assert kinds[:5] == [("connection_established", None), ("job_status", 1), ("joined", 1),
                             ("job_status", 2), ("job_status", 3)], kinds
        assert frames[3]["data"]["currentStage"] == "OUTLINE"

        # the browser snippet, on a page of another origin (a Vite dev server's), with alice's token
        html = _block(readme, "browser-dev-example", "html").replace("8080", str(port)).replace(
            "PASTE `broker token --sub alice`", alice)
        logged = await trio.to_thread.run_sync(_run_page, html)
        assert logged == {"status": "connected", "console": ["COMPLETED"]}
    finally:
        os.killpg(make.pid, signal.SIGTERM)  # make and the broker it runs (as Ctrl-C would)
        await trio.to_thread.run_sync(lambda: make.wait(timeout=30))
    assert not (ROOT / ".broker-dev.env").exists()


def _run_page(html: str) -> dict:
    """Open ``html`` as http://localhost:5173/ in chromium; its status once connected, and
    what it logs after an event is published with the CLI."""
    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (make browser-deps)")
    from playwright.sync_api import sync_playwright

    args = CHROMIUM_ARGS + (["--no-sandbox"] if os.getuid() == 0 else [])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.route("http://localhost:5173/**", lambda route: route.fulfill(
                status=200, body=f"<!doctype html>{html}", headers={"Content-Type": "text/html"}))
            page.goto("http://localhost:5173/")
            page.wait_for_function("document.getElementById('status').textContent === 'connected'")
            status = page.text_content("#status")
            # a new event, published from the terminal: the page logs its status
            with page.expect_console_message(lambda message: message.text == "COMPLETED") as message:
                published = subprocess.run(
                    ["bash", "-c", ". .venv/bin/activate\nbroker publish job-123 --status COMPLETED"],
                    cwd=ROOT, env=_shell_env(), capture_output=True, text=True, timeout=60)
                assert published.returncode == 0, published.stderr
            return {"status": status, "console": [message.value.text]}
        finally:
            browser.close()


@pytest.mark.slow  # make run / a child interpreter
async def test_backend_example_runs(tmp_path, nursery):
    """The "Your backend" example, against a real broker (its own process runs it)."""
    import os

    import trio

    from broker import serve
    from tests.support.helpers import API_KEY, make_config

    broker = await nursery.start(serve, make_config(tmp_path))
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- backend-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    env = {**os.environ, "BROKER_URL": f"http://127.0.0.1:{broker.port}", "BROKER_API_KEY": API_KEY}
    result = await trio.run_process([sys.executable, "-c", code], capture_stdout=True, capture_stderr=True,
                                    check=False, env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == ["sent 1 p:2:42:system", "banned True"]
    assert not broker.broker.control.banned("42")  # lifted at the end

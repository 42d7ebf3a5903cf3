"""The wheel a user builds from the repository (or the container image's build stage,
from what its Dockerfile copies) is complete: the broker, the browser files, the default config.toml (which ``broker config --print-default`` prints from the
wheel itself), LICENSE and CHANGELOG. README and docs/CLUSTER.md say the same about
``make cluster``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.helpers import ROOT


def build_context(tmp_path: Path) -> Path:
    """What the Dockerfile's build stage copies from the checkout, and nothing else: the
    wheel built from it must be as complete as one built from the checkout."""
    source = tmp_path / "src"
    source.mkdir()
    build_stage = (ROOT / "Dockerfile").read_text().split("\nFROM ", 2)[1]
    for line in build_stage.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            *names, _destination = line.split()[1:]
            for name in names:
                origin = ROOT / name
                if origin.is_dir():
                    shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(origin, source / name)
    return source


@pytest.mark.slow  # builds the wheel
def test_the_wheel_is_complete(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
                            str(build_context(tmp_path))], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("trio_broker-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert archive.read("broker/config/default.toml").decode() == (ROOT / "config.toml").read_text()
        assert archive.read("broker/CHANGELOG.md").decode() == (ROOT / "CHANGELOG.md").read_text()
        (license_file,) = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_file).decode().startswith("MIT License")
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
    for expected in ("broker/cli.py", "broker/static/client/broker-client.mjs", "broker/static/console/index.html",
                     "broker/static/client/adapters/wx.mjs", "actors/__init__.py"):
        assert expected in names, expected
    assert not any(name.startswith("tests/") for name in names)
    # broker config --print-default from the wheel (its code first on the path), not the checkout
    printed = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import broker.cli as c; "
                               "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
                               "sys.exit(c.main(['config', '--print-default']))", str(wheel)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == (ROOT / "config.toml").read_text()


def test_readme_and_cluster_doc_agree_on_make_cluster():
    def parts(text: str) -> list[str]:
        found = re.search(r"`make cluster` starts a demo(?: on one machine)?\s*\(([^)]*)\)", text)
        assert found, "no sentence saying what make cluster starts"
        return [part.strip() for part in " ".join(found.group(1).split()).split(",")]

    readme = parts((ROOT / "README.md").read_text())
    cluster = parts((ROOT / "docs" / "CLUSTER.md").read_text())
    assert [p.split()[0] for p in readme] == [p.split()[0] for p in cluster] == ["Redis", "PostgreSQL", "three",
                                                                                  "nginx"]
    demo = (ROOT / "tests" / "demo_cluster.py").read_text()
    assert "RedisServer(" in demo and "postgres()" in demo and "nginx_front(" in demo

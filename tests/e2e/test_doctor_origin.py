"""``broker doctor --origin``: the upgrade as a page on that origin makes it; a refusal
names the setting (and variable) that admits the page."""

from __future__ import annotations

import pytest
import trio

from broker import serve
from broker.tools.doctor import diagnose
from tests.support.helpers import make_config
from tests.support.processes import clean_env, cli


@pytest.mark.slow  # the broker command
async def test_doctor_names_the_origin_fix(nursery, tmp_path):
    broker = await nursery.start(serve, make_config(tmp_path))
    url = f"ws://127.0.0.1:{broker.port}/ws"
    refused = await diagnose(url, token="demo-token", origin="http://localhost:5173")
    upgrade = next(step for step in refused.steps if step.name == "upgrade")
    assert not refused.ok and not upgrade.ok and "403" in upgrade.detail
    assert '"http://localhost:5173"' in upgrade.fix and "[limits] allowed_origins" in upgrade.fix
    assert "BROKER_LIMITS_ALLOWED_ORIGINS=http://localhost:5173" in upgrade.fix

    same_origin = await diagnose(url, token="demo-token")  # no Origin header: not a browser, admitted
    assert same_origin.ok, same_origin.render()

    result = await trio.to_thread.run_sync(lambda: cli("doctor", url, "--token", "demo-token", "--origin",
                                                       "http://localhost:5173", cwd=tmp_path, env=clean_env()))
    assert result.returncode == 1 and "BROKER_LIMITS_ALLOWED_ORIGINS=http://localhost:5173" in result.stdout


@pytest.mark.slow  # the broker command
async def test_doctor_reports_an_allowed_origin(nursery, tmp_path):
    broker = await nursery.start(serve, make_config(tmp_path, limits={"allowed_origins": ("http://localhost:*",)}))
    report = await diagnose(f"ws://127.0.0.1:{broker.port}/ws", token="demo-token", origin="http://localhost:5173")
    assert report.ok, report.render()
    assert any(step.name == "origin" and "http://localhost:5173" in step.detail for step in report.steps)

"""`broker doctor` and `broker client` against the broker's own failure modes."""

import datetime as dt

import pytest
import trio
import trustme

from broker import serve
from broker.auth.tokens import issue_token
from broker.tools.doctor import diagnose
from tests.support.helpers import JWT_SECRET, make_config
from tests.support.processes import broker_cmd
from tests.support.services import NGINX, Nginx, free_port


def steps(report):
    return {step.name: step for step in report.steps}


async def test_healthy_broker_passes_every_step(broker):
    report = await diagnose(f"ws://localhost:{broker.port}/ws", token="demo-token")
    assert report.ok, report.render()
    assert [s.name for s in report.steps] == ["dns", "tcp", "upgrade", "auth", "heartbeat"]
    assert "ping/pong" in steps(report)["heartbeat"].detail and "30s" in steps(report)["heartbeat"].fix


async def test_wrong_path(broker):
    report = await diagnose(f"ws://127.0.0.1:{broker.port}/socket", token="demo-token")
    upgrade = steps(report)["upgrade"]
    assert not upgrade.ok and "HTTP 404" in upgrade.detail and "/ws" in upgrade.fix


async def test_nothing_listening():
    report = await diagnose(f"ws://127.0.0.1:{free_port()}/ws")
    tcp = steps(report)["tcp"]
    assert not tcp.ok and "nothing is listening" in tcp.detail and "broker running" in tcp.fix


async def test_unknown_host():
    report = await diagnose("ws://no-such-host.invalid/ws")
    assert not steps(report)["dns"].ok and "cannot resolve" in steps(report)["dns"].detail


async def test_bad_token_and_missing_token(broker):
    report = await diagnose(f"ws://127.0.0.1:{broker.port}/ws", token=issue_token(JWT_SECRET, "u", -600))
    auth = steps(report)["auth"]
    assert not auth.ok and "1008" in auth.detail and "new one" in auth.fix
    report = await diagnose(f"ws://127.0.0.1:{broker.port}/ws")
    assert not steps(report)["auth"].ok and "--token" in steps(report)["auth"].fix


async def test_plain_ws_to_a_tls_port_and_wss_to_a_plain_port(broker, nursery, tmp_path):
    report = await diagnose(f"wss://127.0.0.1:{broker.port}/ws", token="demo-token")
    assert not steps(report)["tls"].ok and "plain HTTP" in steps(report)["tls"].detail


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


async def start_tls_broker(nursery, tmp_path, ca, **cert_options):
    cert = ca.issue_cert("localhost", **cert_options)
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = make_config(tmp_path, server={"tls": {"cert_file": str(tmp_path / "cert.pem"),
                                                   "key_file": str(tmp_path / "key.pem")}})
    return await nursery.start(serve, config)


async def test_tls_checks(nursery, tmp_path, ca):
    broker = await start_tls_broker(nursery, tmp_path, ca)
    untrusted = await diagnose(f"wss://localhost:{broker.port}/ws", token="demo-token")
    tls = steps(untrusted)["tls"]
    assert not tls.ok and "not trusted" in tls.detail and "--ca" in tls.fix
    trusted = await diagnose(f"wss://localhost:{broker.port}/ws", token="demo-token", ca_file=str(tmp_path / "ca.pem"))
    assert trusted.ok, trusted.render()
    assert "expires in" in steps(trusted)["tls"].detail
    wrong_name = await diagnose(f"wss://127.0.0.1:{broker.port}/ws", token="demo-token", ca_file=str(tmp_path / "ca.pem"))
    assert not steps(wrong_name)["tls"].ok and "not for 127.0.0.1" in steps(wrong_name)["tls"].detail
    plain = await diagnose(f"ws://localhost:{broker.port}/ws", token="demo-token")
    assert not plain.ok and "wss://" in plain.steps[-1].fix


async def test_expired_certificate(nursery, tmp_path, ca):
    now = dt.datetime.now(dt.UTC)
    broker = await start_tls_broker(nursery, tmp_path, ca, not_before=now - dt.timedelta(days=30),
                                    not_after=now - dt.timedelta(days=1))
    report = await diagnose(f"wss://localhost:{broker.port}/ws", ca_file=str(tmp_path / "ca.pem"))
    tls = steps(report)["tls"]
    assert not tls.ok and "expired" in tls.detail and "renew" in tls.fix


@pytest.mark.skipif(NGINX is None, reason="nginx not installed")
async def test_proxy_that_strips_upgrade(broker, tmp_path):
    nginx = Nginx(tmp_path, broker.port)
    conf = nginx.prefix / "nginx.conf"
    text = conf.read_text()
    for line in ("proxy_set_header Upgrade $http_upgrade;", "proxy_set_header Connection $connection_upgrade;"):
        text = text.replace(line, "")
    conf.write_text(text)
    async with nginx:
        report = await diagnose(f"ws://127.0.0.1:{nginx.port}/ws", token="demo-token")
    upgrade = steps(report)["upgrade"]
    assert not upgrade.ok, report.render()
    assert "stripped" in upgrade.detail or "rejected" in upgrade.detail
    assert "proxy_set_header Upgrade" in upgrade.fix


@pytest.mark.slow
async def test_cli_client_sends_lines_prints_frames_and_the_close(broker):
    url = f"ws://127.0.0.1:{broker.port}/ws"
    result = await trio.to_thread.run_sync(lambda: broker_cmd("client", url, "--token", "demo-token",
                                                              input='{"type":"ping"}\nnot json\n'))
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "connected to" in lines[0]
    assert any('< {"type":"connection_established"' in line for line in lines)
    assert any('< {"type":"pong"' in line for line in lines)
    assert any('"code":"BAD_REQUEST"' in line for line in lines)
    assert lines[-1].endswith("closed 1000 (normal close) end of input")
    assert all(line[2] == ":" and line[8] == "." for line in lines)  # HH:MM:SS.mmm timestamps
    refused = await trio.to_thread.run_sync(lambda: broker_cmd("client", url, "--token", "bad-token", input=""))
    assert refused.returncode == 1 and "closed 1008 (authentication failed / policy)" in refused.stdout


@pytest.mark.slow
async def test_cli_doctor_exit_codes(broker):
    ok = await trio.to_thread.run_sync(lambda: broker_cmd("doctor", f"ws://127.0.0.1:{broker.port}/ws", "--token", "demo-token",
                                                           input=""))
    assert ok.returncode == 0 and "all checks passed" in ok.stdout
    bad = await trio.to_thread.run_sync(lambda: broker_cmd("doctor", f"ws://127.0.0.1:{broker.port}/nope", input=""))
    assert bad.returncode == 1 and "FAIL upgrade" in bad.stdout and "fix:" in bad.stdout

"""``broker check-config`` tells a newcomer what will go wrong before ``broker serve``:
nothing can authenticate, a ``BROKER_*`` variable with a typo, an unreachable store or
Redis (NOT OK and exit 1, never "config OK"). ``broker config --print-default`` is the
reference of every option."""

from __future__ import annotations

import pytest

from broker.config.loader import environment_keys, unknown_environment
from tests.support.helpers import ROOT
from tests.support.processes import clean_env, cli
from tests.support.services import free_port


@pytest.mark.slow  # the broker command
def test_nothing_can_authenticate_warns_and_fails_strict(tmp_path):
    plain = cli("check-config", "--config", str(ROOT / "config.toml"), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "warning: nothing can authenticate" in plain.stdout and "WS_AUTH_TOKEN" in plain.stdout
    assert plain.stdout.strip().splitlines()[-1].startswith("config OK")
    strict = cli("check-config", "--config", str(ROOT / "config.toml"), "--strict", cwd=tmp_path)
    assert strict.returncode == 1 and "config OK" not in strict.stdout + strict.stderr
    assert "config NOT OK (--strict)" in strict.stderr
    fine = cli("check-config", "--config", str(ROOT / "config.toml"), "--strict", cwd=tmp_path,
               env=clean_env(WS_AUTH_TOKEN="a-static-token-1"))
    assert fine.returncode == 0 and "warning" not in fine.stdout, fine.stdout


@pytest.mark.slow  # the broker command
def test_a_misspelt_variable_is_reported_with_the_closest_key(tmp_path):
    result = cli("check-config", "--config", str(ROOT / "config.toml"), cwd=tmp_path,
                 env=clean_env(WS_AUTH_TOKEN="a-static-token-1", BROKER_SERVER_PROT="9000"))
    assert "BROKER_SERVER_PROT matches no configuration key" in result.stdout
    assert "did you mean BROKER_SERVER_PORT ([server] port)?" in result.stdout
    strict = cli("check-config", "--config", str(ROOT / "config.toml"), "--strict", cwd=tmp_path,
                 env=clean_env(WS_AUTH_TOKEN="a-static-token-1", BROKER_SERVER_PROT="9000"))
    assert strict.returncode == 1


def test_every_variable_the_loader_reads_is_known():
    known = environment_keys()
    assert known["PORT"] == "[server] port" and known["BROKER_SERVER_TLS_CERT_FILE"] == "[server.tls] cert_file"
    environ = {name: "x" for name in known} | {"BROKER_TOKEN": "t", "BROKER_ALLOW_DEV_SECRETS": "1"}
    assert unknown_environment(environ) == []
    assert unknown_environment({"BROKER_LIMITS_ALLOWED_ORIGIN": "x"}) == [
        ("BROKER_LIMITS_ALLOWED_ORIGIN", "BROKER_LIMITS_ALLOWED_ORIGINS")]


@pytest.mark.slow  # the broker command
def test_unreachable_store_or_redis_is_not_ok(tmp_path):
    down_pg = f"postgresql://broker:hunter2@127.0.0.1:{free_port()}/broker"
    env = clean_env(WS_AUTH_TOKEN="a-static-token-1", BROKER_STORE_URL=down_pg, BROKER_STORE_CONNECT_TIMEOUT="1")
    store = cli("check-config", "--config", str(ROOT / "config.toml"), cwd=tmp_path, env=env)
    assert store.returncode == 1
    assert "config OK" not in store.stdout + store.stderr and "config NOT OK" in store.stderr
    assert "UNREACHABLE" in store.stderr and "BROKER_STORE_URL" in store.stderr and "hunter2" not in store.stderr
    redis = cli("check-config", "--config", str(ROOT / "config.toml"), cwd=tmp_path,
                env={**env, "BROKER_CLUSTER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                     "BROKER_CLUSTER_CONNECT_TIMEOUT": "0.5"})
    assert redis.returncode == 1 and "config OK" not in redis.stdout + redis.stderr
    assert "Redis UNREACHABLE" in redis.stderr and "BROKER_CLUSTER_REDIS_URL" in redis.stderr


@pytest.mark.slow  # the broker command
def test_config_print_default_is_the_shipped_config():
    result = cli("config", "--print-default", cwd=ROOT)
    assert result.returncode == 0
    assert result.stdout == (ROOT / "config.toml").read_text()

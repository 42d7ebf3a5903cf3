"""``[cluster]`` with Redis through Sentinel: the keys, their environment variables, the
checks (one way to reach Redis, host:port entries) and secrets kept out of error text."""

import pytest

from broker.config.loader import ConfigError, load_config
from tests.support.helpers import make_config

STORE = {"BROKER_STORE_URL": "postgresql://broker@db/broker"}


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_sentinels_and_master_name_from_environment_variables(tmp_path):
    config = load_config(None, environ={**STORE, "BROKER_CLUSTER_REDIS_SENTINELS": "s1:26379, s2:26380,[::1]:26381",
                                        "BROKER_CLUSTER_REDIS_MASTER_NAME": "mymaster",
                                        "BROKER_CLUSTER_SENTINEL_PASSWORD": "s3cret-sentinel",
                                        "BROKER_CLUSTER_REDIS_PASSWORD": "s3cret-master",
                                        "BROKER_CLUSTER_REDIS_DB": "2", "BROKER_CLUSTER_REDIS_TLS": "true"})
    cluster = config.cluster
    assert cluster.redis_sentinels == ("s1:26379", "s2:26380", "[::1]:26381")
    assert cluster.redis_master_name == "mymaster" and cluster.redis_url == ""
    assert cluster.sentinel_password == "s3cret-sentinel" and cluster.redis_password == "s3cret-master"
    assert cluster.redis_db == 2 and cluster.redis_tls is True and cluster.sentinel_tls is False
    assert cluster.enabled and cluster.uses_sentinel


def test_sentinels_from_the_file(tmp_path):
    path = write(tmp_path, "[cluster]\nredis_sentinels = ['10.0.0.1:26379', '10.0.0.2:26379']\n"
                           "redis_master_name = 'broker'\n")
    config = load_config(path, environ=STORE)
    assert config.cluster.redis_sentinels == ("10.0.0.1:26379", "10.0.0.2:26379") and config.cluster.enabled


def test_neither_way_is_one_node_and_redis_url_alone_is_a_cluster():
    assert not load_config(None, environ={}).cluster.enabled
    by_url = load_config(None, environ={**STORE, "BROKER_CLUSTER_REDIS_URL": "redis://r:6379/0"}).cluster
    assert by_url.enabled and not by_url.uses_sentinel


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"BROKER_CLUSTER_REDIS_URL": "redis://r:6379/0", "BROKER_CLUSTER_REDIS_SENTINELS": "s:26379",
          "BROKER_CLUSTER_REDIS_MASTER_NAME": "m"}, "set either redis_url"),
        ({"BROKER_CLUSTER_REDIS_URL": "redis://r:6379/0", "BROKER_CLUSTER_REDIS_MASTER_NAME": "m"},
         "set either redis_url"),
        ({"BROKER_CLUSTER_REDIS_SENTINELS": "s:26379"}, "redis_master_name (BROKER_CLUSTER_REDIS_MASTER_NAME) is missing"),
        ({"BROKER_CLUSTER_REDIS_MASTER_NAME": "m"}, "redis_sentinels (BROKER_CLUSTER_REDIS_SENTINELS) is missing"),
        ({"BROKER_CLUSTER_REDIS_SENTINELS": "s", "BROKER_CLUSTER_REDIS_MASTER_NAME": "m"}, "got 's'"),
        ({"BROKER_CLUSTER_REDIS_SENTINELS": "s:0", "BROKER_CLUSTER_REDIS_MASTER_NAME": "m"}, "got 's:0'"),
        ({"BROKER_CLUSTER_REDIS_SENTINELS": ":26379", "BROKER_CLUSTER_REDIS_MASTER_NAME": "m"}, "got ':26379'"),
        ({"BROKER_CLUSTER_REDIS_SENTINELS": "s:port", "BROKER_CLUSTER_REDIS_MASTER_NAME": "m"}, "got 's:port'"),
        ({"BROKER_CLUSTER_REDIS_URL": "redis://r:6379/0", "BROKER_CLUSTER_REDIS_DB": "3"},
         "[cluster] redis_db: only with redis_sentinels"),
    ],
)
def test_one_way_to_redis_and_well_formed_sentinels(env, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={**STORE, **env})
    assert fragment in str(info.value)


def test_passwords_never_appear_in_errors(tmp_path):
    # a password given the redis_url way: refused, naming the key only
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={**STORE, "BROKER_CLUSTER_REDIS_URL": "redis://r:6379/0",
                                   "BROKER_CLUSTER_REDIS_PASSWORD": "pw-in-the-wrong-place",
                                   "BROKER_CLUSTER_SENTINEL_PASSWORD": "other-pw-wrong-place"})
    assert "redis_password" in str(info.value) and "sentinel_password" in str(info.value)
    assert "pw-in-the-wrong-place" not in str(info.value) and "other-pw-wrong-place" not in str(info.value)
    # a password of the wrong type: shown as ***
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[cluster]\nsentinel_password = 987654321\n"), environ=STORE)
    assert "987654321" not in str(info.value) and "***" in str(info.value)
    # another key's error while passwords are set: they stay out of it
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={**STORE, "BROKER_CLUSTER_REDIS_SENTINELS": "bad entry",
                                   "BROKER_CLUSTER_REDIS_MASTER_NAME": "m",
                                   "BROKER_CLUSTER_SENTINEL_PASSWORD": "sentinel-pw-1234",
                                   "BROKER_CLUSTER_REDIS_PASSWORD": "master-pw-1234"})
    assert "sentinel-pw-1234" not in str(info.value) and "master-pw-1234" not in str(info.value)


def test_a_sentinel_cluster_on_a_node_local_sqlite_file_is_refused():
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"BROKER_CLUSTER_REDIS_SENTINELS": "s:26379", "BROKER_CLUSTER_REDIS_MASTER_NAME": "m"})
    assert "[cluster] redis_sentinels is set but [store] url is not" in str(info.value)


async def test_serve_refuses_a_sentinel_cluster_on_sqlite_even_when_the_config_was_not_loaded(tmp_path):
    from broker import serve

    config = make_config(tmp_path, cluster={"redis_sentinels": ("127.0.0.1:26379",), "redis_master_name": "m"})
    with pytest.raises(ConfigError, match=r"\[cluster\] redis_sentinels .* \[store\] url"):
        await serve(config)
    assert not (tmp_path / "broker.sqlite3").exists()

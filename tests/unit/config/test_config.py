
import pytest

from broker.config.loader import Config, ConfigError, load_config
from tests.support.helpers import ROOT


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_shipped_config_toml_loads_and_matches_embedded_defaults():
    shipped = load_config(ROOT / "config.toml", environ={})
    defaults = load_config(None, environ={})
    for section in ("server", "websocket", "auth", "jobs", "chat", "limits", "api", "log"):
        assert getattr(shipped, section) == getattr(defaults, section), section
    assert shipped.store.path == str(ROOT / "data" / "broker.sqlite3")


def test_env_overrides_short_and_long_names(tmp_path):
    config = load_config(
        write(tmp_path, "[server]\nport = 9000\n"),
        environ={"PORT": "9100", "WS_AUTH_TOKEN": "demo-token", "BROKER_API_KEY": "key-one-123,key-two-456",
                 "BROKER_JOBS_HISTORY_SIZE": "50", "BROKER_JWT_SECRET": "x" * 32},
    )
    assert config.server.port == 9100
    assert config.auth.env_token == "demo-token"
    assert config.api.keys == ("key-one-123", "key-two-456")
    assert config.jobs.history_size == 50
    assert config.auth.jwt_secret == "x" * 32


def test_relative_store_path_follows_config_file(tmp_path):
    config = load_config(write(tmp_path, '[store]\npath = "d/db.sqlite3"\n'), environ={})
    assert config.store.path == str(tmp_path / "d" / "db.sqlite3")


@pytest.mark.parametrize(
    "text, env, fragment",
    [
        ("[server]\nport = 'abc'\n", {}, "[server] port: expected an integer, got 'abc'"),
        ("[server]\nport = 70000\n", {}, "[server] port: must be at most 65535"),
        ("[server]\nprot = 1\n", {}, "[server] unknown key 'prot'"),
        ("[sever]\n", {}, "unknown section [sever]"),
        ("[server\n", {}, "not valid TOML"),
        ("", {"PORT": "eighty"}, "environment variable PORT ([server] port): expected an integer"),
        ("[auth]\njwt_algorithms = ['none']\n", {}, "'none' never"),
        ("[auth]\njwt_algorithms = ['RS256']\n", {}, "jwt_public_key_file: required"),
        ("[auth]\njwt_secret = 'short'\n", {}, "at least 32 characters"),
        ("[store]\nsynchronous = 'SOMETIMES'\n", {}, "must be one of OFF, NORMAL"),
        ("[auth]\nstatic_tokens = [{token = 'abcdefgh', usr = 'x'}]\n", {}, "static_tokens[0]: unknown key 'usr'"),
        ("[server]\nws_path = 'ws'\n", {}, "must start with '/'"),
        ("[store]\nurl = 'mysql://db/broker'\n", {}, "[store] url (or BROKER_STORE_URL): must be a postgresql:// URL"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path, text, env, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    assert fragment in str(info.value)
    if "environment" not in fragment:
        assert str(path) in str(info.value)


def test_secret_values_never_appear_in_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[auth]\njwt_secret = 12345\n"), environ={})
    assert "12345" not in str(info.value) and "***" in str(info.value)


def test_a_cluster_on_a_node_local_sqlite_file_is_refused(tmp_path):
    path = write(tmp_path, "[cluster]\nredis_url = 'redis://127.0.0.1:6379/0'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "[cluster] redis_url" in str(info.value) and "[store] url" in str(info.value)
    config = load_config(path, environ={"BROKER_STORE_URL": "postgresql://broker:pw@db/broker"})
    assert config.store.url == "postgresql://broker:pw@db/broker" and config.cluster.node_id == ""
    assert load_config(None, environ={}).store.url == ""  # SQLite stays the default


async def test_serve_refuses_a_cluster_on_sqlite_even_when_the_config_was_not_loaded(tmp_path):
    from broker import serve
    from tests.support.helpers import make_config

    config = make_config(tmp_path, cluster={"redis_url": "redis://127.0.0.1:6379/0"})
    with pytest.raises(ConfigError, match=r"\[cluster\] redis_url .* \[store\] url"):
        await serve(config)
    assert not (tmp_path / "broker.sqlite3").exists()


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        load_config("/nonexistent/config.toml", environ={})


def test_replace_for_embedding():
    config = Config().replace(server={"port": 0}, jobs={"history_size": 5})
    assert config.server.port == 0 and config.jobs.history_size == 5 and config.server.host == "0.0.0.0"


def test_outgoing_frames_never_exceed_the_outbox(tmp_path):
    config = load_config(write(tmp_path, "[websocket]\noutbox_max_bytes = 65536\n"), environ={})
    assert config.websocket.outgoing_frame_limit == 65536
    config = load_config(write(tmp_path, "[websocket]\nmax_outgoing_frame_bytes = 8192\n"), environ={})
    assert config.websocket.outgoing_frame_limit == 8192


@pytest.mark.parametrize("algorithms", ["['HS256']", "['HS512']"])
def test_hmac_with_a_public_key_file_is_refused_naming_both_keys(tmp_path, algorithms):
    """HS256 would use the PEM text as an HMAC secret: every JWT would fail (and a
    public key is no secret). Refused at load, naming the keys to change."""
    pem = tmp_path / "pub.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n")
    path = write(tmp_path, f"[auth]\njwt_algorithms = {algorithms}\njwt_public_key_file = '{pem}'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message and "jwt_public_key_file" in message and "jwt_algorithms" in message
    assert "jwt_secret" in message  # what HMAC verifies with instead


def test_a_public_key_algorithm_without_a_key_file_is_refused(tmp_path):
    path = write(tmp_path, "[auth]\njwt_algorithms = ['EdDSA']\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"BROKER_JWT_SECRET": "s" * 40})
    assert "jwt_public_key_file: required" in str(info.value) and "EdDSA" in str(info.value)


def test_a_config_built_in_code_is_checked_when_the_broker_starts(tmp_path):
    from broker.app import Broker
    from broker.auth.tokens import Authenticator

    pem = tmp_path / "pub.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n")
    config = Config().replace(auth={"jwt_algorithms": ("HS256",), "jwt_public_key_file": str(pem)},
                              store={"path": ":memory:"})
    for start in (lambda: Authenticator(config.auth), lambda: Broker(config)):
        with pytest.raises(ConfigError, match="jwt_public_key_file is set but jwt_algorithms"):
            start()

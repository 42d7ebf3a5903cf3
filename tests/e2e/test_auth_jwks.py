"""Keys from an identity provider: a real JWKS server on loopback whose keys the test
generates and rotates; the broker's fetcher, its cache and its refetch bound; HMAC
rotation with previous secrets; and what check-config, /health and doctor report."""

import json
import logging
import sys
import time
import uuid

import attrs
import jwt
import pytest
import trio
import trio_websocket

from broker import serve
from broker.auth.jwks import max_age
from broker.auth.tokens import Authenticator, AuthError, AuthUnavailable, KeysUnavailable, issue_token
from broker.config.loader import AuthConfig, ConfigError, validate_jwt
from broker.tools.doctor import diagnose
from broker.tools.httpclient import http_request
from tests.support.helpers import DEMO_TOKEN, expect_close, make_config, recv_json, recv_until, send_json
from tests.support.identity_services import jwks_server, new_key

ALL_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
SECRET = "test-secret-0123456789abcdef-0123456789"


def jwks_auth(url, algorithms=("RS256",), **overrides):
    return Authenticator(AuthConfig(jwt_algorithms=algorithms, jwks_url=url, **overrides))


async def test_each_algorithm_verifies_with_the_key_its_kid_names():
    keys = [new_key(alg) for alg in ALL_ALGORITHMS]
    async with jwks_server(*keys) as server:
        auth = jwks_auth(server.url, ALL_ALGORITHMS)
        await auth.jwks.refresh()
        for key in keys:
            principal = auth.authenticate(key.token(f"user-{key.alg}", jobs=["job-*"]))
            assert (principal.user_id, principal.kind, principal.jobs) == (f"user-{key.alg}", "jwt", ("job-*",))
            assert principal.expires_at is not None
        rsa, ec = keys[0], keys[6]
        # a token that names the EC key's kid but is signed RS256: the key does not fit
        forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, rsa.private, algorithm="RS256",
                            headers={"kid": ec.kid})
        with pytest.raises(AuthError, match="does not fit"):
            auth.authenticate(forged)
        # signed by another key under a known kid: the signature does not verify
        impostor = new_key("RS256", kid=rsa.kid)
        with pytest.raises(AuthError, match="InvalidSignature"):
            auth.authenticate(impostor.token("x"))
        assert server.fetches.value == 1


async def test_pinned_algorithms_only_and_no_kid_needs_a_single_key():
    key = new_key("ES256")
    async with jwks_server(key) as server:
        auth = jwks_auth(server.url, ("RS256", "ES256"))
        await auth.jwks.refresh()
        assert auth.authenticate(key.token("u1", kid=None)).user_id == "u1"  # one key: no kid needed
        hs = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256", headers={"kid": key.kid})
        with pytest.raises(AuthError, match="algorithm not allowed"):
            auth.authenticate(hs)
        server.keys.append(new_key("ES256"))
        await auth.jwks.refresh()
        with pytest.raises(AuthError, match="no kid"):
            auth.authenticate(key.token("u1", kid=None))


async def test_a_key_added_by_rotation_is_fetched_once_and_a_removed_one_refused_after_the_next_refresh():
    old, new = new_key("RS256"), new_key("RS256")
    async with jwks_server(old) as server:
        auth = jwks_auth(server.url, jwks_min_refetch=30)
        await auth.jwks.refresh()
        server.keys.append(new)  # the provider rotates: the new key is published, tokens follow
        assert (await auth.authenticate_fresh(new.token("u2"))).user_id == "u2"
        assert server.fetches.value == 2
        assert auth.authenticate(new.token("u3")).user_id == "u3"  # cached now: no fetch
        server.keys.remove(old)
        assert auth.authenticate(old.token("u1")).user_id == "u1"  # until the next refresh
        await auth.jwks.refresh()
        with pytest.raises(AuthError, match="kid is not in the JWKS"):
            await auth.authenticate_fresh(old.token("u1"))  # within jwks_min_refetch: no fetch for it
        assert server.fetches.value == 3


async def test_tokens_with_random_kids_cause_no_fetch_storm():
    key, attacker = new_key("RS256"), new_key("RS256")
    async with jwks_server(key) as server:
        auth = jwks_auth(server.url, jwks_min_refetch=30)
        await auth.jwks.refresh()
        refused = 0

        async def try_one():
            nonlocal refused
            try:
                await auth.authenticate_fresh(attacker.token("mallory", kid=uuid.uuid4().hex))
            except AuthError:
                refused += 1

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(300):
                    nursery.start_soon(try_one)
            for _ in range(300):  # and one after another, once the first refetch is done
                await try_one()
        assert refused == 600
        assert server.fetches.value == 2  # the start, and one refetch for all 600 unknown kids
        assert auth.authenticate(key.token("u1")).user_id == "u1"


def test_cache_control_max_age_is_read_and_kept_within_the_bounds():
    assert max_age("public, max-age=600") == 600
    assert max_age('max-age="90", must-revalidate') == 90
    assert max_age("no-cache") == 0 and max_age("no-store, max-age=5") == 0
    assert max_age(None) is None and max_age("private") is None


@pytest.mark.parametrize("header, lifetime", [("max-age=600", 600), ("max-age=5", 60), ("max-age=999999", 3600),
                                              ("no-cache", 60), (None, 300)])
async def test_the_next_fetch_follows_the_answer(header, lifetime):
    async with jwks_server(new_key("ES256"), cache_control=header) as server:
        auth = jwks_auth(server.url, ("ES256",), jwks_cache_min=60, jwks_cache_max=3600)
        await auth.jwks.refresh()
        assert auth.jwks.cache_lifetime == lifetime
        assert auth.jwks.refetch_at == pytest.approx(trio.current_time() + lifetime, abs=2)


async def test_the_background_refresh_picks_up_rotation_by_itself(nursery):
    old, new = new_key("EdDSA"), new_key("EdDSA")
    async with jwks_server(old, cache_control="max-age=0") as server:
        auth = jwks_auth(server.url, ("EdDSA",), jwks_cache_min=0.05)
        await nursery.start(auth.jwks.run)
        server.keys[:] = [new]
        with trio.fail_after(10):
            await server.fetches.reached(3)  # at least one full answer after the swap
        assert auth.authenticate(new.token("u")).user_id == "u"
        with pytest.raises(AuthError):
            auth.authenticate(old.token("u"))


async def test_unreachable_jwks_keeps_the_cached_keys_and_warns_once_per_episode(caplog):
    key = new_key("RS256")
    async with jwks_server(key) as server:
        auth = jwks_auth(server.url, jwks_min_refetch=0)
        await auth.jwks.refresh()
        server.down = True
        with caplog.at_level(logging.WARNING, logger="broker.auth"):
            for _ in range(3):
                await auth.jwks.refresh()
            assert auth.authenticate(key.token("u1")).user_id == "u1"
            assert auth.jwks.state().error == "HTTP 503"
            server.down = False
            await auth.jwks.refresh()
            server.down = True
            await auth.jwks.refresh()
        messages = [r.getMessage() for r in caplog.records]
        assert sum("not fetched" in m for m in messages) == 2  # two episodes, one warning each
        assert sum("reachable again" in m for m in messages) == 1
        assert all("cached key(s) keep working" in m for m in messages if "not fetched" in m)


async def test_without_keys_jwts_are_unavailable_never_accepted():
    key = new_key("RS256")
    async with jwks_server(key) as server:
        server.down = True
        auth = jwks_auth(server.url)
        await auth.jwks.refresh()
        with pytest.raises(KeysUnavailable):
            await auth.authenticate_fresh(key.token("u1"))
        assert issubclass(KeysUnavailable, AuthUnavailable)


def test_hmac_rotation_accepts_previous_secrets_for_verification_only():
    current, previous = "new-secret-0123456789-0123456789-abc", "old-secret-0123456789-0123456789-abc"
    auth = Authenticator(AuthConfig(jwt_secret=current, jwt_previous_secrets=(previous,)))
    assert auth.authenticate(issue_token(current, "a", 60)).user_id == "a"
    assert auth.authenticate(issue_token(previous, "b", 60)).user_id == "b"
    with pytest.raises(AuthError, match="InvalidSignature"):
        auth.authenticate(issue_token("other-secret-0123456789-0123456789-x", "c", 60))
    with pytest.raises(AuthError, match="expired"):  # an expired token is refused whatever key signed it
        auth.authenticate(issue_token(previous, "d", -120))


def test_config_checks_for_jwks_and_previous_secrets():
    validate_jwt(AuthConfig(jwt_algorithms=("RS256",), jwks_url="https://idp.example/certs"))
    validate_jwt(AuthConfig(jwt_algorithms=("ES256",), jwks_url="http://127.0.0.1:8080/certs"))
    for bad, message in [
        (AuthConfig(jwt_algorithms=("RS256",), jwks_url="http://idp.example/certs"), "use https"),
        (AuthConfig(jwks_url="https://idp.example/certs"), "is HMAC"),
        (AuthConfig(jwt_algorithms=("RS256",), jwks_url="https://x/c", jwks_cache_min=100, jwks_cache_max=10),
         "jwks_cache_min"),
        (AuthConfig(jwt_secret=SECRET, jwt_previous_secrets=("short",)), "jwt_previous_secrets"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate_jwt(bad)


# -- end to end: the broker, real clients ------------------------------------------


def jwks_config(tmp_path, url, **auth):
    config = make_config(tmp_path)
    return attrs.evolve(config, auth=attrs.evolve(config.auth, jwt_secret="", jwt_algorithms=("RS256", "ES256"),
                                                  jwks_url=url, **auth))


async def connect(nursery, port, token=None, frame_token=None):
    """A WebSocket to the broker: the token in the Authorization header, or in an auth frame."""
    headers = [("Authorization", f"Bearer {token}")] if token else []
    ws = await trio_websocket.connect_websocket_url(nursery, f"ws://127.0.0.1:{port}/ws", extra_headers=headers)
    if frame_token is not None:
        await send_json(ws, {"type": "auth", "token": frame_token})
    return ws


@pytest.mark.slow  # seconds of real time
async def test_rotation_while_connections_are_open(tmp_path, nursery):
    first, second = new_key("RS256"), new_key("ES256")
    async with jwks_server(first) as server:
        broker = await nursery.start(serve, jwks_config(tmp_path, server.url))
        alice = await connect(nursery, broker.port, first.token("alice", ttl=600))
        assert (await recv_json(alice))["type"] == "connection_established"
        server.keys.append(second)  # a key added after start
        bob = await connect(nursery, broker.port, frame_token=second.token("bob", ttl=600))  # in the auth frame
        assert (await recv_json(bob))["userId"] == "bob"
        server.keys.remove(first)
        await broker.broker.authenticator.jwks.refresh()  # the next refresh
        carol = await connect(nursery, broker.port, first.token("carol", ttl=600))
        assert (await recv_json(carol))["code"] == "UNAUTHORIZED"
        assert await expect_close(carol) == 1008
        for ws in (alice, bob):  # open connections carry on until their tokens expire
            await send_json(ws, {"type": "ping"})
            await recv_until(ws, lambda m: m["type"] == "pong")
        status, body = await health(broker.port)
        assert status == 200 and body["jwks"]["kids"] == [second.kid] and body["jwks"]["error"] is None
        report = await diagnose(f"ws://127.0.0.1:{broker.port}/ws", token=DEMO_TOKEN)
        assert any(step.name == "jwks" and step.ok and second.kid in step.detail for step in report.steps)


async def health(port):
    response = await http_request("GET", f"http://127.0.0.1:{port}/health")
    return response.status, json.loads(response.body)


@pytest.mark.slow  # seconds of real time
async def test_no_keys_means_503_or_1013_and_static_tokens_still_work(tmp_path, nursery):
    key = new_key("RS256")
    async with jwks_server(key) as server:
        server.down = True
        broker = await nursery.start(serve, jwks_config(tmp_path, server.url))
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{broker.port}/ws",
                                                         extra_headers=[("Authorization", f"Bearer {key.token('a')}")]):
                pass
        assert rejected.value.status_code == 503 and b"try again" in rejected.value.body
        ws = await connect(nursery, broker.port, frame_token=key.token("alice"))
        assert (await recv_json(ws))["code"] == "UNAVAILABLE"
        assert await expect_close(ws) == 1013
        static = await connect(nursery, broker.port, DEMO_TOKEN)
        assert (await recv_json(static))["type"] == "connection_established"
        report = await diagnose(f"ws://127.0.0.1:{broker.port}/ws", token=DEMO_TOKEN)
        (step,) = [s for s in report.steps if s.name == "jwks"]
        assert not step.ok and "HTTP 503" in step.detail
        server.down = False  # the provider is back: the next fetch brings the keys
        await broker.broker.authenticator.jwks.refresh()
        ok = await connect(nursery, broker.port, key.token("alice"))
        assert (await recv_json(ok))["userId"] == "alice"


@pytest.mark.slow  # seconds of real time
async def test_check_config_reports_the_jwks(tmp_path):
    key = new_key("ES256", kid="kc-main")
    async with jwks_server(key) as server:
        config = tmp_path / "broker.toml"
        config.write_text(f'[auth]\njwt_algorithms = ["ES256"]\njwks_url = "{server.url}"\n')
        result = await trio.run_process([sys.executable, "-m", "broker", "check-config", "--config", str(config)],
                                        capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 0, result.stderr
        assert b"jwks: " in result.stdout and b"kc-main" in result.stdout
        server.down = True
        result = await trio.run_process([sys.executable, "-m", "broker", "check-config", "--config", str(config)],
                                        capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 1 and b"not fetched: HTTP 503" in result.stderr

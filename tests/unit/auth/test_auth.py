import logging
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.auth.tokens import ApiKeys, Authenticator, AuthError, issue_token, token_from_request
from broker.config.loader import AuthConfig, StaticToken
from broker.observability.redact import RedactingFilter, redact

SECRET = "test-secret-0123456789abcdef-0123456789"


def make(**overrides):
    return Authenticator(AuthConfig(jwt_secret=SECRET, **overrides))


def test_token_sources_first_match_wins():
    assert token_from_request([(b"Authorization", b"Bearer aaa"), (b"websocket", b"bbb")], "/ws?token=ccc") == "aaa"
    assert token_from_request([(b"websocket", b"bbb")], "/ws?token=ccc") == "bbb"
    assert token_from_request([], "/ws?x=1&token=ccc") == "ccc"
    assert token_from_request([(b"authorization", b"Basic abc")], "/ws") is None
    assert token_from_request([], "/ws") is None


def test_valid_jwt_gives_principal_with_sub_or_uid():
    auth = make()
    principal = auth.authenticate(issue_token(SECRET, "42", 60, {"jobs": ["job-*"]}))
    assert principal.user_id == "42" and principal.kind == "jwt"
    assert principal.may_join("job-123") and not principal.may_join("other")
    uid_token = jwt.encode({"uid": 7, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert auth.authenticate(uid_token).user_id == "7"


# Minted when the module is collected, used minutes later in a long run: an `exp` an hour
# away keeps these tokens failing for their own reason, not for having expired.
@pytest.mark.parametrize(
    "token, reason",
    [
        (issue_token(SECRET, "42", -120), "expired"),
        (jwt.encode({"sub": "42", "exp": int(time.time()) + 3600}, "wrong-secret-0123456789-0123456789", algorithm="HS256"), "invalid"),
        (jwt.encode({"sub": "42", "exp": int(time.time()) + 3600}, None, algorithm="none"), "algorithm not allowed"),
        (jwt.encode({"sub": "42", "exp": int(time.time()) + 3600}, SECRET * 2, algorithm="HS512"), "algorithm not allowed"),
        (jwt.encode({"sub": "42"}, SECRET, algorithm="HS256"), "invalid"),  # no exp
        (jwt.encode({"exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"), "no usable sub"),
        ("not-a-token", "unknown static token"),
        ("", "empty"),
    ],
)
def test_refused_tokens(token, reason):
    with pytest.raises(AuthError) as info:
        make().authenticate(token)
    assert reason in info.value.reason.lower()
    assert token == "" or token not in info.value.reason


def test_audience_and_issuer_enforced_when_configured():
    auth = make(jwt_audience="broker", jwt_issuer="https://issuer")
    good = issue_token(SECRET, "u", 60, {"aud": "broker", "iss": "https://issuer"})
    assert auth.authenticate(good).user_id == "u"
    with pytest.raises(AuthError):
        auth.authenticate(issue_token(SECRET, "u", 60, {"aud": "other", "iss": "https://issuer"}))
    with pytest.raises(AuthError):
        auth.authenticate(issue_token(SECRET, "u", 60, {"aud": "broker"}))


def test_public_key_algorithms(tmp_path):
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(pem)
    auth = Authenticator(AuthConfig(jwt_algorithms=("ES256",), jwt_public_key_file=str(tmp_path / "pub.pem")))
    token = jwt.encode({"sub": "es", "exp": int(time.time()) + 60}, private, algorithm="ES256")
    assert auth.authenticate(token).user_id == "es"
    # HS256 signed with the public key as secret (the classic confusion attack) is refused
    forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "k" * 32, algorithm="HS256")
    with pytest.raises(AuthError):
        auth.authenticate(forged)


def test_static_tokens_and_env_token():
    auth = Authenticator(
        AuthConfig(static_tokens=(StaticToken("dash-token-123", "dashboard", ("job-*",)),), env_token="demo-token")
    )
    assert auth.authenticate("dash-token-123").user_id == "dashboard"
    assert auth.authenticate("demo-token").may_join("anything")
    assert not auth.authenticate("dash-token-123").may_join("x")
    with pytest.raises(AuthError):
        auth.authenticate("demo-tokeN")


def test_jwt_without_jobs_claim_uses_default_policy():
    assert not make().authenticate(issue_token(SECRET, "u", 60)).may_join("job-1")
    assert make(jwt_default_jobs=("*",)).authenticate(issue_token(SECRET, "u", 60)).may_join("job-1")
    assert make().authenticate(issue_token(SECRET, "u", 60, {"jobs": "*"})).may_join("job-1")


def test_api_keys():
    keys = ApiKeys(["key-number-one", "key-number-two"])
    assert keys.check([(b"Authorization", b"Bearer key-number-two")])
    assert keys.check([(b"X-API-Key", b"key-number-one")])
    assert not keys.check([(b"Authorization", b"Bearer nope")])
    assert not keys.check([])
    assert not ApiKeys([]).check([(b"Authorization", b"Bearer key-number-one")])


def test_redaction_of_logs():
    token = issue_token(SECRET, "u", 60)
    line = f"GET /ws?token={token}&x=1 Authorization: Bearer {token} apiKey=sk-123 raw {token}"
    cleaned = redact(line)
    assert token not in cleaned and "sk-123" not in cleaned
    assert "token=***" in cleaned and "Bearer ***" in cleaned and "apiKey=***" in cleaned


def test_redacting_filter_on_records(caplog):
    logger = logging.getLogger("broker.test")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="broker.test"):
        logger.info("connect %s", "/ws?token=supersecret")
    assert "supersecret" not in caplog.text and "token=***" in caplog.text


def test_redacting_filter_covers_exception_text(caplog):
    """A traceback quotes the exception's message: a header value, a URL."""
    logger = logging.getLogger("broker.test.exc")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.DEBUG, logger="broker.test.exc"):
        try:
            raise ValueError("Illegal header value b'Bearer sk-live-123\\x00tail' for /v1?apiKey=sk-q-456&x=1")
        except ValueError:
            logger.exception("connection %s failed", "c-1")
        logger.debug("stack", stack_info=True, extra={"note": "no secret here"})
    assert "connection c-1 failed" in caplog.text and "ValueError" in caplog.text
    assert "sk-live-123" not in caplog.text and "tail" not in caplog.text and "sk-q-456" not in caplog.text
    assert "Bearer ***" in caplog.text and "apiKey=***" in caplog.text
    assert all(record.exc_info is None for record in caplog.records)  # no handler can format the raw one


def test_install_filter_reaches_module_loggers(caplog):
    from broker.observability.redact import install_filter

    child = logging.getLogger("broker.test.child")  # made at import by a module, before the broker starts
    install_filter(("broker.test",))
    with caplog.at_level(logging.INFO):
        child.info("GET /ws?token=hunter22")
    assert "hunter22" not in caplog.text


def test_a_key_file_that_does_not_fit_the_algorithm_refuses_tokens_cleanly(tmp_path):
    """RS256 pinned, an EC key in the file: PyJWT's InvalidKeyError is a refusal (1008), not a crash."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(pem)
    auth = Authenticator(AuthConfig(jwt_algorithms=("RS256",), jwt_public_key_file=str(tmp_path / "pub.pem")))
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "r", "exp": int(time.time()) + 60}, signer, algorithm="RS256")
    with pytest.raises(AuthError, match="not verifiable: InvalidKeyError"):
        auth.authenticate(token)

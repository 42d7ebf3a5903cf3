"""Signatures (pure) against the standardwebhooks package, and the [[webhook]] config."""

import base64

import pytest
import standardwebhooks

from broker.config.loader import ConfigError, load_config
from broker.webhooks.events import event_body, iso_now
from broker.webhooks.signing import secret_key, signed_headers
from tests.support.helpers import ROOT

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789").decode()
OTHER = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876").decode()


def test_headers_verify_with_the_reference_verifier_for_each_secret():
    import time

    body = event_body("user.online", b'{"userId":"alice"}', 1_700_000_000.5)
    headers = signed_headers([secret_key(SECRET), secret_key(OTHER)], "msg_1", int(time.time()), body)
    for secret in (SECRET, OTHER):
        assert standardwebhooks.Webhook(secret).verify(body, headers)["data"] == {"userId": "alice"}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body + b" ", headers)


def test_the_reference_signer_and_ours_agree():
    from datetime import UTC, datetime

    body = b'{"type":"user.online","timestamp":"x","data":{}}'
    theirs = standardwebhooks.Webhook(SECRET).sign("msg_2", datetime.fromtimestamp(1_700_000_000, UTC), body.decode())
    assert signed_headers([secret_key(SECRET)], "msg_2", 1_700_000_000, body)["webhook-signature"] == theirs


def test_body_is_the_standard_shape_with_data_bytes_unchanged():
    assert event_body("chat.message", b'{"content":"\xe4\xbd\xa0"}', 0.25) == (
        b'{"type":"chat.message","timestamp":"1970-01-01T00:00:00.250Z","data":{"content":"\xe4\xbd\xa0"}}')
    assert iso_now(1.999) == "1970-01-01T00:00:01.999Z"


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_webhook_sections_load(tmp_path):
    config = load_config(write(tmp_path, f"""
[webhooks]
timeout = 5
[[webhook]]
url = "https://backend.example/hooks"
events = ["user.offline", "chat.message"]
secrets = ["{SECRET}", "{OTHER}"]
"""), environ={})
    (endpoint,) = config.webhook
    assert endpoint.key == "https://backend.example/hooks" and endpoint.events == ("user.offline", "chat.message")
    assert config.webhooks.timeout == 5.0


@pytest.mark.parametrize(("table", "complaint"), [
    ('url = "ftp://x"\nsecrets = ["S"]', "url"),
    ('url = "http://x"\nsecrets = []', "at least one secret"),
    ('url = "http://x"\nsecrets = ["whsec_short"]', "secrets[0]"),
    ('url = "http://x"\nsecrets = ["S"]\nevents = ["user.typing"]', "unknown event"),
])
def test_bad_webhook_sections_are_refused_without_showing_the_secret(tmp_path, table, complaint):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "[[webhook]]\n" + table.replace('"S"', f'"{SECRET}"')), environ={})
    assert complaint in str(error.value) and SECRET not in str(error.value)


def test_two_endpoints_with_one_name_are_refused(tmp_path):
    endpoint = f'[[webhook]]\nurl = "http://a"\nname = "x"\nsecrets = ["{SECRET}"]\n'
    with pytest.raises(ConfigError, match="two endpoints"):
        load_config(write(tmp_path, endpoint + endpoint), environ={})


def test_the_readmes_ten_line_verifier_works_as_written():
    import re
    import time

    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- webhook-verify-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 12
    secret = re.search(r'Webhook\("(whsec_[^"]+)"\)', code).group(1)
    pushed = []
    namespace = {"send_push": pushed.append}
    exec(compile(code, "README.md", "exec"), namespace)
    body = event_body("user.offline", b'{"userId":"alice"}', time.time())
    headers = signed_headers([secret_key(secret)], "msg_readme", int(time.time()), body)
    assert namespace["handle"](body, headers) == 204 and pushed == ["alice"]
    assert namespace["handle"](body + b" ", headers) == 400

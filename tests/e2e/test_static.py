"""The broker serves the JS client and the console page (broker/web/static.py): from a table
built at start, with the right Content-Type, caching headers, and no way out of it."""

import tomllib

import pytest

from broker.config.loader import BrowserConfig
from broker.tools.httpclient import http_request
from broker.web.static import STATIC_ROOT, StaticFiles
from tests.support.helpers import make_config

CLIENT_FILES = ["broker-client.mjs", "broker-client.d.ts", "sse-socket.mjs", "react.mjs", "react.d.ts", "adapters/wx.mjs",
                "adapters/wx.d.ts", "package.json"]


async def get(broker, path, **headers):
    return await http_request("GET", f"http://127.0.0.1:{broker.port}{path}", headers=headers)


async def test_client_module_is_served_with_type_cache_and_cors(broker):
    response = await get(broker, "/client/broker-client.mjs")
    assert response.status == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "public, max-age=300"
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.body == (STATIC_ROOT / "client" / "broker-client.mjs").read_bytes()
    assert b"export class BrokerClient" in response.body
    # revalidation: the same ETag gets 304 with no body
    again = await get(broker, "/client/broker-client.mjs", **{"If-None-Match": response.headers["etag"]})
    assert again.status == 304 and again.body == b"" and again.headers["etag"] == response.headers["etag"]
    stale = await get(broker, "/client/broker-client.mjs", **{"If-None-Match": '"something-else"'})
    assert stale.status == 200


@pytest.mark.parametrize("name,content_type", [
    ("broker-client.d.ts", "text/plain; charset=utf-8"),
    ("react.mjs", "text/javascript; charset=utf-8"),
    ("adapters/wx.mjs", "text/javascript; charset=utf-8"),
    ("package.json", "application/json"),
])
async def test_every_client_file_has_its_content_type(broker, name, content_type):
    response = await get(broker, f"/client/{name}")
    assert response.status == 200 and response.headers["content-type"] == content_type


async def test_console_page_is_templated_and_locked_down(broker):
    response = await get(broker, "/console")
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert 'data-client="/client"' in response.text and 'data-ws="/ws"' in response.text
    assert "{{" not in response.text
    script = await get(broker, "/console/console.mjs")
    assert script.status == 200 and script.headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize("path", [
    "/client/../pyproject.toml",
    "/client/../../broker/app.py",
    "/client/%2e%2e/static.py",
    "/client/..%2f..%2fconfig.toml",
    "/client//etc/passwd",
    "/client/",
    "/client",
    "/client/adapters",
    "/console/../client/broker-client.mjs",
    "/console/index.html",
    "/client/BROKER-CLIENT.MJS",
])
async def test_nothing_outside_the_table_is_served(broker, path):
    response = await get(broker, path)
    assert response.status in (400, 404), (path, response.status)
    assert b"import" not in response.body and b"[project]" not in response.body


async def test_only_get_and_head(broker):
    url = f"http://127.0.0.1:{broker.port}/client/broker-client.mjs"
    posted = await http_request("POST", url, body=b"x")
    assert posted.status == 405 and posted.headers["allow"] == "GET, HEAD"
    head = await http_request("HEAD", url)
    assert head.status == 200 and head.body == b"" and head.headers["etag"]


async def test_paths_are_configurable_and_the_console_can_be_turned_off(nursery, tmp_path):
    from broker import serve

    config = make_config(tmp_path, browser={"console_path": "", "client_path": "/static/js"})
    broker = await nursery.start(serve, config)
    assert (await get(broker, "/console")).status == 404
    assert (await get(broker, "/static/js/broker-client.mjs")).status == 200
    assert (await get(broker, "/client/broker-client.mjs")).status == 404


def test_table_holds_every_client_file_and_nothing_else(tmp_path):
    files = StaticFiles(BrowserConfig(), "/ws")
    assert sorted(files.files) == sorted(
        [f"/client/{name}" for name in CLIENT_FILES] + ["/console", "/console/console.mjs", "/console/console.css"]
        + ["/admin", "/admin/admin.mjs", "/admin/admin.css"]
    )
    assert sorted(StaticFiles(BrowserConfig(admin_path=""), "/ws").files) == sorted(
        [f"/client/{name}" for name in CLIENT_FILES] + ["/console", "/console/console.mjs", "/console/console.css"]
    )


def test_package_data_ships_every_static_file():
    """pip install (not only a source checkout) must carry the files: every file under
    broker/static matches a package-data pattern of pyproject.toml (setuptools' globs)."""
    pyproject = tomllib.loads((STATIC_ROOT.parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["broker"]
    package = STATIC_ROOT.parent
    shipped = {path for pattern in patterns for path in package.glob(pattern) if path.is_file()}
    every = {path for path in STATIC_ROOT.rglob("*") if path.is_file()}
    assert every == shipped, sorted(str(p.relative_to(package)) for p in every - shipped)

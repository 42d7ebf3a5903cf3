"""Server API as a whole, one node: the OpenAPI document is the route table, the key
guards every route but the document, unknown paths and methods, body limits, and
the node's stats (docs/PROTOCOL.md section 8)."""

import json

from broker import serve
from broker.tools.httpclient import http_request
from broker.web.schema import SchemaError, check
from tests.support.helpers import API_KEY, api_request, make_config


async def test_the_document_is_served_without_a_key_and_lists_every_route(broker):
    status, document = await api_request(broker.port, "GET", "/api/openapi.json", key=None)
    assert status == 200 and document["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    expected = {("POST", "/api/publish"), ("GET", "/api/jobs/{jobId}"), ("GET", "/api/jobs/{jobId}/events"),
                ("GET", "/api/jobs/{jobId}/presence"), ("GET", "/api/users/{userId}"),
                ("POST", "/api/users/{userId}/disconnect"), ("DELETE", "/api/users/{userId}/ban"),
                ("POST", "/api/chat/messages"), ("GET", "/api/conversations/{conversationId}/messages"),
                ("GET", "/api/stats"), ("GET", "/api/openapi.json"), ("POST", "/api/groups"),
                ("GET", "/api/groups/{groupId}"), ("DELETE", "/api/groups/{groupId}"),
                ("PUT", "/api/groups/{groupId}/members"), ("DELETE", "/api/groups/{groupId}/members/{userId}"),
                ("GET", "/api/users/{userId}/groups")}
    assert documented == expected
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if path != "/api/openapi.json":
                assert {"401", "403"} <= operation["responses"].keys(), (method, path)
            assert all("application/json" in r["content"] for r in operation["responses"].values())


async def test_every_route_needs_the_key_but_the_document(broker):
    _, document = await api_request(broker.port, "GET", "/api/openapi.json", key=None)
    for path, item in document["paths"].items():
        concrete = path.replace("{", "x").replace("}", "")
        for method in item:
            if path == "/api/openapi.json":
                continue
            status, body = await api_request(broker.port, method.upper(), concrete, key=None)
            assert status == 401 and body["code"] == "UNAUTHORIZED", (method, path)
            status, body = await api_request(broker.port, method.upper(), concrete, key="wrong")
            assert status == 401, (method, path)


async def test_with_no_key_configured_the_api_is_off(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, api={"keys": ()}))
    status, body = await api_request(broker.port, "GET", "/api/stats")
    assert status == 403 and body["code"] == "FORBIDDEN"
    assert (await api_request(broker.port, "GET", "/api/openapi.json", key=None))[0] == 200


async def test_unknown_paths_are_404_and_wrong_methods_405_with_allow(broker):
    status, body = await api_request(broker.port, "GET", "/api/nothing/here")
    assert status == 404 and body["code"] == "NOT_FOUND"
    response = await http_request("PATCH", f"http://127.0.0.1:{broker.port}/api/users/alice",
                                  headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status == 405 and response.headers["allow"] == "GET"
    assert json.loads(response.body)["type"] == "error"
    response = await http_request("GET", f"http://127.0.0.1:{broker.port}/api/chat/messages",
                                  headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status == 405 and response.headers["allow"] == "POST"


async def test_a_body_over_the_limit_is_413(tmp_path, nursery):
    broker = await nursery.start(serve, make_config(tmp_path, server={"host": "127.0.0.1", "port": 0,
                                                                      "max_body_bytes": 1024}))
    status, body = await api_request(broker.port, "POST", "/api/chat/messages", raw=b'{"content":"' + b"x" * 2000)
    assert status == 413 and body["type"] == "error"


async def test_stats_of_a_single_node(broker):
    for index in range(3):
        await api_request(broker.port, "POST", "/api/publish", {"jobId": "j", "type": "job_status",
                                                                "data": {"status": str(index)}})
    status, stats = await api_request(broker.port, "GET", "/api/stats")
    assert status == 200 and stats["cluster"] is False and stats["nodes"] == [stats["node"]]
    node = stats["node"]
    assert node["node"] == broker.broker.backplane.node_id
    assert node["jobRooms"] == 0 or node["jobRooms"] == 1  # the room may have gone idle already
    assert node["connections"] == 0 and node["users"] == 0
    assert node["publishesPerSecond"] > 0  # 3 publishes since the first sample, a moment ago
    assert node["webhooks"] == {"queueDepth": None, "failures": None, "deadLetters": None}


def test_the_schema_check_refuses_what_the_document_refuses():
    user = {"type": "string", "minLength": 1, "maxLength": 4, "pattern": "^[a-z]+$"}
    check(user, "abc", "u")
    for bad in ("", "abcde", "ab\n", "AB", 3, None):
        try:
            check(user, bad, "u")
        except SchemaError:
            continue
        raise AssertionError(f"{bad!r} passed")
    number = {"type": "integer", "minimum": 1, "maximum": 3}
    for bad in (True, 0, 4, 1.5):
        try:
            check(number, bad, "n")
        except SchemaError:
            continue
        raise AssertionError(f"{bad!r} passed")

import itertools

import pytest
from hypothesis import HealthCheck, settings

from broker import serve
from broker.jobs import delivery as job_delivery
from broker.transport import trio_websocket_patch  # noqa: F401  (the tests' trio-websocket clients answer pings only while open)
from tests.support import services
from tests.support.helpers import make_config, postgres_config

POSTGRES_FIXTURES = frozenset({"pg_url", "postgres_server"})

# Property tests judge the code, not how fast this machine generates inputs: on a loaded
# CI machine Hypothesis's "input generation is slow" health check failed a test whose
# code was right (the examples' count and the tests' own deadlines stay as written).
settings.register_profile("broker", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("broker")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for the PostgreSQL server is marked ``postgres`` by that request
    (a parameter that reaches it through ``getfixturevalue`` carries the mark itself:
    ``on_each_store``, ``any_store``)."""
    for item in items:
        if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def config(request, tmp_path):
    """A broker config on SQLite in tmp_path; on PostgreSQL (a fresh schema) when a test
    parametrises it with "postgres" (``on_each_store`` in tests/support/helpers.py)."""
    if getattr(request, "param", "sqlite") == "postgres":
        return postgres_config(tmp_path, request.getfixturevalue("pg_url"))
    return make_config(tmp_path)


@pytest.fixture
async def broker(nursery, config):
    """A real broker on a loopback port, stopped with the test."""
    return await nursery.start(serve, config)


@pytest.fixture(params=["written at once", "delivery task"])
def fan_out(request, monkeypatch):
    """Both ways a room writes its members: at once (a small room) and from its
    delivery task (a big one), even with a few members."""
    if request.param == "delivery task":
        monkeypatch.setattr(job_delivery, "SYNC_MAX_MEMBERS", 0)


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL for the whole session (see tests/support/services.py)."""
    try:
        with services.postgres() as server:
            yield server
    except services.ServiceUnavailable as exc:
        pytest.skip(str(exc))


_schemas = itertools.count(1)


@pytest.fixture
def pg_url(request, postgres_server):
    """A URL of the session's PostgreSQL whose connections see a fresh, empty schema.
    Fails a test that reaches it without the ``postgres`` marker (a parameter that asks
    for it through getfixturevalue must carry the mark: make test-fast would run it)."""
    if request.node.get_closest_marker("postgres") is None:
        pytest.fail(f"{request.node.nodeid} uses PostgreSQL without the postgres marker: "
                    'give its parameter marks=pytest.mark.postgres (pytest.param("postgresql", marks=...))')
    return postgres_server.create_schema(f"test_{next(_schemas)}")

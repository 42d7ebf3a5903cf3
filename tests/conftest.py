import itertools

import pytest

from broker import serve

from . import services
from .helpers import make_config


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


@pytest.fixture
async def broker(nursery, config):
    """A real broker on a loopback port, stopped with the test."""
    return await nursery.start(serve, config)


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL for the whole session (see tests/services.py)."""
    try:
        with services.postgres() as server:
            yield server
    except services.ServiceUnavailable as exc:
        pytest.skip(str(exc))


_schemas = itertools.count(1)


@pytest.fixture
def pg_url(postgres_server):
    """A URL of the session's PostgreSQL whose connections see a fresh, empty schema."""
    return postgres_server.create_schema(f"test_{next(_schemas)}")

import pytest

from broker import serve

from .helpers import make_config


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


@pytest.fixture
async def broker(nursery, config):
    """A real broker on a loopback port, stopped with the test."""
    return await nursery.start(serve, config)

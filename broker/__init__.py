"""trio-broker: a Trio-based, actor-style WebSocket message broker.

What an embedding program may use; everything else is internal and may change
(tests/unit/test_public_api.py keeps this list and ``__all__`` honest)::

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(broker.serve, config)  # a BrokerHandle, once listening
        await handle.publish("job-1", "job_status", {"status": "RUNNING"})

- run: :func:`serve`, :class:`BrokerHandle` (what ``nursery.start(serve, ...)`` returns);
- configure: :class:`Config`, :func:`load_config`, :class:`ConfigError`;
- the Python client: :func:`open_client`, :class:`BrokerClient`, :class:`ReconnectPolicy`,
  :class:`ClientClosed` (also in ``broker.client``);
- what the handle raises: :class:`ProtocolError` (a bad or too big event; its ``code`` is an
  :class:`ErrorCode`), :class:`StoreError` and its :class:`SeqConflict`,
  :class:`RoomUnavailable`, :class:`BackplaneUnavailable`, and :class:`GroupError` from
  ``handle.groups``.
"""

from .app import BrokerHandle, serve
from .chat.groups import GroupError
from .client import BrokerClient, ClientClosed, ReconnectPolicy, open_client
from .cluster import BackplaneUnavailable
from .config.loader import Config, ConfigError, load_config
from .hub.rooms import RoomUnavailable
from .protocols import ErrorCode, ProtocolError
from .store import SeqConflict, StoreError

__all__ = [
    "BackplaneUnavailable",
    "BrokerClient",
    "BrokerHandle",
    "ClientClosed",
    "Config",
    "ConfigError",
    "ErrorCode",
    "GroupError",
    "ProtocolError",
    "ReconnectPolicy",
    "RoomUnavailable",
    "SeqConflict",
    "StoreError",
    "load_config",
    "open_client",
    "serve",
]

"""The Python client: reconnects with backoff and resumes its jobs with lastSeq.

``from broker.client import open_client`` (or ``from broker import open_client``);
see :mod:`broker.client.broker_client` for the behaviour."""

from .broker_client import BrokerClient, ClientClosed, ReconnectPolicy, open_client

__all__ = ["BrokerClient", "ClientClosed", "ReconnectPolicy", "open_client"]

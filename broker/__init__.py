"""trio-broker: a Trio-based, actor-style WebSocket message broker.

Embed it with ``handle = await nursery.start(broker.serve, config)``.
"""

from .app import Broker, BrokerHandle, serve
from .config.loader import Config, ConfigError, load_config

__all__ = ["Broker", "BrokerHandle", "Config", "ConfigError", "load_config", "serve"]

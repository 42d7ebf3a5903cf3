"""The default configuration file, as shipped: the reference of every option.

A wheel carries it as ``broker/config/default.toml`` (copied from the checkout's
config.toml at build time, setup.py); a checkout or an editable install reads the
checkout's config.toml itself.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .loader import ConfigError

CHECKOUT_CONFIG = Path(__file__).resolve().parents[2] / "config.toml"


def default_config_text() -> str:
    """The shipped config.toml; ConfigError if this installation lacks it."""
    packaged = resources.files(__package__).joinpath("default.toml")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    if CHECKOUT_CONFIG.is_file():
        return CHECKOUT_CONFIG.read_text(encoding="utf-8")
    raise ConfigError("the default config.toml is not in this installation (reinstall trio-broker)")

"""The one error reading or checking a configuration raises: it says which file, section and key."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration value is missing, mistyped or out of range."""

"""Development settings: what ``make run`` (``broker serve --dev``) runs with, and the
file it leaves for the ``broker`` CLI in the same checkout.

The development secrets are publicly known (they are in this file and the README), so
``broker serve`` refuses them on an address other people can reach unless told
otherwise (:func:`exposed_dev_secrets`). Only the ``*_dev_file`` functions touch the
file system.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from .sections import Config

DEV_FILE = ".broker-dev.env"
# The development secrets, publicly known: ``make run`` uses them unless the variable is set.
DEV_SECRETS = {
    "WS_AUTH_TOKEN": "demo-token",
    "BROKER_API_KEY": "dev-api-key",
    "BROKER_JWT_SECRET": "dev-only-jwt-secret-change-me-0123456789",
}
# Browser pages served from this machine (a Vite dev server on localhost:5173, ...).
LOOPBACK_ORIGINS = ("http://localhost", "http://localhost:*", "http://127.0.0.1", "http://127.0.0.1:*",
                    "http://[::1]", "http://[::1]:*")
ALLOW_DEV_SECRETS_ENV = "BROKER_ALLOW_DEV_SECRETS"
_HOST_VARIABLES = ("HOST", "BROKER_SERVER_HOST")


def dev_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the development defaults for what it leaves unset: the three
    secrets, and loopback as the address (unless ``HOST`` is set)."""
    merged = dict(environ)
    for name, value in DEV_SECRETS.items():
        if not merged.get(name):
            merged[name] = value
    if not any(merged.get(name) for name in _HOST_VARIABLES):
        merged["HOST"] = "127.0.0.1"
    return merged


def apply_dev_defaults(config: Config) -> Config:
    """Development only: pages on loopback origins may connect, and a JWT without a
    ``jobs`` claim joins every job (when ``[auth] jwt_default_jobs`` is left empty)."""
    origins = tuple(config.limits.allowed_origins) + tuple(
        origin for origin in LOOPBACK_ORIGINS if origin not in config.limits.allowed_origins)
    jobs = config.auth.jwt_default_jobs or ("*",)
    return config.replace(limits={"allowed_origins": origins}, auth={"jwt_default_jobs": jobs})


def is_loopback(host: str) -> bool:
    """An address only this machine reaches (``""`` and ``0.0.0.0`` are every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposed_dev_secrets(config: Config) -> list[str]:
    """The publicly known development secrets ``config`` uses while listening on an
    address other machines reach: the variables that hold them (empty when safe)."""
    if is_loopback(config.server.host):
        return []
    found = []
    if config.auth.env_token == DEV_SECRETS["WS_AUTH_TOKEN"] or any(
            static.token == DEV_SECRETS["WS_AUTH_TOKEN"] for static in config.auth.static_tokens):
        found.append("WS_AUTH_TOKEN")
    if DEV_SECRETS["BROKER_API_KEY"] in config.api.keys:
        found.append("BROKER_API_KEY")
    if config.auth.jwt_secret == DEV_SECRETS["BROKER_JWT_SECRET"]:
        found.append("BROKER_JWT_SECRET")
    return found


def dev_file_text(config: Config, port: int) -> str:
    """What ``broker serve --dev`` tells the CLI: where it listens and its secrets."""
    host = config.server.host if config.server.host and is_loopback(config.server.host) else "127.0.0.1"
    scheme = "https" if config.server.tls.cert_file else "http"
    lines = [
        "# Written by `broker serve --dev` (make run) while it runs; removed when it stops.",
        "# The broker CLI (token, publish, groups, client, doctor) run in this folder reads it",
        "# for what the environment does not set. Development only: never use these in production.",
        f"BROKER_URL={scheme}://{host if ':' not in host else '[' + host + ']'}:{port}",
        f"PORT={port}",
        f"WS_AUTH_TOKEN={config.auth.env_token}",
        f"BROKER_API_KEY={config.api.keys[0] if config.api.keys else ''}",
        f"BROKER_JWT_SECRET={config.auth.jwt_secret}",
    ]
    return "\n".join(lines) + "\n"


def write_dev_file(directory: Path, text: str) -> Path:
    """Write the development settings file (owner-only) in ``directory``; its path."""
    path = directory / DEV_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    return path


def remove_dev_file(path: Path) -> None:
    """Remove the file ``write_dev_file`` wrote (already gone is fine)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def find_dev_file(start: Path | None = None) -> Path | None:
    """The development settings file in ``start`` (default: the current folder) or the
    nearest folder above it, or None."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / DEV_FILE
        if path.is_file():
            return path
    return None


def read_dev_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (comments and blank lines skipped); unreadable: empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    settings = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name and not name.startswith("#"):
            settings[name.strip()] = value.strip()
    return settings

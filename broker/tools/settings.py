"""Where the ``broker`` CLI finds a setting it was not given as a flag: the environment,
then the development settings file ``make run`` (``broker serve --dev``) leaves in the
checkout while it runs (found from the current folder upwards). Reads files only."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config.dev import DEV_FILE, find_dev_file, read_dev_file


def dev_settings() -> tuple[Path | None, dict[str, str]]:
    """The settings ``make run`` (``broker serve --dev``) left in this folder or one above."""
    path = find_dev_file()
    return (path, read_dev_file(path)) if path is not None else (None, {})


def setting(name: str) -> tuple[str, str]:
    """(value, where it came from): the environment first, then the development settings file."""
    if os.environ.get(name):
        return os.environ[name], name
    path, settings = dev_settings()
    if settings.get(name):
        return settings[name], str(path)
    return "", ""


DEV_HINT = "`make run` writes the development ones to ./.broker-dev.env, which this command reads when it runs"


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def base_url(args: argparse.Namespace) -> tuple[str, str]:
    """The broker's base URL and where it came from: --url, PORT, the development
    settings file, else port 8080 on this machine."""
    if args.url:
        return args.url.rstrip("/"), "--url"
    if os.environ.get("PORT"):
        return f"http://127.0.0.1:{os.environ['PORT']}", "PORT"
    url, where = setting("BROKER_URL")
    if url:
        return url.rstrip("/"), where
    return "http://127.0.0.1:8080", f"the default: no --url, PORT or {DEV_FILE}"


def client_token(args: argparse.Namespace) -> str | None:
    """--token, BROKER_TOKEN, else the development static token ``make run`` uses."""
    return args.token or os.environ.get("BROKER_TOKEN") or dev_settings()[1].get("WS_AUTH_TOKEN") or None

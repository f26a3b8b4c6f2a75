"""Embedded PostgreSQL (pgserver) for dev and tests, used only when no database URL is configured.

pgserver ships PostgreSQL binaries in a wheel, so a fresh machine needs nothing but pip. It
reference-counts users of one data directory and stops the server when the last one exits.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from config.settings import ConfigError

EMBEDDED_DATABASE = "payhub"


def start_embedded(pg_dir: Path, database: str = EMBEDDED_DATABASE) -> str:
    """Start (or join) the embedded server in ``pg_dir`` and return a URL for ``database``.

    Blocking (spawns initdb/pg_ctl): call it once at start-up, off the event loop.
    """
    try:
        with warnings.catch_warnings():
            # pgserver asks platformdirs for a runtime dir that root sessions lack: harmless noise.
            warnings.simplefilter("ignore", UserWarning)
            import pgserver
    except ImportError as exc:
        raise ConfigError(
            "PAYHUB_DATABASE_URL is unset and the embedded PostgreSQL is not installed "
            "(pip install 'payhub[embedded]')"
        ) from exc
    pg_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir that root sessions lack; harmless noise.
        warnings.simplefilter("ignore", UserWarning)
        server = pgserver.get_server(pg_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", database):
        raise ConfigError(f"embedded database name {database!r} is not a plain identifier")
    # database is a checked identifier, not user input.
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")  # noqa: S608
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    admin_url: str = server.get_uri()
    return with_database(admin_url, database)


def with_database(url: str, database: str) -> str:
    """Replace the database name in a postgresql:// URL (keeping ``?host=`` and other options)."""
    return re.sub(r"^(postgres(?:ql)?://[^/]*/)([^?]*)", lambda m: m.group(1) + database, url, count=1)

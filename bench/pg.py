"""What the benchmarks share: each runs in a throwaway PostgreSQL database of its own
on the server that DATABASE_URL names."""

import os
import sys
from urllib.parse import urlsplit, urlunsplit


def server_url(default: str = "") -> str:
    url = os.environ.get("DATABASE_URL", default)
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit("Set DATABASE_URL=postgres://user@host:port/any_db (the benchmark needs PostgreSQL).")
    return url


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def admin_connection(url: str):  # noqa: ANN201
    """An autocommit connection to the server's `postgres` database (CREATE/DROP DATABASE)."""
    # psycopg here: only the benchmark's setup talks to the server directly
    import psycopg

    return psycopg.connect(with_database(url, "postgres").replace("postgres://", "postgresql://", 1), autocommit=True)


def recreate_database(url: str, name: str, *, drop_only: bool = False) -> None:
    with admin_connection(url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if not drop_only:
            conn.execute(f"CREATE DATABASE {name}")

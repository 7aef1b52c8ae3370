"""Before a `manage.py` command runs: is the PostgreSQL database there?

Without this, `manage.py migrate` against a database that was never created printed
psycopg_pool's warnings for every attempt and gave up after the pool's timeout (63 s
measured) with an OperationalError. Here one plain connection with a short
`connect_timeout` is tried first, outside the pool, and a missing database or an
unreachable server is one line on stderr and exit status 1.

It reads the settings, not the environment (config/settings.py is the only reader).
Commands that never touch the database skip it, so `collectstatic` and `help` work
before the database exists.
"""

import sys

import psycopg
from django.conf import settings

# Commands that do not need the database (makemigrations checks the history itself
# and only warns when it cannot connect).
NO_DATABASE = {"help", "version", "collectstatic", "makemigrations", "spectacular", "check", "startapp"}
CONNECT_TIMEOUT_SECONDS = 5
# Django's own keys in OPTIONS, not libpq's.
DJANGO_OPTIONS = {"pool", "isolation_level", "server_side_binding", "assume_role", "cursor_factory", "context"}


def database_problem() -> str | None:
    """One line saying why the default PostgreSQL database cannot be used, or None."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        return None
    options = {key: value for key, value in db.get("OPTIONS", {}).items() if key not in DJANGO_OPTIONS}
    host, port, name = db.get("HOST") or "localhost", db.get("PORT") or 5432, db["NAME"]
    params = {"dbname": name, "host": db.get("HOST") or None, "port": db.get("PORT") or None,
              "user": db.get("USER") or None, "password": db.get("PASSWORD") or None}  # fmt: skip
    try:
        psycopg.connect(
            **{key: value for key, value in params.items() if value is not None},
            **options, connect_timeout=CONNECT_TIMEOUT_SECONDS,
        ).close()  # fmt: skip
    except psycopg.OperationalError as exc:
        text = str(exc).strip()
        if getattr(exc, "sqlstate", None) == "3D000" or f'database "{name}" does not exist' in text:
            user = f" -U {db['USER']}" if db.get("USER") else ""
            return (
                f'manage.py: the database "{name}" does not exist on PostgreSQL at {host}:{port} (DATABASE_URL). '
                f"Create it first, e.g.: createdb -h {host} -p {port}{user} {name}"
            )
        reason = text.splitlines()[0].strip() if text else type(exc).__name__
        return f"manage.py: cannot connect to PostgreSQL at {host}:{port} (DATABASE_URL): {reason}"
    return None


def database_or_exit(argv: list[str]) -> None:
    command = next((arg for arg in argv[1:] if not arg.startswith("-")), "help")
    if command in NO_DATABASE or "--help" in argv or "-h" in argv:
        return
    problem = database_problem()
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(1)

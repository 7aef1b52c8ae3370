#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line

    from config.preflight import database_or_exit

    # A missing PostgreSQL database is one line and exit 1, not a minute of pool retries.
    database_or_exit(sys.argv)

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()

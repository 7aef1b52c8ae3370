"""Secrets named by the database: an upstream stores the NAME of the environment
variable holding its key (routing.Upstream.api_key_env), never the key. Like the
settings module, this is a place that reads the environment."""

import os

from django.conf import settings


def secret(name: str) -> str:
    """The value of the environment variable `name` ("" when unset or no name). A
    setting of that name wins: the settings read the same environment at start
    (OPENAI_API_KEY, ANTHROPIC_API_KEY), and tests and scripts override them."""
    if not name:
        return ""
    value = getattr(settings, name, None)
    if isinstance(value, str):
        return value
    return os.environ.get(name, "")

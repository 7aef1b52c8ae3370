"""Log filters. RedactSecretPaths: an invitation link's token is a secret in a URL path
(organizations: `/api/v1/orgs/invitations/<token>`), and Django's `django.request`
logger writes the path of every 4xx and 5xx; the token is replaced before any
handler writes the line."""

import logging
import re

SECRET_PATH = re.compile(r"(/orgs/invitations/)(?!\[redacted\])[^/\s?\"']+")


def redact(text: str) -> str:
    return SECRET_PATH.sub(r"\1[redacted]", text)


class RedactSecretPaths(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True

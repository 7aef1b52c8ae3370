"""The chat tests' fixtures the routing tests share: a funded owner, the stream capture."""

from tests.chat.conftest import funded_owner, streamed, worker_with_env  # noqa: F401 (fixtures, found by name)
